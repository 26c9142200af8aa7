"""A Triton model repository of the demo models, for the tests that start a real Triton."""

from __future__ import annotations

from pathlib import Path

import pytest

from trapline.models.triton_repository import RepositoryOptions, build_repository
from trapline.services.devstack.triton import default_venv, triton_install
from trapline.services.settings import DEMO_MODELS


def demo_repository(folder: Path) -> Path:
    """The demo models as a python-backend repository for the CPU tritonserver, in `folder`
    (skips when the Triton venv is missing). Shared by the Triton fault tests."""
    if not (default_venv() / "bin" / "python").exists():
        pytest.skip(f"no Triton venv at {default_venv()}: run scripts/setup_triton.sh")
    install = triton_install(default_venv())
    build_repository(
        DEMO_MODELS / "detector.onnx", DEMO_MODELS / "classifier.onnx", folder, backend="python",
        options=RepositoryOptions(max_batch_size=16, preferred_batch_sizes=(8, 16)),
        python_site_packages=install.site_packages,
    )  # fmt: skip
    return folder
