#!/usr/bin/env bash
# `make up`: deploy the whole appliance with the all-in-one inventory, then print its URL and admin login.
#   * on a host booted with systemd (a normal Debian 12 machine or VM): site.yml with inventory/local,
#     every tier on this machine;
#   * where PID 1 is not systemd (containers, CI and build machines): the same site.yml into a local
#     systemd container built from the project's base image (inventory/container), its HTTPS port
#     published on 127.0.0.1 (SAGEWS_UP_HTTPS_PORT, default 443).
# Extra arguments go to ansible-playbook (e.g. -v, --check). A second run reports changed=0.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$SAGEWS_ROOT"
start=$SECONDS
port=${SAGEWS_UP_HTTPS_PORT:-443}

if [ -d /run/systemd/system ] && [ "$(ps -o comm= -p 1)" = systemd ]; then
  mode=host
  inventory=inventory/local
else
  mode=container
  inventory=inventory/container
fi

echo "make up: $mode mode (inventory $inventory)"
apt_install "${APT_DEPLOY[@]}"
[ "$mode" = container ] && apt_install docker.io debootstrap
venv_ensure
static_build

if [ "$mode" = container ]; then
  docker_ensure
  SAGEWS_BASE_IMAGE=$(bash tests/harness/base-image.sh --print-tag)
  export SAGEWS_BASE_IMAGE
  "$VENV/bin/ansible-playbook" playbooks/local-container.yml -e "sagews_up_https_port=$port"
fi

log=$(mktemp /tmp/sagews-up.XXXXXX.log)
trap 'rm -f "$log"' EXIT
"$VENV/bin/ansible-playbook" -i "$inventory" site.yml "$@" | tee "$log"

name=$(basename "$inventory")
state=${SAGEWS_STATE_DIR:-$HOME/.sagews/state/$name}
ca=$HOME/.sagews/pki/$name/ca/ca.crt
if [ "$mode" = container ]; then
  url="https://localhost$([ "$port" = 443 ] || echo ":$port")/"
  where="in the local systemd container '${SAGEWS_AIO_CONTAINER:-sagews-aio}' (this machine's PID 1 is not systemd); its HTTPS port is published on 127.0.0.1:$port"
else
  url="https://$(hostname -f)/"
  where="on this machine"
fi
recap=$(grep -E '^[^ ].*: ok=[0-9]+ +changed=' "$log" | sed 's/^/  /')
cat <<EOF

sagews is deployed $where, in $((SECONDS - start)) s.
$recap

  URL:       $url
  admin:     ${SAGEWS_ADMIN_USER:-admin}
  password:  in $state/admin.password (mode 0600): cat $state/admin.password
  CA:        $ca  (the appliance's own CA: import it in the browser, or curl --cacert $ca $url)

Sign in at the URL, create a workspace, and run Sage (factor(2^64-1)) in a worksheet.
Operations: docs/deployment.md. Another run of \`make up\` reconfigures only what changed.
EOF
