"""The shipped demo models keep MegaDetector's and DeepFaune's contracts and still work.

The pipeline's pre/post-processing is written against the real models' contracts; these tests
pin the demo ONNX files to exactly those contracts (names, shapes, dtypes, YOLOv5 row layout,
38 logits in DeepFaune order) and check, with plain numpy decoding, that the detector finds and
the classifier names objects in freshly rendered synthetic scenes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from trapline.models.contracts import load_classifier_spec, load_detector_spec
from trapline.models.demo import synthetic
from trapline.models.demo.synthetic import (
    SPECIES,
    GroundTruthBox,
    letterbox,
    render_crop,
    render_scene,
)
from trapline.models.labels import DEEPFAUNE_LABELS, DETECTOR_CLASSES

DEMO = Path(synthetic.__file__).parent
DETECTOR = DEMO / "detector.onnx"
CLASSIFIER = DEMO / "classifier.onnx"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def detector() -> ort.InferenceSession:
    return _session(DETECTOR)


@pytest.fixture(scope="module")
def classifier() -> ort.InferenceSession:
    return _session(CLASSIFIER)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _best_detection(session: ort.InferenceSession, image: Image.Image) -> tuple[str, float, tuple]:
    """Best YOLOv5 row by objectness x class score, box mapped back to relative image coords."""
    canvas, r, left, top = letterbox(image, 320)
    x = canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    rows = session.run(["output"], {"images": x})[0][0]
    scores = rows[:, 4:5] * rows[:, 5:]
    k, c = np.unravel_index(np.argmax(scores), scores.shape)
    cx, cy, w, h = rows[k, :4]
    x0, y0 = (cx - w / 2 - left) / r, (cy - h / 2 - top) / r
    box = (x0 / image.width, y0 / image.height, w / r / image.width, h / r / image.height)
    return DETECTOR_CLASSES[c], float(scores[k, c]), box


def test_detector_onnx_has_the_megadetector_v5_contract(detector: ort.InferenceSession) -> None:
    (inp,) = detector.get_inputs()
    (out,) = detector.get_outputs()
    assert inp.name == "images" and inp.type == "tensor(float)"
    assert not isinstance(inp.shape[0], int) and inp.shape[1:] == [3, 320, 320]
    assert out.name == "output" and out.type == "tensor(float)"
    assert not isinstance(out.shape[0], int) and isinstance(out.shape[1], int) and out.shape[2] == 8
    rows = detector.run(None, {"images": np.full((2, 3, 320, 320), 114 / 255, np.float32)})[0]
    assert rows.dtype == np.float32 and rows.shape[0] == 2 and rows.shape[2] == 8
    assert rows.shape[1] == out.shape[1] >= 100
    assert ((rows[..., 4:] >= 0) & (rows[..., 4:] <= 1)).all()  # sigmoid objectness and classes
    assert (rows[..., 2:4] > 0).all()


def test_classifier_onnx_has_the_deepfaune_contract(classifier: ort.InferenceSession) -> None:
    (inp,) = classifier.get_inputs()
    (out,) = classifier.get_outputs()
    assert inp.name == "input" and inp.type == "tensor(float)"
    assert not isinstance(inp.shape[0], int) and inp.shape[1:] == [3, 182, 182]
    assert out.name == "logits" and out.type == "tensor(float)"
    assert out.shape[1] == len(DEEPFAUNE_LABELS) == 38
    logits = classifier.run(None, {"input": np.zeros((3, 3, 182, 182), np.float32)})[0]
    assert logits.dtype == np.float32 and logits.shape == (3, 38)


def test_sidecars_describe_the_demo_models() -> None:
    det = json.loads(DETECTOR.with_suffix(".json").read_text())
    assert det == {
        "name": "trapline-demo-detector",
        "version": "1",
        "input_size": 320,
        "layout": "yolov5",
        "classes": ["animal", "person", "vehicle"],
        "stride": 32,
        "note": "demo model trained on synthetic scenes; not MegaDetector",
    }
    cls = json.loads(CLASSIFIER.with_suffix(".json").read_text())
    assert cls["name"] == "trapline-demo-classifier" and cls["version"] == "1"
    assert cls["input_size"] == 182 and cls["labels"] == list(DEEPFAUNE_LABELS)
    assert cls["mean"] == [0.485, 0.456, 0.406] and cls["std"] == [0.229, 0.224, 0.225]
    assert cls["trained_labels"] == list(SPECIES)
    assert "not DeepFaune" in cls["note"]
    assert load_detector_spec(DETECTOR).input_size == 320
    assert load_classifier_spec(CLASSIFIER).trained_labels == SPECIES


def test_demo_models_are_small() -> None:
    assert DETECTOR.stat().st_size < 3_000_000
    assert CLASSIFIER.stat().st_size < 3_000_000


def test_detector_finds_the_object_in_fresh_scenes(detector: ort.InferenceSession) -> None:
    cases = [("animal", s, night) for s in SPECIES for night in (False, True)]
    cases += [
        ("person", None, False),
        ("person", None, True),
        ("vehicle", None, False),
        ("vehicle", None, True),
    ]
    hits = []
    for i, (kind, species, night) in enumerate(cases):
        rng = np.random.default_rng([2025, i])
        image, (truth,) = render_scene(rng, 1280, 960, kind, species=species, night=night)
        category, score, box = _best_detection(detector, image)
        hits.append(category == truth.category and score >= 0.3 and _iou(box, truth.bbox) > 0.5)
    assert np.mean(hits) >= 0.8, hits


def test_detector_stays_quiet_on_blank_scenes(detector: ort.InferenceSession) -> None:
    scores = []
    for i in range(8):
        image, boxes = render_scene(
            np.random.default_rng([7, i]), 1280, 960, "blank", night=i % 2 == 1
        )
        assert boxes == []
        scores.append(_best_detection(detector, image)[1])
    assert sum(s >= 0.5 for s in scores) <= 1, scores


def test_classifier_names_fresh_crops_day_and_night(classifier: ort.InferenceSession) -> None:
    crops, truth = [], []
    for i, species in enumerate(SPECIES):
        for night in (False, True):
            crops.append(
                np.asarray(render_crop(np.random.default_rng([31, i, night]), species, night=night))
            )
            truth.append(DEEPFAUNE_LABELS.index(species))
    x = (np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - MEAN) / STD
    logits = classifier.run(["logits"], {"input": x})[0]
    assert (logits.argmax(1) == np.array(truth)).mean() >= 0.85
    trained = [DEEPFAUNE_LABELS.index(s) for s in SPECIES]
    untrained = [i for i in range(len(DEEPFAUNE_LABELS)) if i not in trained]
    assert (logits[:, untrained].max(1) < logits[:, trained].max(1)).all()


def test_render_scene_is_deterministic_for_a_seed() -> None:
    a, boxes_a = render_scene(np.random.default_rng(5), 640, 480, "animal", "lynx", night=True)
    b, boxes_b = render_scene(np.random.default_rng(5), 640, 480, "animal", "lynx", night=True)
    c, _ = render_scene(np.random.default_rng(6), 640, 480, "animal", "lynx", night=True)
    assert a.tobytes() == b.tobytes() and boxes_a == boxes_b
    assert a.tobytes() != c.tobytes()
    (box,) = boxes_a
    assert isinstance(box, GroundTruthBox) and box.category == "animal" and box.species == "lynx"
    x, y, w, h = box.bbox
    assert 0 <= x and 0 <= y and x + w <= 1 + 1e-6 and y + h <= 1 + 1e-6 and w > 0.05


def test_render_scene_draws_big_frames_and_every_kind() -> None:
    image, boxes = render_scene(np.random.default_rng(1), 4000, 3000, "vehicle")
    assert image.size == (4000, 3000) and image.mode == "RGB"
    assert [b.category for b in boxes] == ["vehicle"] and boxes[0].species is None
    _, boxes = render_scene(np.random.default_rng(2), 800, 600, "person", n_objects=2)
    assert [b.category for b in boxes] == ["person", "person"]
    with pytest.raises(ValueError):
        render_scene(np.random.default_rng(3), 800, 600, "dragon")
