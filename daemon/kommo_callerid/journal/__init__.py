"""The call journal: finished calls written to a durable outbox, then sent to Kommo."""
