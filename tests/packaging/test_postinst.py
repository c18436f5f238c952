"""The .deb's postinst makes the state directory (/var/lib/kommo-callerid), so `kommo-callerid
run` by hand works after `apt install` (before, the journal's default database had no
directory), and leaves one that exists, or systemd's symlink to /var/lib/private, alone."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from support import ROOT

POSTINST = ROOT / "packaging" / "deb" / "postinst"
STATE = "/var/lib/kommo-callerid"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install -o root needs root")


def state_block(root: Path) -> str:
    """The postinst's state-directory lines, pointed at ``root`` instead of /."""
    text = POSTINST.read_text()
    found = re.search(r"^    if \[ ! -e /var/lib/kommo-callerid \].*?^    fi$", text, re.S | re.M)
    assert found is not None, "postinst no longer makes the state directory"
    return found.group(0).replace(STATE, str(root) + STATE)


def test_postinst_makes_the_state_directory_root_only(tmp_path: Path) -> None:
    (tmp_path / "var" / "lib").mkdir(parents=True)
    subprocess.run(["sh", "-ec", state_block(tmp_path)], check=True)
    made = tmp_path / "var" / "lib" / "kommo-callerid"
    assert made.is_dir() and stat.S_IMODE(made.stat().st_mode) == 0o700


def test_postinst_leaves_systemds_symlink_alone(tmp_path: Path) -> None:
    lib = tmp_path / "var" / "lib"
    (lib / "private" / "kommo-callerid").mkdir(parents=True)
    (lib / "kommo-callerid").symlink_to("private/kommo-callerid")
    subprocess.run(["sh", "-ec", state_block(tmp_path)], check=True)
    assert (lib / "kommo-callerid").is_symlink()
