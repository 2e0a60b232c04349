"""Answering queries over a Library: search, reports, spectrogram pictures."""
