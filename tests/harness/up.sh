#!/usr/bin/env bash
# `make up`: deploy sagews to this machine with the all-in-one inventory (inventory/local).
# Installs what Ansible needs (python3-venv, the pinned .venv), then runs site.yml.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$SAGEWS_ROOT"
start=$SECONDS
apt_install "${APT_DEPLOY[@]}"
venv_ensure
static_build
"$VENV/bin/ansible-playbook" site.yml "$@"
echo
echo "sagews deployed to this machine in $((SECONDS - start)) s (inventory/local)."
echo "Tiers deployed so far: base (common), cache (memcached). See README.md for what each tier gives you."
