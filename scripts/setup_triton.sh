#!/usr/bin/env bash
# Install the real Triton Inference Server (CPU, python backend only) for tests and the local stack.
#
#   scripts/setup_triton.sh [VENV_DIR]      # default: .venv-triton/ at the repository root
#
# tritonserver 2.51 ships inside the PyPI wheel nvidia-pytriton==0.7.0. Its python-backend stub is
# built for CPython 3.11 and pytriton needs numpy<2, so it lives in its own venv, apart from the
# project's. Models in that venv run with ONNX Runtime (see models/triton_repository.py).
# Python: $TRAPLINE_TRITON_PYTHON, else python3.11 on PATH. It must have a shared libpython.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_DIR="${1:-.venv-triton}"
PYTHON="${TRAPLINE_TRITON_PYTHON:-$(command -v python3.11 || true)}"
if [[ -z "$PYTHON" ]]; then
    echo "setup_triton: no python3.11 on PATH; the Triton python-backend stub needs CPython 3.11" >&2
    echo "  (install python3.11, or set TRAPLINE_TRITON_PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
"$PYTHON" - <<'PY' || exit 1
import sys, sysconfig
if sys.version_info[:2] != (3, 11):
    sys.exit(f"setup_triton: {sys.executable} is Python {sys.version.split()[0]}; "
             "the Triton python-backend stub in nvidia-pytriton 0.7.0 needs 3.11 "
             "(set TRAPLINE_TRITON_PYTHON)")
if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
    sys.exit(f"setup_triton: {sys.executable} has no shared libpython; the stub links against "
             "libpython3.11.so (use a Python built with --enable-shared, e.g. Debian's python3.11)")
PY
if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV_DIR"
fi
"$VENV_DIR/bin/python" -m pip install -q --upgrade pip
# numpy<2: pytriton 0.7.0 and its tritonclient were built against numpy 1.x.
# onnxruntime 1.20.1: the last line of releases tested against both numpy 1.x and 2.x.
"$VENV_DIR/bin/python" -m pip install -q "nvidia-pytriton==0.7.0" "numpy<2" "onnxruntime==1.20.1"
"$VENV_DIR/bin/python" - <<'PY'
import pathlib, sys
import numpy, onnxruntime, pytriton
root = pathlib.Path(pytriton.__file__).parent / "tritonserver"
server = root / "bin" / "tritonserver"
stub = root / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
for path in (server, stub, root / "backends" / "python" / "libtriton_python.so"):
    if not path.exists():
        sys.exit(f"setup_triton: {path} missing from nvidia-pytriton; is this an x86_64 Linux wheel?")
print(f"setup_triton: tritonserver at {server}; numpy {numpy.__version__}, "
      f"onnxruntime {onnxruntime.__version__}, python {sys.version.split()[0]}")
PY
echo "setup_triton: ready in $VENV_DIR"
