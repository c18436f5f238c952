"""Listening safely: connection bounds for the daemon's HTTP endpoints and its descriptors."""
