"""``kommo-callerid widget``: the archive Kommo takes."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from kommo_callerid.cli import main

from support import ROOT


def test_the_archive_has_what_kommo_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    text = (ROOT / "config.example.toml").read_text()
    config.write_text(text.replace('\nurl = ""', '\nurl = "https://pbx.example.com:8443"', 1))
    output = tmp_path / "w.zip"
    assert main(["widget", "-c", str(config), "--output", str(output)]) == 0
    assert "https://pbx.example.com:8443" in capsys.readouterr().out
    with zipfile.ZipFile(output) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("manifest.json"))
        script = archive.read("script.js").decode()
        languages = {n: json.loads(archive.read(f"i18n/{n}.json")) for n in ("en", "es", "pt")}
        logo = archive.read("images/logo_main.png")
    assert {"manifest.json", "script.js", "images/logo.png", "images/logo_min.png"} <= names
    assert manifest["widget"]["interface_version"] == 2
    assert manifest["settings"]["server"]["type"] == "text"
    assert {"ccard-1", "comcard-1", "lcard-1", "clist-1", "llist-1"} <= set(manifest["locations"])
    assert "add_action('phone'" in script and "$authorizedAjax" in script
    assert "/kommo/call" in script
    for strings in languages.values():
        assert strings["widget"]["name"] and strings["settings"]["server"]
        assert set(strings["messages"]) == set(languages["en"]["messages"])
    assert logo.startswith(b"\x89PNG\r\n\x1a\n")
    monkeypatch.chdir(tmp_path)
    assert main(["widget", "-c", str(config)]) == 0
    assert (tmp_path / "kommo-callerid-widget.zip").read_bytes() == output.read_bytes()
