"""The network archive: every station's codes in ClickHouse (chDB embedded or a server)."""
