"""How ``kommo-callerid check`` speaks: one line per finding, OK / WARN / FAIL, and for each
problem the fix (which file or key to change). Colour only on a terminal, never with NO_COLOR.
Text from the outside (AMI context names, Kommo's answers) is printed with its control
characters escaped: a hostile PBX must not drive the operator's terminal.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from typing import TextIO

from kommo_callerid.core.logging import escape_controls


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


_COLOURS = {Status.OK: "\033[32m", Status.WARN: "\033[33m", Status.FAIL: "\033[31m"}
_RESET = "\033[0m"
_INDENT = "  "
_TAG_WIDTH = 4


def colour_wanted(stream: TextIO) -> bool:
    """https://no-color.org: any non-empty NO_COLOR turns colour off; pipes never get it."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


class Report:
    """Prints findings as they come (a slow check shows progress) and counts the problems."""

    def __init__(self, stream: TextIO | None = None, *, colour: bool | None = None) -> None:
        self._stream = stream or sys.stdout
        self._colour = colour_wanted(self._stream) if colour is None else colour
        self.failures = 0
        self.warnings = 0

    @property
    def all_well(self) -> bool:
        """Warnings do not count: a quiet PBX at night is no fault."""
        return self.failures == 0

    def heading(self, text: str) -> None:
        self._print(escape_controls(text))

    def info(self, text: str) -> None:
        self._print(f"{_INDENT}{' ' * _TAG_WIDTH} {escape_controls(text)}")

    def ok(self, text: str) -> None:
        self._finding(Status.OK, text, None)

    def warn(self, text: str, fix: str | None = None) -> None:
        self.warnings += 1
        self._finding(Status.WARN, text, fix)

    def fail(self, text: str, fix: str) -> None:
        self.failures += 1
        self._finding(Status.FAIL, text, fix)

    def summary(self) -> None:
        if self.failures:
            self._print(f"{self.failures} problem(s) found; see the fixes above.")
        elif self.warnings:
            self._print(f"No problems; {self.warnings} warning(s) above.")
        else:
            self._print("All checks passed.")

    def _finding(self, status: Status, text: str, fix: str | None) -> None:
        text = escape_controls(text)
        tag = status.value.ljust(_TAG_WIDTH)
        if self._colour:
            tag = f"{_COLOURS[status]}{tag}{_RESET}"
        self._print(f"{_INDENT}{tag} {text}")
        if fix:
            self._print(f"{_INDENT}{' ' * _TAG_WIDTH} fix: {escape_controls(fix)}")

    def _print(self, line: str) -> None:
        print(line, file=self._stream, flush=True)
