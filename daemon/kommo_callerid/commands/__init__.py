"""Operator commands beside run: check, lookup, authorize, demo."""
