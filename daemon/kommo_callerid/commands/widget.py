"""``kommo-callerid widget``: the Kommo widget archive an account administrator uploads.

The zip Kommo takes (interface version 2): ``manifest.json`` (names from ``i18n``, the
card and list locations, one setting: the daemon's ``server`` URL, which the command prints from
``[public] url``), ``script.js`` (``add_action("phone")`` -> ``$authorizedAjax`` POST to
``{server}/kommo/call``, a short message on every answer), ``i18n/`` (en, es, pt) and
``images/`` (the logos Kommo shows; drawn here, so the archive needs no binary in the tree).
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from importlib import resources
from pathlib import Path

from kommo_callerid import __version__
from kommo_callerid.core.config import Config

DEFAULT_OUTPUT = "kommo-callerid-widget.zip"
LANGUAGES = ("en", "es", "pt")
LOCATIONS = ("ccard-1", "comcard-1", "lcard-1", "clist-1", "llist-1", "settings")
#: Kommo's logo files and their sizes (width, height).
LOGOS = {
    "logo_min.png": (84, 84),
    "logo_small.png": (108, 108),
    "logo_medium.png": (240, 84),
    "logo.png": (130, 100),
    "logo_main.png": (400, 272),
    "logo_dp.png": (174, 109),
}
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # the same archive from the same version, byte for byte


def manifest() -> dict[str, object]:
    return {
        "widget": {
            "name": "widget.name",
            "description": "widget.description",
            "short_description": "widget.short_description",
            "version": __version__,
            "interface_version": 2,
            "init_once": False,
            "locale": list(LANGUAGES),
            "installation": True,
            "support": {"link": "https://github.com/kommo-callerid", "email": ""},
        },
        "locations": list(LOCATIONS),
        "settings": {
            "server": {"name": "settings.server", "type": "text", "required": True},
        },
    }


def files() -> dict[str, bytes]:
    """Archive path -> content."""
    source = resources.files("kommo_callerid.commands") / "widget_files"
    built = {
        "manifest.json": json.dumps(manifest(), indent=2).encode() + b"\n",
        "script.js": (source / "script.js").read_bytes(),
    }
    for language in LANGUAGES:
        built[f"i18n/{language}.json"] = (source / "i18n" / f"{language}.json").read_bytes()
    for name, (width, height) in LOGOS.items():
        built[f"images/{name}"] = logo_png(width, height)
    return built


def write_widget(output: Path) -> Path:
    with zipfile.ZipFile(output, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files().items():
            archive.writestr(zipfile.ZipInfo(name, _FIXED_TIME), content)
    return output


def run_widget(config: Config, output: str | None) -> int:
    path = write_widget(Path(output or DEFAULT_OUTPUT))
    server = config.public.url or "(set [public] url, or type it in the widget's settings)"
    print(f"Wrote {path}: upload it in Kommo (Settings > Integrations > your integration).")
    print(f"  server URL: {server}")
    return 0


def logo_png(width: int, height: int) -> bytes:
    """A handset-blue tile with a white ring: enough for Kommo's lists and cards."""
    rows = []
    cx, cy, outer = width / 2, height / 2, min(width, height) * 0.35
    inner = outer * 0.6
    for y in range(height):
        row = bytearray(b"\x00")  # filter: none
        for x in range(width):
            distance = ((x - cx) ** 2 + (y - cy) ** 2) ** 0.5
            row += b"\xff\xff\xff" if inner <= distance <= outer else b"\x1f\x6f\xb5"
        rows.append(bytes(row))
    raw = zlib.compress(b"".join(rows), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
