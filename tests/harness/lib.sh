# Shared steps for `make up` and `make test`: system packages, the virtualenv, the Docker engine.
# Sourced, not run. Everything is idempotent and skips work that is already done.

SAGEWS_ROOT=${SAGEWS_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
VENV=${VENV:-$SAGEWS_ROOT/.venv}
PYTHON=${PYTHON:-python3}
export DEBIAN_FRONTEND=noninteractive

# Debian packages by purpose. `make up` needs only the first list.
APT_DEPLOY=(python3-venv git ca-certificates)
APT_TEST=(docker.io debootstrap postgresql-15 postgresql-client-15 pgbackrest memcached nftables chromium strace)

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && { echo "apt: all of $* present"; return 0; }
  echo "apt: installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts daemons on install; the tests start their own PostgreSQL and memcached.
  for svc in postgresql memcached; do
    if printf '%s\n' "${missing[@]}" | grep -q "^$svc"; then
      service "$svc" stop >/dev/null 2>&1 || true
    fi
  done
}

# (Re)create .venv when the pinned requirements or the package metadata change.
venv_ensure() {
  local extras=${1:-}
  local stamp="$VENV/.sagews-stamp"
  local want
  want=$(cat "$SAGEWS_ROOT"/requirements/{dev,runtime,runtime-sage}.txt "$SAGEWS_ROOT/pyproject.toml" \
    | sha256sum | cut -c1-16)"-$extras"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "venv: up to date ($VENV)"
    return 0
  fi
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$SAGEWS_ROOT/requirements/dev.txt"
  # the app's own dependencies at the versions the servers get (requirements/runtime*.txt)
  "$VENV/bin/pip" install -q --disable-pip-version-check -c "$SAGEWS_ROOT/requirements/runtime-sage.txt" \
    -e "$SAGEWS_ROOT${extras:+[$extras]}"
  echo "$want" > "$stamp"
  echo "venv: installed ($VENV)"
}

docker_ensure() {
  if docker info >/dev/null 2>&1; then
    echo "docker: engine running"
    return 0
  fi
  echo "docker: starting dockerd"
  mkdir -p /var/log/sagews-test
  nohup dockerd >/var/log/sagews-test/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && { echo "docker: engine up"; return 0; }
    sleep 1
  done
  echo "docker: dockerd did not come up; see /var/log/sagews-test/dockerd.log" >&2
  tail -20 /var/log/sagews-test/dockerd.log >&2
  return 1
}

# static/vendor/ (the browser client's npm libraries): npm ci from static/package-lock.json + copy.
static_build() {
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  bash "$SAGEWS_ROOT/static/build.sh"
}

# The tag of the local systemd base image (tests/harness/base-image.sh): a hash of its recipe.
base_image_tag() {
  echo "${SAGEWS_BASE_IMAGE_NAME:-sagews-base}:$(sha256sum "$SAGEWS_ROOT/tests/harness/base-image.sh" | cut -c1-12)"
}
