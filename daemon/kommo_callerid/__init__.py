"""kommo-callerid: Asterisk AMI inbound calls become Kommo CRM call notifications."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kommo-callerid")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
