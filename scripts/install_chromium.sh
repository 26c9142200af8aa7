#!/usr/bin/env bash
# Install the headless browser that checks the HTML report (tests/integration/test_report.py): Debian's
# chromium, and Playwright's driver library (playwright-core, npm) into tests/browser/node_modules,
# pointed at that chromium (Playwright's own browser downloads are not reachable here and not
# needed). Idempotent: does nothing when both are present.
#
#   scripts/install_chromium.sh
#
# Works as root; otherwise through sudo when it is available. Needs node + npm on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo -n)
    else
        echo "install_chromium: need root (or sudo) to install chromium" >&2
        exit 1
    fi
    # Refresh the package index only when it is absent or older than a day.
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
        "${as_root[@]}" apt-get update -qq
    fi
    log=$(mktemp)
    # fonts-dejavu-core: without any font the plots' text would render as boxes in the screenshot.
    if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
    echo "install_chromium: installed $(chromium --version 2>/dev/null)"
fi

if [ ! -f tests/browser/node_modules/playwright-core/package.json ]; then
    command -v npm >/dev/null 2>&1 || { echo "install_chromium: npm not found (apt-get install nodejs npm)" >&2; exit 1; }
    # npm ci: exactly the versions in package-lock.json, into tests/browser/node_modules.
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "install_chromium: chromium $(chromium --version 2>/dev/null | awk '{print $2}'), playwright-core $(node -p "require('./tests/browser/node_modules/playwright-core/package.json').version") ready in $(($(date +%s) - started)) s"
