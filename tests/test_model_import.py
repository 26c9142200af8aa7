"""`trapline models identify` / `models import`: real checkpoints of the real architectures, tiny.

The tests build their own checkpoints the way the public files were written: a YOLOv5 P6 model
(MegaDetector v5's family, 8-64 channels) pickled as `{'model': Model, ...}` naming
`models.yolo` / `models.common`, and a DINOv2-style ViT (patch 14, trained grid 37 x 37)
wrapped as DeepFaune's `{'args': ..., 'state_dict': {'base_model.' + timm key: ...}}`. Then the
CLI identifies them without unpickling, refuses without --trust, imports with it, and the ONNX
file runs through the pipeline's own OnnxDetector / OnnxClassifier with the sidecar it wrote.
"""

from __future__ import annotations

import json
import os
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip(
    "torch", reason="needs the [import] extra (torch): pip install -e '.[import]'"
)

from trapline.models.importers.checkpoint_loader import load_trusted  # noqa: E402
from trapline.models.importers.identify import identify  # noqa: E402
from trapline.models.importers.vit import DinoV2ViT  # noqa: E402
from trapline.models.importers.yolov5_arch import (  # noqa: E402
    TINY_P6,
    build_yolov5,
    save_yolov5_checkpoint,
)
from trapline.models.labels import DEEPFAUNE_LABELS  # noqa: E402
from trapline.models.onnx_backend import OnnxClassifier, OnnxDetector  # noqa: E402
from trapline.services.cli import app  # noqa: E402

SIDE = 128  # detector test input (two stride-64 cells); the default is the native 1280
runner = CliRunner()


@pytest.fixture(scope="module")
def md_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("md") / "md_tiny.pt"
    save_yolov5_checkpoint(build_yolov5(TINY_P6), path, date="2022-06-01")
    return path


@pytest.fixture(scope="module")
def deepfaune_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    # DINOv2 widths are 64 per head (the importer assumes it unless --heads says otherwise).
    vit = DinoV2ViT(img_size=14 * 37, dim=128, depth=2, heads=2, hidden=512, num_classes=38)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.5)  # DINOv2's trained layer scales are far from their 1e-5 init
            elif p.dim() > 1:
                p.normal_(0, 0.08)
    path = tmp_path_factory.mktemp("df") / "deepfaune_tiny.pt"
    args = {"backbone": "vit_large_patch14_dinov2.lvd142m", "num_classes": 38, "img_size": 182}
    torch.save(
        {"args": args, "state_dict": {"base_model." + k: v for k, v in vit.state_dict().items()}},
        path,
    )
    return path


def _invoke(*args: str):
    return runner.invoke(app, ["models", *args])


# --------------------------------------------------------------------------------------------
# Identification without unpickling


def test_identify_names_the_yolov5_classes_a_megadetector_pickle_imports(md_checkpoint):
    info = identify(md_checkpoint)
    assert info.kind == "megadetector-yolov5"
    assert {
        ("models.yolo", "Model"),
        ("models.yolo", "Detect"),
        ("models.common", "C3"),
    } <= info.globals
    assert "models" not in sys.modules  # saving left no top-level `models` package behind
    result = _invoke("identify", str(md_checkpoint))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["kind"] == "megadetector-yolov5"


def test_identify_reads_a_pickle_that_would_run_code_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, path)
    info = identify(path)
    assert info.kind == "unknown"
    assert (os.system.__module__, "system") in info.globals
    assert not marker.exists()
    assert _invoke("identify", str(path)).exit_code == 2


def test_identify_reads_megadetector_info_json_inside_the_zip(md_checkpoint, tmp_path):
    path = tmp_path / "md_with_info.pt"
    path.write_bytes(md_checkpoint.read_bytes())
    with zipfile.ZipFile(path, "a") as archive:
        root = archive.namelist()[0].split("/")[0]
        archive.writestr(
            f"{root}/megadetector_info.json",
            json.dumps({"image_size": 192, "model_type": "yolov5"}),
        )
    info = identify(path)
    assert info.metadata["image_size"] == 192 and info.kind == "megadetector-yolov5"
    result = _invoke("import", "megadetector", str(path), "--trust", "--samples", "1")
    assert result.exit_code == 0, result.output
    assert json.loads(path.with_suffix(".json").read_text())["input_size"] == 192


def test_identify_recognises_a_deepfaune_checkpoint_by_its_keys(deepfaune_checkpoint):
    info = identify(deepfaune_checkpoint)
    assert info.kind == "deepfaune"
    assert info.modules <= {"collections", "torch", "torch._utils"}


def test_identify_flags_ultralytics_checkpoints_and_import_names_the_missing_package(tmp_path):
    """MDv1000/MDv6 pickles import ultralytics.*; without that package the import says so."""
    names = ("ultralytics", "ultralytics.nn", "ultralytics.nn.tasks")
    if any(n in sys.modules for n in names):
        pytest.skip("the real ultralytics is imported in this process")
    modules = {n: types.ModuleType(n) for n in names}

    class DetectionModel(torch.nn.Module):  # only its pickled name matters here
        pass

    DetectionModel.__module__, DetectionModel.__qualname__ = (
        "ultralytics.nn.tasks",
        "DetectionModel",
    )
    modules["ultralytics.nn.tasks"].DetectionModel = DetectionModel
    sys.modules.update(modules)
    try:
        path = tmp_path / "md_v1000.pt"
        torch.save({"model": DetectionModel()}, path)
    finally:
        for n in names:
            del sys.modules[n]
    assert identify(path).kind == "megadetector-ultralytics"
    if _importable("ultralytics"):
        pytest.skip("ultralytics is installed here; the missing-package message cannot show")
    result = _invoke("import", "megadetector", str(path), "--trust")
    assert result.exit_code == 2
    assert "pip install ultralytics" in result.output and str(path) in result.output


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# --------------------------------------------------------------------------------------------
# Refusals


def test_import_refuses_a_pickle_without_trust_and_writes_nothing(md_checkpoint, tmp_path):
    out = tmp_path / "md.onnx"
    result = _invoke("import", "megadetector", str(md_checkpoint), "--out", str(out))
    assert result.exit_code == 3
    assert str(md_checkpoint) in result.output and "--trust" in result.output
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_import_refuses_the_wrong_kind_with_the_right_command(
    md_checkpoint, deepfaune_checkpoint, tmp_path
):
    result = _invoke(
        "import", "deepfaune", str(md_checkpoint), "--trust", "--out", str(tmp_path / "x.onnx")
    )
    assert result.exit_code == 2 and "models import megadetector" in result.output
    result = _invoke(
        "import",
        "megadetector",
        str(deepfaune_checkpoint),
        "--trust",
        "--out",
        str(tmp_path / "y.onnx"),
    )
    assert result.exit_code == 2 and "models import deepfaune" in result.output
    plain = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(3)}, plain)
    result = _invoke("import", "megadetector", str(plain), "--trust")
    assert result.exit_code == 2 and "not a MegaDetector checkpoint" in result.output


def test_trusted_load_still_refuses_names_outside_the_allow_list(md_checkpoint, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "md_plus_payload.pt"
    save_yolov5_checkpoint(build_yolov5(TINY_P6), path, extra=Payload())
    assert identify(path).kind == "megadetector-yolov5"
    result = _invoke("import", "megadetector", str(path), "--trust", "--img-size", str(SIDE))
    assert result.exit_code == 2
    assert "system" in result.output and str(path) in result.output
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Imports that the pipeline's backends then run


def test_megadetector_import_runs_in_onnx_detector_like_the_checkpoint(md_checkpoint, tmp_path):
    out = tmp_path / "md_tiny.onnx"
    result = _invoke("import", "megadetector", str(md_checkpoint), "--trust", "--out", str(out),
                     "--img-size", str(SIDE), "--name", "md-tiny", "--version", "5a.test")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "max |diff|" in result.output  # parity is reported
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert (
        sidecar["layout"] == "yolov5" and sidecar["stride"] == 64 and sidecar["input_size"] == SIDE
    )
    assert sidecar["classes"] == ["animal", "person", "vehicle"]
    assert sidecar["parity"]["max_abs_diff_scores"] <= sidecar["parity"]["tolerance"]

    detector = OnnxDetector(out)
    assert (detector.spec.name, detector.spec.version) == ("md-tiny", "5a.test")
    batch = np.random.default_rng(0).integers(0, 256, (3, SIDE, SIDE, 3), dtype=np.uint8)
    raw = detector.detect(batch)
    rows = 3 * sum((SIDE // s) ** 2 for s in (8, 16, 32, 64))  # 3 anchors on four levels
    assert raw.shape == (3, rows, 8)

    model = load_trusted(md_checkpoint)["model"].float().eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255)[0].numpy()
    assert np.abs(raw[..., 4:] - expected[..., 4:]).max() < 1e-4
    assert np.abs(raw[..., :4] - expected[..., :4]).max() < 1e-2  # pixels


def test_deepfaune_import_exports_at_182_with_resampled_positions(deepfaune_checkpoint, tmp_path):
    out = tmp_path / "deepfaune.onnx"
    result = _invoke("import", "deepfaune", str(deepfaune_checkpoint), "--trust", "--out", str(out),
                     "--version", "1.3")  # fmt: skip
    assert result.exit_code == 0, result.output
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["input_size"] == 182 and sidecar["labels"] == list(DEEPFAUNE_LABELS)
    assert sidecar["architecture"]["trained_grid"] == 37 and sidecar["architecture"]["grid"] == 13

    classifier = OnnxClassifier(out)
    crops = np.random.default_rng(2).integers(0, 256, (2, 182, 182, 3), dtype=np.uint8)
    logits = classifier.classify(crops)
    assert logits.shape == (2, 38)

    # The reference is DeepFaune's own runtime path: the 37 x 37 table resampled on every call.
    state = torch.load(deepfaune_checkpoint, weights_only=True)["state_dict"]
    vit = DinoV2ViT(img_size=14 * 37, dim=128, depth=2, heads=2, hidden=512, num_classes=38).eval()
    vit.load_state_dict({k.removeprefix("base_model."): v for k, v in state.items()})
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        expected = vit.forward_dynamic(x).numpy()
    assert float(np.abs(expected).max()) > 0.5  # logits that say something
    assert np.abs(logits - expected).max() < 1e-4
    assert (logits.argmax(1) == expected.argmax(1)).all()


def test_vit_parameter_names_are_timms(deepfaune_checkpoint):
    """DeepFaune's keys are timm's; these are timm VisionTransformer's for a DINOv2 block."""
    keys = set(DinoV2ViT(img_size=182, dim=64, depth=1, heads=1, hidden=128).state_dict())
    block = {f"blocks.0.{k}" for k in (
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
        "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
        "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma")}  # fmt: skip
    top = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
           "norm.weight", "norm.bias", "head.weight", "head.bias"}  # fmt: skip
    assert keys == block | top
