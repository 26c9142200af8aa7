#!/usr/bin/env bash
# Install the Debian packages that run a throwaway Ceph cluster with its S3 gateway (RGW), for
# the S3 integration tests and the local stack (see services/ceph_server.py).
#
#   scripts/install_ceph.sh          # idempotent: does nothing when the packages are present
#
# Works as root; otherwise through sudo when it is available. Prints how long it took.
set -euo pipefail

PACKAGES=(ceph-mon ceph-osd radosgw ceph-common)
started=$(date +%s)

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install_ceph: ${PACKAGES[*]} already installed"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo -n)
else
    echo "install_ceph: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh the package index only when it is absent or older than a day (CI images often ship none).
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
    "${as_root[@]}" apt-get update -qq
fi
# No daemons start on install (Debian's ceph packages ship units but this script starts none;
# policy-rc.d is not needed inside a container without systemd).
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

echo "install_ceph: installed ${missing[*]} in $(($(date +%s) - started)) s"
