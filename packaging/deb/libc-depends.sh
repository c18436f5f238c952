#!/usr/bin/env bash
# Prints the Depends the venv's compiled extensions need (e.g. "libc6 (>= 2.14)"), as
# dpkg-shlibdeps computes it; dpkg-shlibdeps wants a debian/control to read, so it gets one.
set -euo pipefail
venv=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/debian"
printf 'Source: kommo-callerid\n\nPackage: kommo-callerid\nArchitecture: any\n' > "$tmp/debian/control"
mapfile -d '' objects < <(find "$venv" -name '*.so*' -type f -print0)
args=()
for object in "${objects[@]}"; do args+=("-e$object"); done
(cd "$tmp" && dpkg-shlibdeps -O --warnings=0 "${args[@]}") | sed -n 's/^shlibs:Depends=//p'
