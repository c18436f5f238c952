"""The local HTTP endpoint: /healthz, /metrics (one stats view), /callerid for the dialplan."""
