"""The public endpoint (``[public]``): the listener Kommo's web UI reaches, over TLS."""
