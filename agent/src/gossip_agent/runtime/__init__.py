"""Real I/O around the protocol core: transport, daemon, control API, journal, keyring."""
