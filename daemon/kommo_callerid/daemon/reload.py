"""SIGHUP: re-read the configuration file and apply what can change without dropping a link.

``[notify]``, ``[calls]``, ``[journal]`` (except ``database``), ``[daemon]``, ``[recordings]``
(its signing key re-read), ``[clicktocall]``, ``[public]`` (except ``listen``; its TLS files are
re-read on every SIGHUP), ``[log] level`` and ``mask_numbers``, ``[phonebook]`` intervals and
``trust_unknown`` apply at once (``config.reloaded``, with the keys). Any other changed key
— ``[ami]``, ``[kommo]``, ``[cluster]``, ``[http]``, ``[cache]``, ``[log] format``,
``[journal] database``, ``[public] listen`` — keeps its running value and is named in
``config.restart_needed``.
A file that does not load is ``config.reload_failed`` and the running configuration stays.
The signal handler only sets an event; :meth:`ConfigReloader.run` is an owned task.

A reload never blocks the daemon: only a regular file is read (config_load), and the read runs
in a daemon thread awaited for at most READ_TIMEOUT seconds, so a file system that hangs costs
one ``config.reload_failed``, never a later SIGHUP nor the stop (a daemon thread is not joined
at exit, unlike ``asyncio.to_thread``'s executor).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydantic import BaseModel

from kommo_callerid.core.config import Config
from kommo_callerid.core.config_load import ConfigError, load_config
from kommo_callerid.core.pbx_config import reload_pbxs, with_pbxs

log = structlog.get_logger(__name__)

#: Sections whose every key applies live; for the rest, only the keys listed here.
LIVE_SECTIONS = frozenset(
    {"notify", "calls", "journal", "daemon", "recordings", "clicktocall", "public"}
)
LIVE_KEYS = frozenset(
    {
        "log.level",
        "log.mask_numbers",
        "phonebook.sync_interval",
        "phonebook.full_sync_interval",
        "phonebook.trust_unknown",
    }
)
#: Keys of a live section that still need a restart.
FIXED_KEYS = frozenset({"journal.database", "public.listen"})
#: Seconds a reload may spend reading the file (a local file takes milliseconds).
READ_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    #: The configuration to run with: the new file, except for the keys that need a restart.
    config: Config
    applied: tuple[str, ...]
    restart_needed: tuple[str, ...]


def changed_keys(old: Config, new: Config) -> list[str]:
    """``section.key`` of every value that differs (a whole section when it is not a table)."""
    changed = []
    for section in type(old).model_fields:
        before, after = getattr(old, section), getattr(new, section)
        if before == after:
            continue
        if not isinstance(before, BaseModel):
            changed.append(section)
            continue
        for key in type(before).model_fields:
            if getattr(before, key) != getattr(after, key):
                changed.append(f"{section}.{key}")
    return changed


def is_live(key: str) -> bool:
    section = key.partition(".")[0]
    return key in LIVE_KEYS or (section in LIVE_SECTIONS and key not in FIXED_KEYS)


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    changed = changed_keys(old, new)
    fixed = [key for key in changed if not is_live(key)]
    kept: dict[str, dict[str, object]] = {}
    for key in fixed:  # the running value stays until a restart
        section, _, name = key.partition(".")
        source = getattr(old, section)
        kept.setdefault(section, {})[name] = getattr(source, name) if name else source
    updates = {
        section: (values[""] if "" in values else getattr(new, section).model_copy(update=values))
        for section, values in kept.items()
    }
    running = new.model_copy(update=updates)
    applied = tuple(key for key in changed if is_live(key))
    pbxs = reload_pbxs(old, new)  # [ami.NAME] tables: the links keep theirs
    running = with_pbxs(running, pbxs.pbxs)
    return ReloadPlan(running, applied + pbxs.applied, (*fixed, *pbxs.restart_needed))


class ConfigReloader:
    """Waits for the SIGHUP event and reloads; never raises (a bad file is logged)."""

    def __init__(
        self,
        path: Path | None,
        current: Callable[[], Config],
        apply: Callable[[Config], None],
        *,
        load: Callable[[Path], Config] = load_config,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self._path = path
        self._current = current
        self._apply = apply
        self._load = load
        self._read_timeout = read_timeout
        #: A read that outlived its timeout; while it hangs, no second one is started.
        self._hung: threading.Thread | None = None

    async def run(self, requested: asyncio.Event) -> None:
        while True:
            await requested.wait()
            requested.clear()
            await self.reload_once()

    async def reload_once(self) -> None:
        where = str(self._path) if self._path is not None else None
        try:
            if self._path is None:
                raise ConfigError("this daemon was started without a configuration file")
            loaded = await self._load_bounded(self._path)
            plan = plan_reload(self._current(), loaded)
            self._apply(plan.config)
        except ConfigError as exc:
            log.error("config.reload_failed", path=where, reason=str(exc))
            return
        except Exception as exc:  # a reload must never end the daemon
            log.error("config.reload_failed", path=where, reason=repr(exc), exc_info=exc)
            return
        if plan.restart_needed:
            log.warning(
                "config.restart_needed",
                path=where,
                keys=list(plan.restart_needed),
                hint="these keys keep their running values until `systemctl restart`",
            )
        log.info("config.reloaded", path=where, changed=list(plan.applied))

    async def _load_bounded(self, path: Path) -> Config:
        """``load(path)`` in a daemon thread, awaited for at most ``read_timeout`` seconds."""
        if self._hung is not None and self._hung.is_alive():
            raise ConfigError(
                f"the previous read of {path} has not returned yet (a hung file system?)"
            )
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Config] = loop.create_future()

        def settle(outcome: Config | BaseException) -> None:
            if done.done():  # timed out meanwhile
                return
            if isinstance(outcome, BaseException):
                done.set_exception(outcome)
            else:
                done.set_result(outcome)

        def read() -> None:
            outcome: Config | BaseException
            try:
                outcome = self._load(path)
            except BaseException as exc:  # handed to the awaiting task, which words it
                outcome = exc
            with contextlib.suppress(RuntimeError):  # the loop closed: the daemon stopped
                loop.call_soon_threadsafe(settle, outcome)

        thread = threading.Thread(target=read, name="config-reload", daemon=True)
        thread.start()
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for returns the result when the
            # read ends just as the task is cancelled, swallowing the stop (the reloader then
            # waits for the next SIGHUP while the shutdown waits for the reloader).
            async with asyncio.timeout(self._read_timeout):
                return await done
        except TimeoutError:
            self._hung = thread
            raise ConfigError(
                f"reading {path} took longer than {self._read_timeout:g} s (a hung file system?)"
            ) from None
