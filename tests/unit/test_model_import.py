"""`trapline models identify` / `models import`: real checkpoints of the real architectures, tiny.

The tests build their own checkpoints the way the public files were written: a YOLOv5 P6 model
(MegaDetector v5's family, 8-64 channels) pickled as `{'model': Model, ...}` naming
`models.yolo` / `models.common`; YOLO11 and YOLOv8 models (MDv1000 / MDv6's families, 8-64
channels) pickled as ultralytics' trainer leaves them, naming `ultralytics.nn.tasks` /
`ultralytics.nn.modules.*`; and a DINOv2-style ViT (patch 14, trained grid 37 x 37)
wrapped as DeepFaune's `{'args': ..., 'state_dict': {'base_model.' + timm key: ...}}`. Then the
CLI identifies them without unpickling, refuses without --trust, imports with it, and the ONNX
file runs through the pipeline's own OnnxDetector / OnnxClassifier with the sidecar it wrote.
"""

from __future__ import annotations

import copy
import json
import os
import sys
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
from trapline.models.importers.ultralytics_build import (  # noqa: E402
    YOLO11,
    YOLOV8,
    YOLOV9C,
    build_ultralytics,
    named_as_ultralytics,
    save_ultralytics_checkpoint,
    tiny,
)
from trapline.models.importers.vit import DinoV2ViT  # noqa: E402
from trapline.models.importers.yolov5_arch import (  # noqa: E402
    TINY_P6,
    build_yolov5,
    save_yolov5_checkpoint,
)
from trapline.models.labels import DEEPFAUNE_LABELS  # noqa: E402
from trapline.models.onnx_backend import OnnxClassifier, OnnxDetector  # noqa: E402
from trapline.models.yolo import postprocess  # noqa: E402
from trapline.services.cli.main import app  # noqa: E402

SIDE = 128  # detector test input (two stride-64 cells); the default is the native 1280
SIDE_U = 96  # ultralytics test input (three stride-32 cells); the default is 640
ULTRALYTICS_CFGS = {"yolo11": YOLO11, "yolov8": YOLOV8, "yolov9c": YOLOV9C}
runner = CliRunner()


@pytest.fixture(scope="module")
def md_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("md") / "md_tiny.pt"
    save_yolov5_checkpoint(build_yolov5(TINY_P6), path, date="2022-06-01")
    return path


@pytest.fixture(scope="module", params=sorted(ULTRALYTICS_CFGS))
def ultra_checkpoint(request, tmp_path_factory) -> Path:
    """A tiny YOLO11 / YOLOv8 with weights whose outputs depend on the image (random init
    answers nearly constant boxes and scores, which would make the parity check vacuous)."""
    torch.manual_seed(3)
    model = build_ultralytics(tiny(ULTRALYTICS_CFGS[request.param]))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad:  # not DFL's bins
                std = (2 / m.weight[0].numel()) ** 0.5
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.uniform_(0.5, 1.5, generator=g)
        for level in model.model[-1].cv3:
            level[-1].weight.mul_(16)  # class scores spread over (0, 1), not all near 0.5
    path = tmp_path_factory.mktemp("ultra") / f"{request.param}_tiny.pt"
    save_ultralytics_checkpoint(model, path)
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


def test_identify_names_the_ultralytics_classes_an_mdv1000_pickle_imports(ultra_checkpoint):
    info = identify(ultra_checkpoint)
    assert info.kind == "megadetector-ultralytics"
    assert {
        ("ultralytics.nn.tasks", "DetectionModel"),
        ("ultralytics.nn.modules.head", "Detect"),
        ("ultralytics.nn.modules.block", "DFL"),
        ("ultralytics.nn.modules.conv", "Conv"),
    } <= info.globals
    block = "ultralytics.nn.modules.block"
    families = {
        "yolo11": {(block, n) for n in ("C3k2", "C3k", "C2PSA", "PSABlock", "Attention")},
        "yolov8": {(block, "C2f")},
        "yolov9c": {(block, n) for n in ("RepNCSPELAN4", "RepCSP", "ADown", "SPPELAN")}
        | {("ultralytics.nn.modules.conv", "RepConv")},
    }
    family = ultra_checkpoint.name.removesuffix("_tiny.pt")
    assert families[family] <= info.globals
    others = set().union(*(v for k, v in families.items() if k != family))
    assert not others & info.globals - families[family]
    assert not any(m.startswith("ultralytics") for m in sys.modules)  # saving left none behind
    result = _invoke("identify", str(ultra_checkpoint))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["kind"] == "megadetector-ultralytics"


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


def test_ultralytics_import_refuses_without_trust_and_writes_nothing(ultra_checkpoint, tmp_path):
    out = tmp_path / "mdv1000.onnx"
    result = _invoke("import", "megadetector", str(ultra_checkpoint), "--out", str(out))
    assert result.exit_code == 3
    assert str(ultra_checkpoint) in result.output and "--trust" in result.output
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_ultralytics_import_names_a_block_it_does_not_implement(tmp_path):
    """A YOLOv9-e block (or any ultralytics class outside the set) is refused by name."""

    class CBFuse(torch.nn.Module):  # only its pickled name matters
        pass

    model = build_ultralytics(tiny(YOLOV9C))
    model.model[9] = CBFuse()
    path = tmp_path / "mdv6_yolov9e.pt"
    with named_as_ultralytics():
        CBFuse.__module__, CBFuse.__qualname__ = "ultralytics.nn.modules.block", "CBFuse"
        sys.modules["ultralytics.nn.modules.block"].CBFuse = CBFuse
        torch.save({"model": model, "ema": None}, path)
    assert identify(path).kind == "megadetector-ultralytics"
    result = _invoke("import", "megadetector", str(path), "--trust")
    assert result.exit_code == 2
    assert "ultralytics.nn.modules.block.CBFuse" in result.output
    assert str(path) in result.output


def test_ultralytics_import_refuses_an_end_to_end_head(tmp_path):
    """YOLOv10 / YOLO26 one-to-one heads answer top-k rows, not the layout the pipeline reads."""
    model = build_ultralytics(tiny(YOLOV8))
    head = model.model[-1]
    head.one2one_cv2, head.one2one_cv3 = copy.deepcopy(head.cv2), copy.deepcopy(head.cv3)
    head.end2end = True
    path = tmp_path / "yolov10ish.pt"
    save_ultralytics_checkpoint(model, path)
    out = tmp_path / "e2e.onnx"
    result = _invoke("import", "megadetector", str(path), "--trust", "--out", str(out))
    assert result.exit_code == 2 and "end-to-end" in result.output
    assert not out.exists()


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


def test_ultralytics_import_runs_in_onnx_detector_like_the_checkpoint(ultra_checkpoint, tmp_path):
    out = tmp_path / "mdv1000_tiny.onnx"
    result = _invoke("import", "megadetector", str(ultra_checkpoint), "--trust", "--out", str(out),
                     "--img-size", str(SIDE_U), "--name", "mdv1000-tiny", "--version", "1000.test")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "max |diff|" in result.output
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["layout"] == "ultralytics" and sidecar["stride"] == 32
    assert sidecar["input_size"] == SIDE_U and sidecar["classes"] == ["animal", "person", "vehicle"]
    assert sidecar["source"]["identified_as"] == "megadetector-ultralytics"
    assert sidecar["parity"]["max_abs_diff_scores"] <= sidecar["parity"]["tolerance"]

    detector = OnnxDetector(out)
    assert (detector.spec.name, detector.spec.version) == ("mdv1000-tiny", "1000.test")
    batch = np.random.default_rng(0).integers(0, 256, (3, SIDE_U, SIDE_U, 3), dtype=np.uint8)
    batch[0] = 0  # a black frame next to noise ones
    raw = detector.detect(batch)
    cells = sum((SIDE_U // s) ** 2 for s in (8, 16, 32))  # one prediction per cell, 3 levels
    assert raw.shape == (3, 4 + 3, cells)

    model = load_trusted(ultra_checkpoint)["model"].float().eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255)[0].numpy()
    scores = expected[:, 4:]
    assert scores.max() - scores.min() > 0.5  # scores that say something
    assert float(np.abs(expected[0] - expected[1]).max()) > 0.01  # and depend on the image
    assert np.abs(raw[:, 4:] - scores).max() < 1e-4
    assert np.abs(raw[:, :4] - expected[:, :4]).max() < 1e-2  # pixels
    kept = postprocess(raw, "ultralytics", conf_threshold=0.5, iou_threshold=0.45)
    reference = postprocess(expected, "ultralytics", conf_threshold=0.5, iou_threshold=0.45)
    assert [len(k.scores) for k in kept] == [len(r.scores) for r in reference]
    assert sum(len(k.scores) for k in kept) > 0


def test_ultralytics_parameter_names_are_ultralytics(ultra_checkpoint):
    """State-dict keys a real YOLO11 / YOLOv8 / YOLOv9-c .pt has (head, DFL, C3k2 > C3k, C2PSA
    attention, RepNCSPELAN4 > RepCSP > RepBottleneck > RepConv)."""
    keys = set(load_trusted(ultra_checkpoint)["model"].state_dict())
    if "yolo11" in ultra_checkpoint.name:
        expected = {
            "model.0.conv.weight", "model.0.bn.running_var", "model.2.m.0.cv1.conv.weight",
            "model.8.m.0.m.0.cv1.conv.weight", "model.8.m.0.cv3.bn.bias",
            "model.10.m.0.attn.qkv.conv.weight", "model.10.m.0.attn.pe.bn.weight",
            "model.10.m.0.ffn.1.conv.weight", "model.23.cv2.0.2.bias",
            "model.23.cv3.0.0.0.conv.weight", "model.23.cv3.2.2.weight", "model.23.dfl.conv.weight",
        }  # fmt: skip
    elif "yolov9c" in ultra_checkpoint.name:
        expected = {
            "model.2.cv1.conv.weight", "model.2.cv2.0.m.0.cv1.conv1.conv.weight",
            "model.2.cv2.0.m.0.cv1.conv2.bn.running_mean", "model.2.cv3.1.conv.weight",
            "model.2.cv4.bn.bias", "model.3.cv1.conv.weight", "model.9.cv5.conv.weight",
            "model.22.cv3.0.1.conv.weight", "model.22.dfl.conv.weight",
        }  # fmt: skip
    else:
        expected = {
            "model.2.cv1.conv.weight", "model.2.m.0.cv2.conv.weight", "model.9.cv2.bn.weight",
            "model.22.cv2.0.0.conv.weight", "model.22.cv3.0.1.conv.weight",
            "model.22.cv3.2.2.bias", "model.22.dfl.conv.weight",
        }  # fmt: skip
    assert expected <= keys


@pytest.mark.parametrize(
    ("module", "name", "says"),
    [
        ("models.common", "RepNCSPELAN4", "original YOLOv9 repository"),  # MDv1000-cedar
        ("ultralytics.nn.modules.block", "SCDown", "YOLOv10-style end-to-end"),  # MDv6 YOLOv10
        ("ultralytics.nn.modules.head", "v10Detect", "YOLOv10-style end-to-end"),
    ],
)
def test_unsupported_families_are_refused_with_the_reason_and_what_to_do(
    tmp_path, module, name, says
):
    import types

    block = type(name, (torch.nn.Module,), {"__module__": module})
    fake = types.ModuleType(module)
    setattr(fake, name, block)
    path = tmp_path / f"{name}.pt"
    if module.startswith("ultralytics."):
        with named_as_ultralytics():  # the package tree, as the CBFuse test above
            setattr(sys.modules[module], name, block)
            torch.save({"model": block(), "ema": None}, path)
    else:
        saved = sys.modules.get(module)
        sys.modules[module] = fake
        try:
            torch.save({"model": block(), "ema": None}, path)
        finally:
            if saved is None:
                del sys.modules[module]
            else:
                sys.modules[module] = saved
    with pytest.raises(Exception, match=f"{module}.{name}") as refused:
        load_trusted(path)
    assert says in str(refused.value) and "use MDv5a" in str(refused.value)
