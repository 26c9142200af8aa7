"""Trapline against the upstream code bases themselves (issue 18, "matching upstream").

The upstream side runs in `.venv-upstream/` (scripts/setup_upstream.sh: torch 2.14.1 +
torchvision 0.29.1, `yolov5` 7.0.14, `megadetector` 10.0.28, `ultralytics` 8.4.190, `timm`
1.0.31), one subprocess per step (tests/upstream/reference.py); Trapline's side runs here, in
the project's venv (torch 2.13 for the import only, ONNX Runtime for inference). Per
architecture that docs/models.md lists:

1. upstream builds a model from its own yaml (random seeded weights, small widths) and saves it
   the way its trainer does: YOLOv5 `train.py`'s unstripped `last.pt` (model + EMA, optimizer,
   numpy values) and its `strip_optimizer` copy (the form of MegaDetector's releases);
   ultralytics' `BaseTrainer.save_model` `last.pt`; DeepFaune's `{'args', 'state_dict'}`;
2. Trapline imports the file (the exact allow-list loader, ONNX export);
3. both run the same inputs: raw outputs agree within 1e-3; whole photos go through
   MegaDetector's `PTDetector` / ultralytics' predictor and through Trapline's pipeline in the
   reference profile, and every box is matched at IoU >= 0.95; DeepFaune's crops of the same
   boxes get the same top-1 class from timm and from Trapline.

Figures are printed (run with -s to read them); docs/models.md quotes them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip(
    "torch", reason="needs the [import] extra (torch): pip install -e '.[import]'"
)

from trapline.models.importers.deepfaune import import_deepfaune  # noqa: E402
from trapline.models.importers.megadetector import (  # noqa: E402
    ImportOptions,
    import_megadetector,
)
from trapline.models.onnx_backend import OnnxClassifier, OnnxDetector, make_session  # noqa: E402
from trapline.pipelines.classify import classify_frames  # noqa: E402
from trapline.pipelines.flow import PhotoPipeline  # noqa: E402
from trapline.pipelines.letterbox import Letterbox  # noqa: E402
from trapline.pipelines.types import Detection, MediaRef  # noqa: E402
from trapline.services.settings import Settings  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_VENV = Path(os.environ.get("TRAPLINE_UPSTREAM_VENV", REPO / ".venv-upstream"))
UPSTREAM_PYTHON = UPSTREAM_VENV / "bin" / "python"
REFERENCE = REPO / "tests" / "upstream" / "reference.py"
# Real camera-trap photos nobody here made (Camtrap DP 1.0.2 example, MIT; tests/data/real_photos).
PHOTOS = sorted((REPO / "tests" / "data" / "real_photos").rglob("*.JPG"))[:3]
THRESHOLD = 0.2  # MegaDetector's typical threshold
RAW_TOLERANCE = 1e-3
MIN_IOU = 0.95
CLASSIFIED_BOXES_PER_PHOTO = 60
CATEGORY = {"1": "animal", "2": "person", "3": "vehicle"}  # MegaDetector's output categories

pytestmark = pytest.mark.slow


def _require_upstream() -> None:
    """Skip only where the reference venv cannot exist; CI must have it (scripts/test.sh)."""
    if UPSTREAM_PYTHON.exists() and len(PHOTOS) == 3:
        return
    reason = (
        f"no upstream reference venv at {UPSTREAM_VENV} (run scripts/setup_upstream.sh: needs "
        "x86_64 Linux, Python 3.11 and PyPI) or no photos in tests/data/real_photos"
    )
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the upstream fidelity tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    _require_upstream()
    return tmp_path_factory.mktemp("upstream")


def upstream(work: Path, command: str, **args):
    """Run one reference.py command in the upstream venv; its answer is the last stdout line."""
    env = {**os.environ, "YOLO_CONFIG_DIR": str(work / "ultralytics-config")}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [str(UPSTREAM_PYTHON), str(REFERENCE), command, json.dumps(args)],
        capture_output=True, text=True, timeout=900, env=env, cwd=work,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"upstream {command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _import_detector(path: Path, out: Path, *, dynamic: bool) -> Path:
    import_megadetector(path, out, ImportOptions(trust=True, samples=1, dynamic=dynamic))
    return out


def _square_inputs(side: int) -> np.ndarray:
    """Two (3, side, side) float /255 images: a real photo letterboxed, and uniform noise."""
    photo = Image.open(PHOTOS[0]).convert("RGB")
    box = Letterbox.fit(photo.width, photo.height, side)
    canvas = np.full((side, side, 3), 114, dtype=np.uint8)
    box.draw(photo, canvas)
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return (np.stack([canvas, noise]).transpose(0, 3, 1, 2).astype(np.float32) / 255).copy()


def _onnx_raw(model: Path, x: np.ndarray) -> np.ndarray:
    session = make_session(model, 2)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _iou(a, b) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    h = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    if union <= 0:  # two zero-area boxes (clipped at a border): the same box or none
        return float(np.allclose(a, b, atol=1e-3))
    return inter / union


def match_detections(ours: list[Detection], theirs: list[dict], threshold: float, near: float):
    """Greedy match, highest upstream confidence first, same category, best IoU. Returns the
    IoUs of the matches and the boxes left on either side. A box left over is acceptable only
    when its confidence is within `near` of the threshold (the other side may sit just under)."""
    free = list(ours)
    ious, left_theirs = [], []
    for det in sorted(theirs, key=lambda d: -d["conf"]):
        same = [o for o in free if o.category == CATEGORY[det["category"]]]
        best = max(same, key=lambda o: _iou(o.bbox, det["bbox"]), default=None)
        if best is not None and _iou(best.bbox, det["bbox"]) >= MIN_IOU:
            ious.append(_iou(best.bbox, det["bbox"]))
            free.remove(best)
        else:
            left_theirs.append(det)
    bad = [d for d in left_theirs if d["conf"] - threshold > near]
    bad += [o for o in free if o.confidence - threshold > near]
    return ious, left_theirs, free, bad


def _run_pipeline(detector: Path, classifier: Path) -> dict[str, list[Detection]]:
    """The detections of the whole pipeline; no crop is classified (the boxes are compared
    here, the classifier in the DeepFaune tests), which saves minutes of ViT on random boxes."""
    settings = Settings(profile="reference", detection_threshold=THRESHOLD, max_crops_per_photo=0)
    pipeline = PhotoPipeline(settings.stage_options(), OnnxDetector(detector), OnnxClassifier(classifier))
    out = pipeline.process([MediaRef(uri=str(p), deployment_id="d") for p in PHOTOS])
    assert not out.failures, out.failures
    return {r.ref.uri: r.detections for r in out.results}


def _check_end_to_end(name: str, ours: dict, theirs: dict) -> None:
    total, all_ious, flat = 0, [], 0
    for photo in PHOTOS:
        # Upstream keeps boxes clipped to zero width or height at the border; Trapline drops
        # them (pipelines/detect.py: no area, no observation). Counted, not compared.
        kept = [d for d in theirs[str(photo)] if d["bbox"][2] > 0 and d["bbox"][3] > 0]
        flat += len(theirs[str(photo)]) - len(kept)
        theirs[str(photo)] = kept
        ious, left_theirs, left_ours, bad = match_detections(
            ours[str(photo)], kept, THRESHOLD, near=0.01
        )
        assert not bad, f"{name} {photo.name}: unmatched boxes away from the threshold: {bad}"
        total += len(theirs[str(photo)])
        all_ious += ious
        print(f"{name} {photo.name}: upstream {len(theirs[str(photo)])} boxes, Trapline "
              f"{len(ours[str(photo)])}, matched {len(ious)} (left near the threshold: "
              f"{len(left_theirs)} upstream, {len(left_ours)} Trapline)")  # fmt: skip
    assert total >= 3, f"{name}: too few upstream boxes ({total}) for the comparison to mean much"
    assert len(all_ious) >= 0.9 * total
    print(f"{name}: {len(all_ious)} of {total} upstream boxes matched, IoU min "
          f"{min(all_ious):.4f}, median {np.median(all_ious):.4f}; {flat} zero-area upstream "
          "boxes left out")  # fmt: skip


# --------------------------------------------------------------------------------------------
# Checkpoints, saved by upstream and imported by Trapline


@pytest.fixture(scope="module")
def yolov5_files(work) -> dict[str, Path]:
    """MegaDetector v5's architecture (YOLOv5x6 yaml: P6, stride 64, 1280) at depth 0.33 and
    width 0.125 (8-128 channels: the real x6 is too slow for CPU tests); same blocks, same code."""
    saved = upstream(
        work, "yolov5_save", cfg="yolov5x6.yaml", depth=0.33, width=0.125, seed=0,
        out=str(work / "yolov5"), head_gain=16, obj_bias=-5, cls_bias=3,
    )  # fmt: skip
    return {k: Path(v) for k, v in saved.items()}


@pytest.fixture(scope="module")
def deepfaune_onnx(work) -> tuple[Path, Path]:
    """DeepFaune's model with timm's DINOv2 ViT-S/14 (the same timm class and key names as
    DeepFaune's ViT-L/14: 64 channels per head, 37 x 37 trained grid; ViT-L is 1.2 GB), 38
    classes, imported by Trapline."""
    ckpt = work / "deepfaune.pt"
    upstream(work, "deepfaune_save", backbone="vit_small_patch14_dinov2.lvd142m",
             num_classes=38, seed=0, out=str(ckpt))  # fmt: skip
    out = work / "deepfaune.onnx"
    import_deepfaune(ckpt, out, ImportOptions(trust=True, samples=1))
    return ckpt, out


# --------------------------------------------------------------------------------------------
# YOLOv5 / MegaDetector v5


def test_yolov5_train_last_pt_imports_its_ema_and_matches_yolov5_raw_outputs(work, yolov5_files):
    onnx = _import_detector(yolov5_files["last"], work / "last.onnx", dynamic=False)
    x = _square_inputs(1280)
    np.save(work / "x1280.npy", x)
    upstream(work, "yolov5_raw", ckpt=str(yolov5_files["last"]), inputs=str(work / "x1280.npy"),
             out=str(work / "y_ema.npy"))  # fmt: skip
    upstream(work, "yolov5_raw", ckpt=str(yolov5_files["last"]), inputs=str(work / "x1280.npy"),
             out=str(work / "y_model.npy"), which="model")  # fmt: skip
    theirs, model_only = np.load(work / "y_ema.npy"), np.load(work / "y_model.npy")
    ours = _onnx_raw(onnx, x)
    assert ours.shape == theirs.shape == (2, 3 * sum((1280 // s) ** 2 for s in (8, 16, 32, 64)), 8)
    scores, boxes = np.abs(ours[..., 4:] - theirs[..., 4:]), np.abs(ours[..., :4] - theirs[..., :4])
    print(f"YOLOv5x6-shaped train.py last.pt at 1280: max |diff| scores {scores.max():.3g}, "
          f"boxes {boxes.max():.3g} px, scores spread {theirs[..., 4].std():.3f}")  # fmt: skip
    assert theirs[..., 4].std() > 0.05  # objectness that says something
    # Boxes are in input pixels (up to thousands, where float32 steps are ~1e-4): compared as
    # fractions of the input side, the relative form the result tables hold.
    assert scores.max() < RAW_TOLERANCE and boxes.max() / 1280 < RAW_TOLERANCE
    # The EMA, as YOLOv5's attempt_load takes it, not the file's 'model' (which differs).
    assert np.abs(ours[..., 4:] - model_only[..., 4:]).max() > 100 * RAW_TOLERANCE


@pytest.fixture(scope="module")
def megadetector_upstream(work, yolov5_files) -> dict:
    return upstream(work, "megadetector_detect", ckpt=str(yolov5_files["release"]),
                    photos=[str(p) for p in PHOTOS], threshold=THRESHOLD)  # fmt: skip


def test_megadetector_release_end_to_end_matches_ptdetector_in_the_reference_profile(
    work, yolov5_files, deepfaune_onnx, megadetector_upstream
):
    onnx = _import_detector(yolov5_files["release"], work / "release.onnx", dynamic=True)
    ours = _run_pipeline(onnx, deepfaune_onnx[1])
    _check_end_to_end("MegaDetector v5-shaped (PTDetector)", ours, megadetector_upstream)


# --------------------------------------------------------------------------------------------
# DeepFaune (timm)


def test_deepfaune_logits_match_timm_on_the_same_inputs(work, deepfaune_onnx):
    ckpt, onnx = deepfaune_onnx
    crops = np.random.default_rng(1).integers(0, 256, (4, 182, 182, 3), dtype=np.uint8)
    crops[0] = np.asarray(Image.open(PHOTOS[0]).convert("RGB").resize((182, 182)))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = ((crops / 255.0 - mean) / std).astype(np.float32).transpose(0, 3, 1, 2).copy()
    np.save(work / "crops.npy", x)
    upstream(work, "deepfaune_raw", ckpt=str(ckpt), inputs=str(work / "crops.npy"),
             out=str(work / "logits.npy"))  # fmt: skip
    theirs = np.load(work / "logits.npy")
    ours = OnnxClassifier(onnx).classify(crops)
    diff = np.abs(ours - theirs).max()
    print(f"DeepFaune (timm DINOv2 ViT-S/14, 38 classes): max |diff| logits {diff:.3g}, "
          f"logit spread {theirs.std():.3f}")  # fmt: skip
    assert theirs.std() > 0.5  # logits that say something
    assert diff < RAW_TOLERANCE
    assert (ours.argmax(1) == theirs.argmax(1)).all()


def test_deepfaune_top1_on_megadetector_boxes_matches_upstream_crops(
    work, deepfaune_onnx, megadetector_upstream
):
    """The same boxes (MegaDetector's), cropped DeepFaune's way by each side from its own full
    decode, classified by timm and by Trapline's ONNX export."""
    ckpt, onnx = deepfaune_onnx
    # The most confident animal boxes of each photo: random weights find hundreds, and ViT-S
    # on each costs time on both sides; 60 per photo still compares ~180 crops.
    animal_boxes = {
        p: [d["bbox"] for d in sorted(dets, key=lambda d: -d["conf"]) if d["category"] == "1"][
            :CLASSIFIED_BOXES_PER_PHOTO
        ]
        for p, dets in megadetector_upstream.items()
    }
    theirs = upstream(work, "deepfaune_classify", ckpt=str(ckpt), boxes=animal_boxes)
    settings = Settings(profile="reference")
    pipeline = PhotoPipeline(settings.stage_options(), _NoDetector(), OnnxClassifier(onnx))
    worst, compared, same = 0.0, 0, 0
    for path, boxes in animal_boxes.items():
        ref = MediaRef(uri=path, deployment_id="d")
        (frame,) = pipeline._frames(ref, Path(path).read_bytes())
        found = [Detection("animal", 0.9, tuple(b)) for b in boxes]
        classify_frames([frame], [found], pipeline.classifier, 0.0, 10_000, 3, "truncate")
        for detection, logits in zip(found, theirs[path]):
            logits = np.asarray(logits, dtype=np.float32)
            worst = max(worst, float(np.abs(detection.logits - logits).max()))
            compared += 1
            same += int(detection.logits.argmax() == logits.argmax())
    print(f"DeepFaune on {compared} MegaDetector boxes: top-1 equal {same}/{compared}, "
          f"max |diff| logits {worst:.3g}")  # fmt: skip
    assert compared >= 3
    assert same == compared
    assert worst < RAW_TOLERANCE


class _NoDetector:
    """Only what PhotoPipeline reads of a detector when it is used for decoding and crops."""

    dynamic_input = True

    class spec:  # noqa: N801 - mimics DetectorSpec's attributes
        input_size = 1280
        name, version = "none", "0"


# --------------------------------------------------------------------------------------------
# ultralytics (MDv1000 / MDv6)

ULTRALYTICS = {  # name: reference.py ultralytics_save arguments
    "yolov8n": {"cfg": "yolov8n.yaml"},
    "yolo11n": {"cfg": "yolo11n.yaml"},
    "yolov9c": {"cfg": "yolov9c.yaml", "depth": 0.33, "width": 0.25},  # GELAN, narrower
}


@pytest.fixture(scope="module", params=sorted(ULTRALYTICS))
def ultralytics_file(request, work) -> tuple[str, Path]:
    name = request.param
    saved = upstream(work, "ultralytics_save", seed=0, out=str(work / name),
                     calibrate=[str(p) for p in PHOTOS], **ULTRALYTICS[name])  # fmt: skip
    return name, Path(saved["last"])


def test_ultralytics_last_pt_matches_ultralytics_raw_and_predictor(
    work, ultralytics_file, deepfaune_onnx
):
    name, last = ultralytics_file
    dynamic = _import_detector(last, work / f"{name}_dynamic.onnx", dynamic=True)
    x = _square_inputs(640)
    np.save(work / "x640.npy", x)
    upstream(work, "ultralytics_raw", ckpt=str(last), inputs=str(work / "x640.npy"),
             out=str(work / f"{name}_raw.npy"))  # fmt: skip
    theirs, ours = np.load(work / f"{name}_raw.npy"), _onnx_raw(dynamic, x)
    assert ours.shape == theirs.shape == (2, 7, sum((640 // s) ** 2 for s in (8, 16, 32)))
    scores, boxes = np.abs(ours[:, 4:] - theirs[:, 4:]), np.abs(ours[:, :4] - theirs[:, :4])
    print(f"{name} last.pt at 640: max |diff| scores {scores.max():.3g}, boxes "
          f"{boxes.max():.3g} px, scores spread {theirs[:, 4:].std():.3f}")  # fmt: skip
    assert scores.max() < RAW_TOLERANCE and boxes.max() / 640 < RAW_TOLERANCE  # as for YOLOv5

    theirs_e2e = upstream(work, "ultralytics_detect", ckpt=str(last), imgsz=640,
                          photos=[str(p) for p in PHOTOS], threshold=THRESHOLD)  # fmt: skip
    ours_e2e = _run_pipeline(dynamic, deepfaune_onnx[1])
    _check_end_to_end(f"{name} (ultralytics predictor)", ours_e2e, theirs_e2e)
