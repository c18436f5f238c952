"""Several daemons, one Kommo account: shared state in Redis (or Valkey)."""
