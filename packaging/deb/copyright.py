"""Prints debian/copyright (DEP-5) for the package: the project, then every distribution
bundled in the virtualenv, with the licence its metadata declares and where its own licence
text lives in the package. Run with the venv's interpreter: ``python copyright.py VENV PREFIX``.
"""

from __future__ import annotations

import sys
from importlib.metadata import Distribution, distributions
from pathlib import Path

HEADER = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: kommo-callerid
Comment: The package bundles a Python virtualenv; each bundled distribution's licence
 text is in its .dist-info directory, named below.

Files: *
Copyright: 2025-2026 the kommo-callerid authors
License: MIT
"""

MIT = """\
License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy
 of this software and associated documentation files (the "Software"), to deal
 in the Software without restriction, including without limitation the rights
 to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 copies of the Software, and to permit persons to whom the Software is
 furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in
 all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
 THE SOFTWARE.
"""

APACHE = """\
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
"""

#: Licence names as metadata spells them -> the DEP-5 short name.
ALIASES = {
    "apache 2": "Apache-2.0",
    "apache 2.0": "Apache-2.0",
    "apache-2.0": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "mit": "MIT",
    "mit license": "MIT",
    "bsd": "BSD-3-Clause",
    "bsd license": "BSD-3-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "psf-2.0": "PSF-2.0",
    "python software foundation license": "PSF-2.0",
}


def main(venv: Path, prefix: str) -> None:
    site = next(venv.glob("lib/python3*/site-packages"))
    installed = prefix + "/" + str(site.relative_to(venv))
    stanzas: list[str] = []
    others: set[str] = set()
    for dist in sorted(distributions(path=[str(site)]), key=_name):
        if _name(dist) == "kommo-callerid":
            continue
        licence = _licence(dist)
        if licence not in ("MIT", "Apache-2.0"):
            others.add(licence)
        info = f"{installed}/{Path(str(dist._path)).name}"  # type: ignore[attr-defined]
        stanzas.append(
            f"Files: {_files(dist, installed)}\n"
            f"Copyright: the {_name(dist)} {dist.version} authors (see {info})\n"
            f"License: {licence}\n"
        )
    print(HEADER)
    print("\n".join(stanzas))
    print(MIT)
    print(APACHE)
    for licence in sorted(others):
        print(
            f"License: {licence}\n The full text is in the licence file of each "
            "distribution's .dist-info directory named above.\n"
        )


def _name(dist: Distribution) -> str:
    return str(dist.metadata["Name"]).lower().replace("_", "-")


def _licence(dist: Distribution) -> str:
    meta = dist.metadata
    declared = meta.get("License-Expression") or ""
    if not declared:
        short = (meta.get("License") or "").strip()
        declared = short if short and "\n" not in short and len(short) < 40 else ""
    if not declared:
        classifiers = [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
        declared = classifiers[0].rsplit("::", 1)[1].strip() if classifiers else "unknown"
    return ALIASES.get(declared.lower(), declared.replace(" ", "-"))


def _files(dist: Distribution, installed: str) -> str:
    tops = sorted({Path(str(f)).parts[0] for f in dist.files or [] if ".." not in str(f)})
    return "\n ".join(
        f"{installed}/{top}/*" if "." not in top else f"{installed}/{top}*" for top in tops
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
