#!/usr/bin/env bash
# The upstream reference code for tests/integration/test_upstream_fidelity.py, in a test-only venv (.venv-upstream/).
#
#   scripts/setup_upstream.sh [VENV_DIR]      # default: .venv-upstream/ at the repository root
#
# YOLOv5 (the `yolov5` PyPI package: MegaDetector v5's code), MegaDetector's own inference
# (`megadetector`), ultralytics (MDv1000 / MDv6) and timm (DeepFaune's ViT) are never dependencies of Trapline (AGPL-3.0 / GPL code, torchvision): the tests
# run them in this venv's interpreter as subprocesses and compare with Trapline's importers.
# torch 2.14.1 + torchvision 0.29.1: torchvision's PyPI wheels fail to import their ops next to the
# torch 2.13 CPU build the project pins (`operator torchvision::nms does not exist`).
# Python: $TRAPLINE_UPSTREAM_PYTHON, else python3.11 on PATH.
# Idempotent: a venv whose installed versions match the pins is left as it is (~1 s); a fresh
# install takes ~3.5 min and ~5.9 GB (torch 2.14.1's CUDA wheels, from this machine's disk).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_DIR="${1:-.venv-upstream}"
PYTHON="${TRAPLINE_UPSTREAM_PYTHON:-$(command -v python3.11 || true)}"
if [[ -z "$PYTHON" ]]; then
    echo "setup_upstream: no python3.11 on PATH (set TRAPLINE_UPSTREAM_PYTHON)" >&2
    exit 1
fi
# One place for the pins; the check below compares the installed versions with them.
PINS=(
    "torch==2.14.1" "torchvision==0.29.1"
    "yolov5==7.0.14" "ultralytics==8.4.190" "timm==1.0.31"
    "setuptools<81"   # yolov5 imports pkg_resources
)
# megadetector 10.0.28 requires ultralytics-yolov5==0.1.1, whose sdist downloads its source from
# GitHub at build time (unreachable here); its PTDetector runs on the `yolov5` package above, so it
# goes in with --no-deps plus what it imports.
MD_PINS=("megadetector==10.0.28")
MD_DEPS=(humanfriendly jsonpickle clipboard dill fastquadtree pytest send2trash scikit-learn python-dateutil tqdm)
check() {  # check [quick]: quick compares the installed versions only (no imports, ~1 s)
    "$VENV_DIR/bin/python" - "${1:-full}" "${PINS[@]}" "${MD_PINS[@]}" <<'PY'
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
for pin in sys.argv[2:]:
    req = Requirement(pin)
    if version(req.name) not in req.specifier:
        sys.exit(f"{req.name} {version(req.name)} does not match {pin}")
if sys.argv[1] == "quick":
    sys.exit(0)
import torch, torchvision, timm, ultralytics  # noqa: E401
import yolov5.models.yolo  # noqa: F401
from megadetector.detection import pytorch_detector  # noqa: F401
torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"ultralytics {ultralytics.__version__}, timm {timm.__version__}")
PY
}
if [[ -x "$VENV_DIR/bin/python" ]] && check quick >/dev/null 2>&1; then
    echo "setup_upstream: ready in $VENV_DIR (already installed)"
    exit 0
fi
[[ -x "$VENV_DIR/bin/python" ]] || "$PYTHON" -m venv "$VENV_DIR"
"$VENV_DIR/bin/python" -m pip install -q "${PINS[@]}" "${MD_DEPS[@]}"
"$VENV_DIR/bin/python" -m pip install -q --no-deps "${MD_PINS[@]}"
check
echo "setup_upstream: ready in $VENV_DIR"
