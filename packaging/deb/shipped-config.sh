#!/usr/bin/env bash
# /etc/kommo-callerid/config.toml as the package ships it: config.example.toml with its secret
# keys commented out. The unit hands secrets over as credentials (LoadCredential= from
# /etc/kommo-callerid/credentials/), and a credential wins over the file anyway, so a
# placeholder left in the file could only mislead.
set -euo pipefail
cat <<'HEAD'
# Installed by the kommo-callerid package (a conffile: your edits survive upgrades).
# Secrets do not belong here: write them into root-only files in /etc/kommo-callerid/credentials/
# (ami_secret, kommo_access_token, ...); the unit hands them over with LoadCredential=. Then:
#   sudo CREDENTIALS_DIRECTORY=/etc/kommo-callerid/credentials kommo-callerid check
#   sudo systemctl enable --now kommo-callerid
HEAD
sed -E "s/^((secret|access_token) = )/# \1/" "$1"
