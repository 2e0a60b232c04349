"""The model bundle, the log-mel front-end and audio file reading."""
