#!/usr/bin/env bash
# Installs estate-gateway as a service on Raspberry Pi OS (Debian bookworm, 64-bit or 32-bit) or
# any Debian with systemd. Run as root from a checkout of the repository:
#
#   sudo deploy/install.sh [--site FILE] [--dry-run]
#
# It creates the user `gateway`, /opt/estate-gateway (the virtual environment),
# /etc/estate-gateway (site file, secrets in `env`, households and cards) and
# /var/lib/estate-gateway (the ledger), installs the package into the venv, the systemd unit
# and a journald size limit, and starts the service. Running it again upgrades in place and
# keeps the site file, the secrets and the ledger.
set -euo pipefail

PREFIX=/opt/estate-gateway
VENV=$PREFIX/venv
ETC=/etc/estate-gateway
DATA=/var/lib/estate-gateway
USER_NAME=gateway
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SITE=""
DRY=0

while [ $# -gt 0 ]; do
  case "$1" in
    --site) SITE=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

run() {  # print every step; with --dry-run only print it
  echo "+ $*"
  if [ "$DRY" = 0 ]; then "$@"; fi
}

if [ "$DRY" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sudo deploy/install.sh)" >&2
  exit 2
fi
arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
echo "installing estate-gateway from $SRC on $arch"

# Build tools only for wheels piwheels/PyPI lack on 32-bit ARM (argon2-cffi, pydantic-core).
run apt-get install -y -q python3 python3-venv python3-dev build-essential libffi-dev
if ! id "$USER_NAME" >/dev/null 2>&1; then
  run useradd --system --home-dir "$DATA" --shell /usr/sbin/nologin --groups dialout "$USER_NAME"
fi
run install -d -m 0755 "$PREFIX" "$ETC"
# the ledger and its key file: the service's alone
run install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$DATA"

if [ ! -x "$VENV/bin/python" ]; then
  run python3 -m venv "$VENV"
fi
# piwheels has prebuilt wheels for the Pi's 32-bit ARM; harmless elsewhere.
extra=()
case "$arch" in armhf|armv7l|armv6l) extra=(--extra-index-url https://www.piwheels.org/simple) ;; esac
run "$VENV/bin/pip" install -q --upgrade pip
run "$VENV/bin/pip" install -q "${extra[@]}" "$SRC"

if [ ! -e "$ETC/site.yaml" ]; then
  src_site=${SITE:-$SRC/edge_config/site.example.yaml}
  run install -m 0640 -o root -g "$USER_NAME" "$src_site" "$ETC/site.yaml"
  for f in "$(dirname "$src_site")"/*.csv; do [ -e "$f" ] && run install -m 0640 -g "$USER_NAME" "$f" "$ETC/"; done
  # the ledger lives in the data directory, the one place the service may write
  run sed -i "s#^storage:.*#storage: {path: $DATA/gateway.db, commit_interval_s: 1.0}#" "$ETC/site.yaml"
  echo "site file: $ETC/site.yaml (edit it, then: systemctl reload estate-gateway)"
fi
# It holds the console's password hashes: root writes it, the service reads it, nobody else
# (an upgrade tightens a file that an older install left readable by every user).
run chown "root:$USER_NAME" "$ETC/site.yaml"
run chmod 0640 "$ETC/site.yaml"
if [ ! -e "$ETC/env" ]; then
  run install -m 0640 -g "$USER_NAME" /dev/null "$ETC/env"
  echo "secrets (MQTT_USER=..., CARD_HASH_KEY=...): $ETC/env"
fi

unit=/etc/systemd/system/estate-gateway.service
echo "+ render $SRC/deploy/systemd/estate-gateway.service -> $unit"
if [ "$DRY" = 0 ]; then
  sed -e "s#@VENV@#$VENV#g" -e "s#@ETC@#$ETC#g" -e "s#@DATA@#$DATA#g" -e "s#@USER@#$USER_NAME#g" \
    "$SRC/deploy/systemd/estate-gateway.service" > "$unit"
fi
run install -d /etc/systemd/journald.conf.d
run install -m 0644 "$SRC/deploy/systemd/journald-estate-gateway.conf" /etc/systemd/journald.conf.d/estate-gateway.conf
run systemctl restart systemd-journald
run "$VENV/bin/gateway" check-config "$ETC/site.yaml"
run systemctl daemon-reload
run systemctl enable estate-gateway.service
run systemctl restart estate-gateway.service
echo "done: systemctl status estate-gateway; journalctl -u estate-gateway -f"
echo "console users: $VENV/bin/gateway users add NAME --role guard|electrician|accountant|admin -c $ETC/site.yaml"
