"""The code store: packed codes in an append-only file, metadata in SQLite."""
