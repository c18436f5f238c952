"""The running service: wiring and lifecycle (app), the notifier that turns call decisions into
Kommo requests, systemd notify/watchdog. The only room that builds clients and owns tasks."""
