"""Reference-behaviour switches (pipelines/fidelity.py): each changes pixels and boxes exactly as
upstream does, and the profiles set all three.

The upstream arithmetic is written out here from the upstream code, independently of ours:
YOLOv5's utils/augmentations.py `letterbox` (what MegaDetector's `PTDetector` calls; ultralytics'
`LetterBox` computes the same) and DeepFaune's detectTools.py `DetectorJSON.convertJSONboxToBox`
+ `cropSquareCVtoPIL`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trapline.models.contracts import ModelContractError
from trapline.models.onnx_backend import OnnxClassifier, OnnxDetector
from trapline.pipelines.classify import classify_frames, square_crop_box
from trapline.pipelines.decode import FULL_RESOLUTION, decode_image
from trapline.pipelines.detect import detect_frames
from trapline.pipelines.fidelity import PROFILES
from trapline.pipelines.flow import PhotoPipeline
from trapline.pipelines.letterbox import PAD_VALUE, Letterbox
from trapline.pipelines.types import Detection, Frame, MediaRef
from trapline.services.settings import Settings


def yolov5_letterbox(h: int, w: int, new_shape: int, stride: int, auto: bool):
    """YOLOv5 `letterbox(im, new_shape, auto=auto, scaleFill=False, scaleup=True, stride)`:
    returns (new_unpad_w, new_unpad_h, top, bottom, left, right), transcribed line by line."""
    r = min(new_shape / h, new_shape / w)
    new_unpad = int(round(w * r)), int(round(h * r))
    dw, dh = new_shape - new_unpad[0], new_shape - new_unpad[1]
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    dw /= 2
    dh /= 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    return new_unpad[0], new_unpad[1], top, bottom, left, right


def deepfaune_crop(image: np.ndarray, bbox) -> np.ndarray:
    """DeepFaune: `convertJSONboxToBox` (MegaDetector's relative box -> int pixels), then
    `cropSquareCVtoPIL` (square by int() growth, int() edges, clipped), transcribed."""
    height, width, _ = image.shape
    xmin = int(bbox[0] * width)
    ymin = int(bbox[1] * height)
    xmax = xmin + int(bbox[2] * width)
    ymax = ymin + int(bbox[3] * height)
    x1, y1, x2, y2 = xmin, ymin, xmax, ymax
    xsize, ysize = x2 - x1, y2 - y1
    if xsize > ysize:
        y1 = y1 - int((xsize - ysize) / 2)
        y2 = y2 + int((xsize - ysize) / 2)
    if ysize > xsize:
        x1 = x1 - int((ysize - xsize) / 2)
        x2 = x2 + int((ysize - xsize) / 2)
    return image[max(0, int(y1)) : min(int(y2), height), max(0, int(x1)) : min(int(x2), width)]


SHAPES = [  # (width, height, model side, stride)
    (4000, 3000, 1280, 64),  # MDv5 on a 12 MP 4:3 photo: 1280 x 960
    (3000, 4000, 1280, 64),
    (1920, 1080, 1280, 64),  # 16:9: 1280 x 720 + 48 -> 768
    (2048, 1536, 640, 32),
    (4032, 3024, 960, 32),  # MDv1000-sorrel
    (1001, 333, 640, 32),  # odd sizes: the odd padding pixel goes right / down
    (777, 1000, 640, 32),
    (1280, 1280, 1280, 64),
]


@pytest.mark.parametrize(("w", "h", "side", "stride"), SHAPES)
def test_rectangle_letterbox_is_yolov5_auto_letterbox(w, h, side, stride):
    box = Letterbox.fit_rectangle(w, h, side, stride)
    unpad_w, unpad_h, top, bottom, left, right = yolov5_letterbox(h, w, side, stride, auto=True)
    assert (box.scaled_w, box.scaled_h) == (unpad_w, unpad_h)
    assert (box.pad_x, box.pad_y) == (left, top)
    assert box.shape == (top + unpad_h + bottom, left + unpad_w + right)
    assert box.shape[0] % stride == 0 and box.shape[1] % stride == 0


@pytest.mark.parametrize(("w", "h", "side", "stride"), SHAPES)
def test_square_letterbox_is_yolov5_letterbox_without_auto(w, h, side, stride):
    box = Letterbox.fit(w, h, side)
    unpad_w, unpad_h, top, bottom, left, right = yolov5_letterbox(h, w, side, stride, auto=False)
    assert (box.scaled_w, box.scaled_h, box.pad_x, box.pad_y) == (unpad_w, unpad_h, left, top)
    assert box.shape == (side, side) == (top + unpad_h + bottom, left + unpad_w + right)


def test_a_4_3_photo_at_1280_is_fed_as_1280_by_960():
    assert Letterbox.fit_rectangle(4000, 3000, 1280, 64).shape == (960, 1280)
    assert Letterbox.fit(4000, 3000, 1280).shape == (1280, 1280)


def test_rectangle_canvas_pads_the_remainder_with_grey_and_boxes_map_back():
    box = Letterbox.fit_rectangle(1920, 1080, 1280, 64)  # 1280 x 720 in a 1280 x 768 canvas
    canvas = np.zeros((*box.shape, 3), dtype=np.uint8)
    box.draw(Image.new("RGB", (1920, 1080), (10, 200, 30)), canvas)
    assert (box.pad_y, box.scaled_h) == (24, 720)
    assert (canvas[:24] == PAD_VALUE).all() and (canvas[744:] == PAD_VALUE).all()
    assert (canvas[24:744] == (10, 200, 30)).all()
    relative = np.array([[0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_allclose(box.to_relative(box.to_canvas(relative)), relative, atol=1e-6)


BOXES = [  # relative boxes whose pixel edges fall on .5 and .7 fractions
    (0.1235, 0.2345, 0.3005, 0.1507),  # 1000 x 800: x 123.5, w 300.5, y 187.6, h 120.56
    (0.4567, 0.0009, 0.0897, 0.4509),  # tall, grows sideways; y near the top edge
    (0.0007, 0.5, 0.2, 0.1),  # wide at the left border, grows past nothing
    (0.9, 0.9, 0.0997, 0.0995),  # bottom-right corner, clipped
]


@pytest.mark.parametrize("bbox", BOXES)
def test_truncated_crop_holds_the_pixels_deepfaune_crops(bbox):
    pixels = np.random.default_rng(0).integers(0, 256, (800, 1000, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    ours = np.asarray(image.crop(square_crop_box(bbox, 1000, 800, "truncate")))
    np.testing.assert_array_equal(ours, deepfaune_crop(pixels, bbox))


def test_truncation_and_rounding_differ_on_half_and_point_seven_pixels():
    bbox = BOXES[0]
    assert square_crop_box(bbox, 1000, 800, "truncate") == (123, 97, 423, 397)
    # round: left 123.5 -> 124, grown top 187.6 - 89.97 = 97.63 -> 98, bottom 398.13 -> 398
    assert square_crop_box(bbox, 1000, 800, "round") == (124, 98, 424, 398)


@pytest.fixture(scope="module")
def demo() -> tuple[OnnxDetector, OnnxClassifier]:
    settings = Settings()
    return OnnxDetector(settings.detector_model), OnnxClassifier(settings.classifier_model)


def test_profiles_set_every_switch_and_a_switch_overrides_its_profile():
    fast, reference = Settings(), Settings(profile="reference")
    assert fast.profile == "fast"  # the default: today's behaviour
    assert (fast.letterbox, fast.crop_rounding, fast.full_resolution) == ("square", "round", False)
    assert (reference.letterbox, reference.crop_rounding, reference.full_resolution) == (
        "rectangle",
        "truncate",
        True,
    )
    assert set(PROFILES) == {"fast", "reference"}
    mixed = Settings(profile="reference", letterbox="square")
    assert (mixed.letterbox, mixed.crop_rounding, mixed.full_resolution) == (
        "square",
        "truncate",
        True,
    )


def test_rectangle_on_a_fixed_size_detector_is_refused_naming_model_and_fix(demo):
    detector, classifier = demo
    assert detector.dynamic_input is False  # the demo detector's input is fixed at 320 x 320
    with pytest.raises(
        ModelContractError, match="trapline-demo-detector.*dynamic height and width"
    ):
        PhotoPipeline(Settings(profile="reference").stage_options(), detector, classifier)
    frame = _frame(Image.new("RGB", (400, 300)))
    with pytest.raises(ModelContractError, match="letterbox: square"):
        detect_frames([frame], detector, 0.2, 0.45, "rectangle")


def _frame(image: Image.Image) -> Frame:
    ref = MediaRef(uri="memory://photo.jpg", deployment_id="d")
    return Frame(ref, "m", "s", image, image.width, image.height, None, None, None, 0)


def _jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(1)
    small = Image.fromarray(rng.integers(0, 256, (height // 50, width // 50, 3), dtype=np.uint8))
    out = io.BytesIO()
    small.resize((width, height), Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
    return out.getvalue()


class _Recording:
    """The real classifier, remembering the crops it was sent."""

    def __init__(self, model: OnnxClassifier):
        self.model, self.spec, self.batches = model, model.spec, []

    def classify(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.copy())
        return self.model.classify(batch)


def test_full_resolution_frames_and_crops_are_the_full_decode(demo):
    detector, classifier = demo
    data = _jpeg(2000, 1500)
    ref = MediaRef(uri="memory://photo.jpg", deployment_id="d")
    reduced = PhotoPipeline(Settings().stage_options(), detector, classifier)._frames(ref, data)[0]
    assert reduced.image.size == (1000, 750)  # DCT 1/2: the long side still >= 640
    full = PhotoPipeline(Settings(full_resolution=True).stage_options(), detector, classifier)
    assert full.decode_long_side == FULL_RESOLUTION
    frame = full._frames(ref, data)[0]
    whole = Image.open(io.BytesIO(data)).convert("RGB")  # a plain full decode
    assert frame.image.size == (2000, 1500)
    np.testing.assert_array_equal(np.asarray(frame.image), np.asarray(whole))

    detection = Detection("animal", 0.9, (0.2345, 0.3107, 0.2015, 0.1234))
    recording = _Recording(classifier)
    classify_frames([frame], [[detection]], recording, 0.8, 10, crop_rounding="truncate")
    side = classifier.spec.input_size
    expected = whole.crop(square_crop_box(detection.bbox, 2000, 1500, "truncate"))
    expected = expected.resize((side, side), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(recording.batches[0][0], np.asarray(expected))


def test_full_resolution_decode_is_never_reduced():
    decoded = decode_image(_jpeg(2400, 1800), min_long_side=FULL_RESOLUTION, max_pixels=10**8)
    assert decoded.image.size == (2400, 1800)


@pytest.fixture(scope="module")
def dynamic_detector(tmp_path_factory) -> Path:
    """A tiny YOLOv5 P6 (MegaDetector v5's architecture) exported with dynamic H and W, as
    YOLOv5's `export.py --dynamic` does."""
    torch = pytest.importorskip("torch", reason="needs the [import] extra (torch)")
    from trapline.models.importers.megadetector import _FirstOutput
    from trapline.models.importers.yolov5_arch import TINY_P6, build_yolov5

    torch.manual_seed(0)
    model = _FirstOutput(build_yolov5(TINY_P6).float().eval())
    path = tmp_path_factory.mktemp("dyn") / "md_dynamic.onnx"
    torch.onnx.export(
        model, (torch.zeros(1, 3, 256, 256),), str(path), dynamo=False,
        input_names=["images"], output_names=["output"], opset_version=17,
        dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                      "output": {0: "batch", 1: "rows"}},
    )  # fmt: skip
    sidecar = {"name": "md-tiny-dynamic", "version": "5a.test", "input_size": 256,
               "layout": "yolov5", "stride": 64}  # fmt: skip
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


class _Shapes:
    """The real detector, remembering the batch shapes it was sent."""

    def __init__(self, model: OnnxDetector):
        self.model, self.spec, self.dynamic_input, self.shapes = model, model.spec, True, []

    def detect(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape)
        return self.model.detect(batch)


def test_rectangle_feeds_a_dynamic_detector_the_yolov5_canvas_and_maps_boxes_back(
    dynamic_detector,
):
    from trapline.models.yolo import postprocess

    detector = OnnxDetector(dynamic_detector)
    assert detector.dynamic_input is True
    rng = np.random.default_rng(3)
    wide = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    tall = Image.fromarray(rng.integers(0, 256, (400, 300, 3), dtype=np.uint8))
    shapes = _Shapes(detector)
    found = detect_frames(
        [_frame(wide), _frame(tall), _frame(wide)], shapes, 0.005, 0.45, "rectangle"
    )
    # Two canvas shapes, two calls: the 4:3 pair as 256 x 192, the 3:4 photo as 192 x 256.
    assert sorted(shapes.shapes) == [(1, 256, 192, 3), (2, 192, 256, 3)]

    # The same photo through the upstream formula and the model, boxes mapped as upstream does.
    unpad_w, unpad_h, top, bottom, left, right = yolov5_letterbox(300, 400, 256, 64, auto=True)
    canvas = np.full((top + unpad_h + bottom, left + unpad_w + right, 3), PAD_VALUE, np.uint8)
    canvas[top : top + unpad_h, left : left + unpad_w] = np.asarray(
        wide.resize((unpad_w, unpad_h), Image.Resampling.BILINEAR)
    )
    nchw = canvas[None].transpose(0, 3, 1, 2).astype(np.float32) * (1 / 255)
    raw = detector._model.session.run(None, {"images": nchw})
    (kept,) = postprocess(raw[0].astype(np.float32), "yolov5", 0.005, 0.45)
    assert len(kept.scores) > 0 and len(found[0]) == len(kept.scores)
    gain = unpad_w / 400  # YOLOv5 scale_boxes: (xyxy - pad) / gain, clipped, then / photo size
    x1 = np.clip((kept.xyxy[:, 0] - left) / gain, 0, 400) / 400
    y1 = np.clip((kept.xyxy[:, 1] - top) / gain, 0, 300) / 300
    ours = np.array([d.bbox[:2] for d in found[0]])
    np.testing.assert_allclose(ours, np.stack([x1, y1], axis=1), atol=1e-4)
    assert [d.bbox for d in found[0]] == [d.bbox for d in found[2]]


def test_reference_profile_runs_end_to_end_on_a_dynamic_detector(dynamic_detector, demo, tmp_path):
    _, classifier = demo
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(_jpeg(1600, 1200))
    pipeline = PhotoPipeline(
        Settings(profile="reference").stage_options(), OnnxDetector(dynamic_detector), classifier
    )
    out = pipeline.process([MediaRef(uri=str(photo), deployment_id="d")])
    assert not out.failures and len(out.results) == 1
    assert (out.results[0].width, out.results[0].height) == (1600, 1200)
