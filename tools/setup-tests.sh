#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: the real servers the
# integration tests start on loopback (never as system services) and the Python package.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# chromium: the browser tests drive Debian's build through Playwright (pip's playwright never
# downloads one here); fonts-wqy-microhei: Chinese text in their screenshots instead of boxes;
# systemd: `systemd-analyze verify` checks the service unit.
packages="influxdb victoria-metrics openssl mosquitto chromium fonts-wqy-microhei systemd"
missing=""
for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
python3 -m pip install -q -e '.[test]'
