"""Letterbox, YOLO post-processing, NMS and the square crop rule."""

import numpy as np
import pytest
from PIL import Image

from trapline.models.yolo import nms, postprocess
from trapline.pipelines.classify import square_crop_box
from trapline.pipelines.letterbox import PAD_VALUE, Letterbox


@pytest.mark.parametrize(("w", "h"), [(4000, 3000), (3000, 4000), (1280, 1280), (1920, 1080)])
def test_letterbox_box_round_trip(w, h):
    box = Letterbox.fit(w, h, 320)
    relative = np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 1.0, 1.0]])
    back = box.to_relative(box.to_canvas(relative))
    np.testing.assert_allclose(back, relative, atol=1e-6)


def test_letterbox_centres_the_photo_on_grey_padding():
    box = Letterbox.fit(400, 300, 320)
    assert (box.scaled_w, box.scaled_h, box.pad_x, box.pad_y) == (320, 240, 0, 40)
    canvas = np.zeros((320, 320, 3), dtype=np.uint8)
    box.draw(Image.new("RGB", (400, 300), (10, 200, 30)), canvas)
    assert (canvas[:40] == PAD_VALUE).all() and (canvas[280:] == PAD_VALUE).all()
    assert tuple(canvas[160, 160]) == (10, 200, 30)


def test_boxes_in_the_padding_are_clipped_to_the_photo():
    box = Letterbox.fit(400, 300, 320)
    rel = box.to_relative(np.array([[-10.0, 0.0, 100.0, 100.0]]))
    assert rel[0, 0] == 0.0 and rel[0, 1] == 0.0
    assert rel[0, 3] == pytest.approx(60 / 240)


def test_nms_suppresses_overlaps_within_a_class_only():
    xyxy = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    classes = np.array([0, 0, 1, 0])
    assert nms(xyxy, scores, classes, 0.45).tolist() == [0, 2, 3]


def _yolov5_rows(rows):
    return np.asarray(rows, dtype=np.float32)[None]


def test_yolov5_layout_scores_are_objectness_times_class():
    raw = _yolov5_rows([[100, 100, 50, 40, 0.9, 0.1, 0.8, 0.05], [10, 10, 5, 5, 0.1, 0.9, 0, 0]])
    (boxes,) = postprocess(raw, "yolov5", conf_threshold=0.2, iou_threshold=0.45)
    assert boxes.classes.tolist() == [1]  # person: 0.9 x 0.8; the second row scores 0.09
    assert boxes.scores[0] == pytest.approx(0.72)
    np.testing.assert_allclose(boxes.xyxy[0], [75, 80, 125, 120])


def test_ultralytics_layout_has_no_objectness_and_is_transposed():
    rows = np.array([[100, 100, 50, 40, 0.1, 0.8, 0.05], [10, 10, 5, 5, 0.3, 0, 0]], np.float32)
    (boxes,) = postprocess(rows.T[None], "ultralytics", conf_threshold=0.2, iou_threshold=0.45)
    assert boxes.classes.tolist() == [1, 0]
    assert boxes.scores.tolist() == pytest.approx([0.8, 0.3])


def test_unknown_layout_is_an_error():
    with pytest.raises(ValueError, match="layout"):
        postprocess(np.zeros((1, 4, 8), np.float32), "detr", 0.2, 0.45)


def test_square_crop_extends_the_short_side_and_clips_at_the_border():
    # A wide box (200 x 100 px) in the middle of a 1000 x 800 image becomes 200 x 200.
    assert square_crop_box((0.4, 0.5, 0.2, 0.125), 1000, 800) == (400, 350, 600, 550)
    # A tall box at the left edge: widened to 300 but clipped at x = 0.
    left, top, right, bottom = square_crop_box((0.0, 0.0, 0.1, 0.375), 1000, 800)
    assert (left, top, bottom) == (0, 0, 300) and right == 200


def test_nms_keeps_a_person_beside_an_animal_when_boxes_reach_past_the_origin():
    """The class offset is the boxes' extent, not max + 1: with coordinates reaching far below
    zero, a max-based offset moved the animal box onto the person box of the next class."""
    xyxy = np.array([
        [-1000.0, -1000.0, 0.0, 0.0],  # animal (class 0), all of it past the origin
        [-990.0, -990.0, -5.0, -5.0],  # person (class 1) over it: max + 1 = 1 was its shift
        [-995.0, -995.0, -2.0, -2.0],  # animal again: suppressed by the first
    ], dtype=np.float32)  # fmt: skip
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    classes = np.array([0, 1, 0])
    assert nms(xyxy, scores, classes, 0.45).tolist() == [0, 1]


def test_nms_never_lets_classes_meet_for_any_coordinates():
    """Randomised: per-class NMS by hand equals the one-pass offset NMS, coordinates anywhere."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(1, 30))
        centre = rng.uniform(-5000, 5000, (n, 2))
        size = rng.uniform(1, 3000, (n, 2))
        xyxy = np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float32)
        scores = rng.permutation(n).astype(np.float32) / n
        classes = rng.integers(0, 4, n)
        expected = []
        for c in np.unique(classes):
            members = np.flatnonzero(classes == c)
            kept = nms(xyxy[members], scores[members], np.zeros(len(members), np.int64), 0.45)
            expected.extend(members[kept].tolist())
        got = nms(xyxy, scores, classes, 0.45).tolist()
        assert sorted(got) == sorted(expected)
        assert got == sorted(got, key=lambda i: -scores[i])
