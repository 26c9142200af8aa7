#!/usr/bin/env bash
# Install Prometheus and promtool from Debian, for the alert-rule tests and the Prometheus
# integration test (tests/integration/test_prometheus.py), which start their own prometheus on a free port.
#
#   scripts/install_prometheus.sh          # idempotent: does nothing when the package is present
#
# The packaged service is NOT started: a policy-rc.d refuses service starts during the install,
# and on a host that runs systemd the unit is stopped and disabled afterwards (a CI runner must
# not keep a Prometheus on :9090). Works as root; otherwise through sudo when it is available.
set -euo pipefail

PACKAGE=prometheus
started=$(date +%s)

if dpkg-query -W -f='${Status}' "$PACKAGE" 2>/dev/null | grep -q "install ok installed" \
    && command -v promtool >/dev/null 2>&1; then
    echo "install_prometheus: $PACKAGE already installed ($(prometheus --version 2>&1 | head -1))"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo -n)
else
    echo "install_prometheus: need root (or sudo) to install $PACKAGE" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh the package index only when it is absent or older than a day (CI images often ship none).
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
    "${as_root[@]}" apt-get update -qq
fi

# invoke-rc.d and deb-systemd-invoke ask /usr/sbin/policy-rc.d; exit 101 = "action forbidden".
policy=/usr/sbin/policy-rc.d
placed_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
    "${as_root[@]}" chmod 755 "$policy"
    placed_policy=1
fi
cleanup() {
    if [ "$placed_policy" -eq 1 ]; then
        "${as_root[@]}" rm -f "$policy"
    fi
}
trap cleanup EXIT

log=$(mktemp)
if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$PACKAGE" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    "${as_root[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi

echo "install_prometheus: installed $($(command -v prometheus) --version 2>&1 | head -1) in $(($(date +%s) - started)) s"
