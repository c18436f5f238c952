"""The command line: a thin layer that parses arguments, loads the configuration, and hands
over to the daemon. Exit codes: 0 clean stop, 1 runtime failure, 2 bad command line (argparse),
3 bad configuration or a start-up failure a restart will not fix.

Size: every command's sub-parser and its thin hand-over in one place.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kommo_callerid import __version__
from kommo_callerid.calls.detector import normalize_number
from kommo_callerid.commands.check_local import check_local
from kommo_callerid.commands.oneshot import authorize_once, lookup_once
from kommo_callerid.commands.report import Report
from kommo_callerid.core.config import Config, LogConfig
from kommo_callerid.core.config_load import ConfigError, load_config, resolve_config_path
from kommo_callerid.core.logging import configure_logging, json_for_terminal
from kommo_callerid.core.models import KommoError
from kommo_callerid.daemon import event_loop
from kommo_callerid.daemon.app import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, Daemon
from kommo_callerid.daemon.memory import freeze_startup_heap
from kommo_callerid.kommo.auth import TokenFileUnusable

EPILOG = """\
exit codes:
  0  clean stop (or: all checks passed, warnings allowed)
  1  runtime failure (check: a problem found; lookup: the lookup failed)
  2  bad command line
  3  bad configuration, or a start-up failure a restart will not fix
     (wrong AMI credentials, an unusable Kommo token or token file)

environment:
  KOMMO_CALLERID_CONFIG           the configuration file when -c is not given
                                  (default /etc/kommo-callerid/config.toml)
  KOMMO_CALLERID_<SECTION>__<KEY> overrides one key, e.g. KOMMO_CALLERID_AMI__PORT=5039;
                                  a list is a comma list or JSON: KOMMO_CALLERID_CALLS__
                                  INBOUND_CONTEXTS=from-pstn,from-trunk
  CREDENTIALS_DIRECTORY           secrets as files (systemd LoadCredential=): ami_secret,
                                  kommo_access_token, kommo_client_secret,
                                  kommo_refresh_token, redis_password
  NO_COLOR                        no colour in check's report

signals (run): SIGTERM/SIGINT stop; SIGHUP re-reads the configuration file.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kommo-callerid",
        description="Asterisk inbound calls become Kommo CRM call notifications.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kommo-callerid {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "-c",
            "--config",
            metavar="PATH",
            help="configuration file (default: $KOMMO_CALLERID_CONFIG, "
            "else /etc/kommo-callerid/config.toml)",
        )
        return sub

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help,
            description=textwrap.fill(description, 78),
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    with_config(
        command(
            "run",
            "run the daemon until SIGTERM/SIGINT",
            "Run the daemon: log to stdout, notify Kommo of inbound calls. SIGHUP re-reads "
            "the configuration file.",
        )
    )
    check = with_config(
        command(
            "check",
            "validate the configuration, then test AMI and Kommo",
            "Validate the configuration and this host's files; without --offline also log "
            "in to AMI and call Kommo once. Prints OK/WARN/FAIL lines, each problem with its fix.",
        )
    )
    check.add_argument(
        "--offline", action="store_true", help="only validate the file; contact nothing"
    )
    check.add_argument(
        "--listen",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="watch AMI this long for call events and the contexts in use (default 5)",
    )
    lookup = with_config(
        command(
            "lookup",
            "look one number up in Kommo",
            "Look one number up through the daemon's own code path (normalisation, by_phone "
            "or contacts search) and print the result as one JSON object; log lines go to "
            "stderr.",
        )
    )
    lookup.add_argument(
        "number",
        metavar="NUMBER",
        help="a phone number as a caller ID shows it, e.g. +18305803077 or 8305803077 "
        "(national numbers need [calls] default_region)",
    )
    authorize = with_config(
        command(
            "authorize",
            "OAuth: trade an authorisation code for tokens in token_file",
            "OAuth: trade an authorisation code (Kommo: the integration's Keys and scopes) "
            "for the first token pair and save it to [kommo] token_file, keeping the file's "
            "owner so the service can still read it.",
        )
    )
    authorize.add_argument("code", metavar="CODE", help="the code from Kommo (valid 20 minutes)")
    _add_journal(command, with_config)
    phonebook = with_config(
        command(
            "phonebook",
            "the local phone book: entries, last sync, lookups answered from it",
            "Show the local phone book ([phonebook]): entries per kind, the last sync and full "
            "pass, lookups answered from it. --sync runs one full pass now (through the "
            "running daemon when one runs).",
        )
    )
    phonebook.add_argument("--sync", action="store_true", help="run one full sync now")
    phonebook.add_argument("--json", action="store_true", help="JSON for scripts")
    widget = with_config(
        command(
            "widget",
            "write the Kommo widget archive (click-to-call) to upload in Kommo",
            "Write the Kommo widget archive (manifest.json, script.js, i18n, images) that an "
            "account administrator uploads in the integration's settings; the archive holds "
            "no address: the server URL ([public] url) is typed in the widget's settings.",
        )
    )
    widget.add_argument(
        "--output", metavar="FILE", help="where to write it (default kommo-callerid-widget.zip)"
    )
    demo = command(
        "demo",
        "run against embedded AMI and Kommo simulators",
        "Start an AMI simulator and a Kommo simulator on loopback, run the real daemon "
        "against them, place N inbound calls, print the log. Needs no PBX, account or config.",
    )
    demo.add_argument("--calls", type=int, default=5, metavar="N", help="inbound calls to place")
    demo.add_argument("--json", action="store_true", help="print the raw log, not the story")
    return parser


def _add_journal(command: Any, with_config: Any) -> None:
    journal = with_config(
        command(
            "journal",
            "the call journal's records, newest first ('journal retry': resend dropped)",
            "Show the call journal's records, newest first: call, direction, status, duration, "
            "answered by, and what Kommo made of it (pending, sent to which entity, dropped "
            "and why). 'journal retry' makes dropped records pending again; the running "
            "daemon sends them within a minute.",
        )
    )
    journal.add_argument(
        "action", nargs="?", choices=["retry"], help="retry: make dropped records pending again"
    )
    journal.add_argument("--pending", action="store_true", help="only records not yet sent")
    journal.add_argument("--failed", action="store_true", help="only dropped records")
    journal.add_argument(
        "--since", type=_duration, metavar="DURATION", help="only calls of the last 90s/15m/2h/1d"
    )
    journal.add_argument("--json", action="store_true", help="JSON for scripts")


def _duration(text: str) -> float:
    from kommo_callerid.commands.journal import parse_duration  # noqa: PLC0415

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0 and 3600 seconds")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from kommo_callerid.commands.demo import run_demo  # noqa: PLC0415  (simulators load only for the demo)

            return run_demo(calls=args.calls, raw=args.json)
        config = _load(args.config)
        if args.command == "run":
            return _run(config, resolve_config_path(args.config))
        if args.command == "check":
            return _check(config, args.config, offline=args.offline, listen=args.listen)
        if args.command == "authorize":
            return _authorize(config, args.code)
        if args.command == "journal":
            return _journal(config, args)
        if args.command == "phonebook":
            return _phonebook(config, args)
        if args.command == "widget":
            from kommo_callerid.commands.widget import run_widget  # noqa: PLC0415

            return run_widget(config, args.output)
        return _lookup(config, args.number)
    except KeyboardInterrupt:
        return EXIT_OK


def _load(cli_path: str | None) -> Config:
    try:
        config = load_config(resolve_config_path(cli_path))
    except ConfigError as exc:
        print(f"kommo-callerid: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    return config


def secrets_of(config: Config) -> list[str]:
    """Every secret value, so the log chain can scrub them should one ever slip through."""
    return [
        config.ami.secret.get_secret_value(),
        *(pbx.ami.secret.get_secret_value() for pbx in config.pbxs),
        config.kommo.access_token.get_secret_value(),
        config.kommo.client_secret.get_secret_value(),
        config.kommo.refresh_token.get_secret_value(),
        urlsplit(config.kommo.proxy).password or "",
    ]


def _run(config: Config, path: Path) -> int:
    scrubber = configure_logging(config.log, secrets=secrets_of(config))

    def relog(log_config: LogConfig) -> None:
        configure_logging(log_config, scrubber=scrubber)

    async def serve() -> int:
        daemon = Daemon(config, on_secret=scrubber.remember, config_path=path, relog=relog)
        daemon.install_signal_handlers()
        return await daemon.serve()

    freeze_startup_heap()
    return event_loop.run(serve())


def _check(config: Config, cli_path: str | None, *, offline: bool, listen: float) -> int:
    path = resolve_config_path(cli_path)
    print(f"Configuration {path}: valid")
    for pbx in config.pbxs:
        ami, label = pbx.ami, f"AMI {pbx.name}:" if pbx.name else "AMI:"
        own = pbx.inbound_contexts != config.calls.inbound_contexts
        inbound = f" (inbound contexts: {', '.join(pbx.inbound_contexts)})" if own else ""
        print(f"  {label:<9} {ami.username}@{ami.host}:{ami.port}{inbound}")
    mode = "OAuth" if config.kommo.oauth else "long-lived token"
    print(f"  Kommo:    {config.kommo.base_url} ({mode}, lookup: {config.kommo.lookup})")
    print(f"  Inbound contexts: {', '.join(config.calls.inbound_contexts)}")
    print(f"  Recipients: {', '.join(config.notify.to)}; fallback: {config.notify.fallback}")
    report = Report()
    check_local(config, path, report)
    if offline:
        report.summary()
        return EXIT_OK
    configure_logging(config.log, secrets=secrets_of(config), stream=sys.stderr)
    # The report says what went wrong and how to fix it; log lines would only repeat it.
    logging.getLogger().setLevel(logging.CRITICAL)
    from kommo_callerid.commands.check import run_online_checks  # noqa: PLC0415

    all_well = asyncio.run(run_online_checks(config, listen=listen, report=report))
    return EXIT_OK if all_well else EXIT_FAILURE


def _authorize(config: Config, code: str) -> int:
    if not config.kommo.oauth:
        print("kommo-callerid: authorize is for OAuth; this config uses a long-lived access_token")
        return EXIT_CONFIG
    scrubber = configure_logging(config.log, secrets=[*secrets_of(config), code], stream=sys.stderr)
    try:
        asyncio.run(authorize_once(config, code, on_secret=scrubber.remember))
    except TokenFileUnusable as exc:
        print(f"kommo-callerid: {exc.detail}", file=sys.stderr)
        return EXIT_CONFIG
    except KommoError as exc:
        print(f"kommo-callerid: authorisation failed: {exc.detail}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"Tokens saved to {config.kommo.token_file}; start or restart the service now.")
    return EXIT_OK


def _journal(config: Config, args: argparse.Namespace) -> int:
    from kommo_callerid.commands import journal  # noqa: PLC0415

    if args.action == "retry":
        return journal.retry(config)
    return journal.show(
        config, pending=args.pending, failed=args.failed, since=args.since, as_json=args.json
    )


def _phonebook(config: Config, args: argparse.Namespace) -> int:
    from kommo_callerid.commands import phonebook  # noqa: PLC0415

    configure_logging(config.log, secrets=secrets_of(config), stream=sys.stderr)
    return phonebook.run(config, sync=args.sync, as_json=args.json)


def _lookup(config: Config, number: str) -> int:
    scrubber = configure_logging(config.log, secrets=secrets_of(config), stream=sys.stderr)
    normalized = normalize_number(number, config.calls.default_region)
    if normalized is None:
        print(json.dumps({"number": number, "error": "not a phone number"}))
        return EXIT_FAILURE
    try:
        result: dict[str, Any] = asyncio.run(
            lookup_once(config, normalized, on_secret=scrubber.remember)
        )
    except TokenFileUnusable as exc:  # the token file or its lock: fixed on this host
        error = {"error": exc.detail, "status": exc.status, "endpoint": exc.endpoint}
        print(json.dumps({"number": number, "normalized": normalized, **error}))
        return EXIT_CONFIG
    result = {"number": number, "normalized": normalized, **result}
    print(json_for_terminal(result))
    return EXIT_OK if "error" not in result else EXIT_FAILURE
