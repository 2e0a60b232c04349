"""The unattended station: daemon, capture, health, retention, watchlist, config."""
