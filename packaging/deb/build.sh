#!/usr/bin/env bash
# Builds dist/kommo-callerid_VERSION_ARCH.deb: a virtualenv at /opt/kommo-callerid made with
# Debian's own /usr/bin/python3, packed with dpkg-deb.
#
#   packaging/deb/build.sh [WHEEL]      (default: a wheel built from this checkout)
#
# Why dpkg-deb over a venv, not dh-virtualenv: bookworm's dh-virtualenv (1.2.2) needs a full
# debian/ source tree, debhelper and dpkg-buildpackage, and re-resolves the dependencies inside
# its own build anyway; what it adds (shebang rewriting, a venv at its final path) is three
# lines here. The venv is made in a staging tree with the system python3, so it binds to
# Debian's interpreter (hence Depends: python3 (>= 3.11), python3 (<< 3.12)); its absolute
# paths (the console script's shebang) are rewritten from the staging path to /opt/kommo-callerid.
# The libraries come from the package index at build time (pyproject's ranges, not pinned).
# Nothing is installed on the build host and no root is needed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
name=kommo-callerid
prefix=/opt/$name
python=${DEB_PYTHON:-/usr/bin/python3}
out=${DEB_OUT:-$repo/dist}
maintainer=${DEB_MAINTAINER:-"kommo-callerid maintainers <kommo-callerid@users.noreply.github.com>"}

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/pyproject.toml" | head -1)
arch=$(dpkg --print-architecture)
pyminor=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
# Reproducible dates: the last commit's time, else now.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
venv=$root$prefix
mkdir -p "$out"

# pip's chatter only when it fails.
quietly() { "$@" >"$work/pip.log" 2>&1 || { cat "$work/pip.log" >&2; return 1; }; }

"$python" -m venv "$venv"
wheel=${1:-}
if [ -z "$wheel" ]; then
  quietly "$venv/bin/python" -m pip wheel --no-deps --wheel-dir "$work/wheel" "$repo"
  wheel=$(ls "$work"/wheel/*.whl)
fi
echo "deb: venv at $prefix with $python ($pyminor), $(basename "$wheel")"
# Not [fast] (uvloop): safe since the AMI reader waits for the intake, but it gains little (README).
quietly "$venv/bin/python" -m pip install --no-compile --disable-pip-version-check "$wheel"
# The click-to-call widget archive an account administrator uploads in Kommo, written by the
# same code as `kommo-callerid widget` (byte for byte: fixed dates). It holds no server URL (the
# administrator types it in the widget's settings in Kommo), so one archive fits every install
# and needs no configuration here. -B: no bytecode in the venv.
widget=$work/kommo-callerid-widget.zip
"$venv/bin/python" -B -c 'import sys, pathlib
from kommo_callerid.commands.widget import write_widget
write_widget(pathlib.Path(sys.argv[1]))' "$widget"
# pip and setuptools are build tools, not runtime: the package does not carry them.
"$venv/bin/python" -m pip uninstall --quiet --yes pip setuptools >/dev/null 2>&1 || true
# Only our own command: the libraries' console scripts (dotenv, idna, panoramisk) are not
# for operators, and activate scripts are for shells, not services.
find "$venv/bin" -type f ! -name "$name" -delete
rm -rf "$venv/include" "$venv/lib64"
find "$venv" -depth -name __pycache__ -type d -exec rm -rf {} +
find "$venv" -name '*.pyc' -delete
# The staging path becomes the installed path in every script that names it.
grep -rlI --null "$venv" "$venv" | xargs -0 -r sed -i "s#$venv#$prefix#g"
site=$(echo "$venv"/lib/python3*/site-packages)
# Keep the bundled licences, drop what only builds need.
find "$site" \( -name '*.pyi' -o -name '*.c' -o -name '*.h' -o -name '*.pxd' -o -name '*.pyx' \) -delete
# The daemon parses and formats numbers with phonenumbers' metadata (data/); it never calls its
# geocoder, carrier or time-zone lookups, whose data is 20 of the venv's 38 MB.
rm -rf "$site"/phonenumbers/{geodata,carrierdata,tzdata}
find "$site" -name '*.so' -exec strip --strip-unneeded --remove-section=.comment --remove-section=.note {} +
# Library modules, not scripts: no execute bit, and a stray "#!" line blanked (line numbers
# in tracebacks stay right).
find "$site" -type f -exec chmod 0644 {} +
find "$site" -name '*.py' -exec sed -i '1s/^#!.*$//' {} +
find "$site" -type d -empty -delete

# Files around the venv.
install -d "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/$name" \
  "$root/usr/share/doc/$name/examples" "$root/usr/share/man/man1" "$root/DEBIAN"
ln -s "$prefix/bin/$name" "$root/usr/bin/$name"
sed "s#^ExecStart=[^ ]*/$name #ExecStart=/usr/bin/$name #" "$repo/systemd/$name.service" \
  > "$root/lib/systemd/system/$name.service"
"$here/shipped-config.sh" "$repo/config.example.toml" > "$root/etc/$name/config.toml"
cp "$repo/docs/grafana/$name.json" "$repo/docs/prometheus/$name.rules.yml" \
  "$root/usr/share/doc/$name/examples/"
cp "$repo/README.md" "$repo/docs/log-events.md" "$root/usr/share/doc/$name/"
"$venv/bin/python" "$here/copyright.py" "$venv" "$prefix" > "$root/usr/share/doc/$name/copyright"
sed -e "s/@VERSION@/$version/" -e "s/@MAINTAINER@/$maintainer/" \
    -e "s/@DATE@/$(date -u -R -d "@$SOURCE_DATE_EPOCH")/" \
    -e "s/@COMMIT@/$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)/" \
    "$here/changelog.in" > "$root/usr/share/doc/$name/changelog"
cp "$here/$name.1" "$root/usr/share/man/man1/"
install -D -m 0644 "$widget" "$root/usr/share/$name/kommo-callerid-widget.zip"
install -D -m 0644 "$here/lintian-overrides" "$root/usr/share/lintian/overrides/$name"
find "$root/usr/share/doc/$name" "$root/usr/share/man" -type f \
  \( -name changelog -o -name '*.md' -o -name '*.json' -o -name '*.1' \) -exec gzip -9n {} +

# Control files.
for script in postinst prerm postrm; do install -m 0755 "$here/$script" "$root/DEBIAN/"; done
echo "/etc/$name/config.toml" > "$root/DEBIAN/conffiles"
size_kb=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
depends="python3 (>= $pyminor), python3 (<< ${pyminor%.*}.$(( ${pyminor#*.} + 1 ))), $("$here/libc-depends.sh" "$venv")"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@MAINTAINER@/$maintainer/" \
    -e "s/@SIZE@/$size_kb/" -e "s/@DEPENDS@/$depends/" "$here/control.in" > "$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
  | xargs -0 md5sum) > "$root/DEBIAN/md5sums"

# Modes as Debian expects them; owners come from --root-owner-group.
find "$root" -type d -exec chmod 0755 {} +
find "$root" -type f -exec chmod go-w,u+rw,a+r {} +
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

deb=$out/${name}_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "deb: $deb ($(du -h "$deb" | cut -f1), installed $((size_kb / 1024)) MiB)"
