#!/usr/bin/env bash
# Install the Debian packages that run a throwaway Ceph cluster with its S3 gateway (RGW), for
# the S3 integration tests and the local stack (see services/devstack/ceph.py).
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

# apt's chatter goes to a log that is shown only if something fails.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
apt() {
    if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@" >>"$log" 2>&1; then
        cat "$log" >&2
        echo "install_ceph: apt-get $* failed" >&2
        exit 1
    fi
}
# Refresh the package index only when it is missing or older than a day (CI images often
# ship none); a stale index would ask for package versions the mirror no longer has.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
    apt update -qq
fi
# Installing starts no daemon here (no systemd in CI containers); services/devstack/ceph.py
# runs its own throwaway cluster in a temp dir.
apt install -y -qq --no-install-recommends "${missing[@]}"

echo "install_ceph: installed ${missing[*]} in $(($(date +%s) - started)) s"
