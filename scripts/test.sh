#!/usr/bin/env bash
# The test command (README, .ci/run): install the real servers the integration tests start, then
# run every test. Each install script is idempotent and fast when its server is already there.
#   scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/python ]] || python3 -m venv .venv   # works on a fresh clone without the run command
.venv/bin/pip install -q -e '.[dev,import]'   # [import]: torch 2.13 CPU from local wheels, seconds
scripts/install_ceph.sh            # Ceph RGW: the S3 gateway (Debian packages)
scripts/setup_triton.sh            # tritonserver 2.51 (CPU, python backend) in .venv-triton/
scripts/setup_upstream.sh          # YOLOv5, MegaDetector, ultralytics, timm in .venv-upstream/ (fidelity tests)
scripts/install_prometheus.sh      # Prometheus + promtool (Debian packages)
scripts/install_chromium.sh        # chromium (Debian) + playwright-core (npm) for the report page test
# checkov pins packaging<24, which ray refuses: it gets a venv of its own.
[[ -x .venv-checkov/bin/checkov ]] || { python3 -m venv .venv-checkov && .venv-checkov/bin/pip install -q checkov==3.3.30; }
exec .venv/bin/python -m pytest -q --durations=25 "$@"   # the 25 slowest, for CI time
