"""SD-card updates: the signed file format, keys, apply and merge."""
