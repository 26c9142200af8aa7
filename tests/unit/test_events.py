"""Event grouping and DeepFaune's sequence voting rules."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from trapline.models.labels import DEEPFAUNE_LABELS
from trapline.pipelines.events import (
    HeldPhoto,
    SequenceItem,
    SequenceOptions,
    batch_end,
    build_events,
    group_sequences,
    last_sequences,
)
from trapline.pipelines.types import Detection

T0 = datetime(2024, 6, 1, 4, 0, 0, tzinfo=timezone.utc)
FOX = DEEPFAUNE_LABELS.index("fox")
BOAR = DEEPFAUNE_LABELS.index("wild boar")


def animal(logit_index: int | None, strength: float = 6.0, conf: float = 0.9) -> Detection:
    logits = None
    if logit_index is not None:
        logits = np.zeros(len(DEEPFAUNE_LABELS), np.float32)
        logits[logit_index] = strength
    return Detection("animal", conf, (0.1, 0.1, 0.2, 0.2), logits=logits)


def item(media_id: str, seconds: float | None, *detections: Detection, deployment: str = "d1"):
    when = None if seconds is None else T0 + timedelta(seconds=seconds)
    return SequenceItem(media_id, deployment, when, list(detections))


def test_frames_within_the_gap_are_one_event_per_deployment():
    items = [
        item("a", 0), item("b", 8), item("c", 15), item("d", 40),
        item("x", 1, deployment="d2"), item("y", None),
    ]  # fmt: skip
    groups = group_sequences(items, gap_seconds=10)
    ids = sorted(sorted(i.media_id for i in g) for g in groups)
    assert ids == [["a", "b", "c"], ["d"], ["x"], ["y"]]


def test_a_gap_of_exactly_gap_seconds_joins_and_one_microsecond_more_splits():
    joined = group_sequences([item("a", 0), item("b", 10)], gap_seconds=10)
    assert [[i.media_id for i in g] for g in joined] == [["a", "b"]]
    later = item("c", 10)
    later.timestamp += timedelta(microseconds=1)
    split = group_sequences([item("a", 0), later], gap_seconds=10)
    assert sorted([i.media_id for i in g] for g in split) == [["a"], ["c"]]


def test_event_label_is_the_mean_logit_vote_over_animal_frames():
    items = [item("a", 0, animal(FOX, 6)), item("b", 2, animal(BOAR, 3)), item("c", 4)]
    (event,) = build_events(items, DEEPFAUNE_LABELS, SequenceOptions(threshold=0.25))
    assert event.observation_type == "animal"
    assert event.label == "fox" and event.classified_frames == 2
    logits = np.zeros(38)
    logits[FOX], logits[BOAR] = 3.0, 1.5
    expected = np.exp(logits / 1.04) / np.exp(logits / 1.04).sum()
    assert event.probability == pytest.approx(expected[FOX], abs=1e-4)


def test_single_frame_uses_its_own_temperature_and_low_votes_are_undefined():
    (event,) = build_events([item("a", 0, animal(FOX, 2.0))], DEEPFAUNE_LABELS, SequenceOptions())
    logits = np.zeros(38)
    logits[FOX] = 2.0
    expected = (np.exp(logits / 1.10) / np.exp(logits / 1.10).sum())[FOX]
    assert event.probability == pytest.approx(expected, abs=1e-4)
    assert event.label == "undefined"  # well below 0.8


def test_people_and_vehicles_only_events_follow_the_frame_counts():
    person = Detection("person", 0.9, (0, 0, 0.1, 0.1))
    vehicle = Detection("vehicle", 0.9, (0, 0, 0.1, 0.1))
    tie = build_events(
        [item("a", 0, person), item("b", 1, vehicle)], DEEPFAUNE_LABELS, SequenceOptions()
    )
    more_cars = build_events(
        [item("a", 0, person), item("b", 1, vehicle), item("c", 2, vehicle)],
        DEEPFAUNE_LABELS,
        SequenceOptions(),
    )
    blank = build_events([item("a", 0), item("b", 1)], DEEPFAUNE_LABELS, SequenceOptions())
    assert tie[0].observation_type == "human"
    assert more_cars[0].observation_type == "vehicle"
    assert blank[0].observation_type == "blank" and blank[0].label is None


def test_event_ids_are_stable_across_runs_and_input_order():
    items = [item("a", 0, animal(FOX)), item("b", 3, animal(FOX)), item("c", 100)]
    first = {
        e.event_id: e.media_ids for e in build_events(items, DEEPFAUNE_LABELS, SequenceOptions())
    }
    again = {
        e.event_id: sorted(e.media_ids)
        for e in build_events(items[::-1], DEEPFAUNE_LABELS, SequenceOptions())
    }
    assert {k: sorted(v) for k, v in first.items()} == again


def test_last_sequences_are_each_deployments_final_event_only():
    items = [
        item("a", 0), item("b", 5), item("c", 30), item("d", 38),  # d1: last event is c, d
        item("x", 0, deployment="d2"),  # d2: one photo, its own last event
        item("n", None),  # no time: never held
    ]  # fmt: skip
    assert sorted(i.media_id for i in last_sequences(items, gap_seconds=10)) == ["c", "d", "x"]


def held(offset: int, deployment: str, second: int, arrived: float = 0.0) -> HeldPhoto:
    return HeldPhoto(
        offset, deployment, datetime(2024, 5, 1, 6, 0, second, tzinfo=timezone.utc), arrived
    )


def test_a_batch_ends_before_each_deployments_open_burst_and_never_inside_a_closed_one():
    """Deployments interleaved in one partition: cam-b's burst (offsets 0-4) is closed but
    spans offset 2, where cam-a's open burst starts. Ending at 1 would cut cam-b's burst in
    two events; the end steps back before it."""
    photos = [
        held(0, "cam-b", 0), held(1, "cam-b", 2), held(2, "cam-a", 30, arrived=9.5),
        held(3, "cam-b", 4), held(4, "cam-b", 6), held(5, "cam-a", 31, arrived=9.9),
    ]  # fmt: skip
    assert batch_end(photos, 5, gap_seconds=10, hold_s=1.0, now=10.0) == -1  # nothing yet
    assert batch_end(photos, 5, gap_seconds=10, hold_s=1.0, now=11.0) == 5  # all quiet
    assert batch_end(photos, 5, gap_seconds=10, hold_s=0.0, now=10.0) == 5  # hold off


def test_a_batch_ends_after_closed_bursts_of_every_deployment():
    photos = [
        held(0, "cam-a", 0), held(1, "cam-b", 0), held(2, "cam-a", 1), held(3, "cam-b", 1),
        held(4, "cam-a", 40, arrived=9.8), held(5, "cam-b", 50, arrived=9.9),
    ]  # fmt: skip
    # both deployments' first bursts are closed (a later photo exists 39 s on); the last ones open
    assert batch_end(photos, 5, gap_seconds=10, hold_s=1.0, now=10.0) == 3
