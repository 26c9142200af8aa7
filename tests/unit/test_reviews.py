"""The reviews table: append-only Delta rows, labels in the tables' vocabulary, latest wins."""

import threading
from datetime import datetime, timedelta, timezone

import pytest
from deltalake import DeltaTable

from trapline.pipelines.readers import read_table
from trapline.pipelines.reviews import (
    append_reviews,
    label_names,
    latest_reviews,
    read_reviews,
    resolve_label,
    reviewed_events,
)
from trapline.pipelines.tables import REVIEWS, TABLES

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)


def event_review(event_id: str, label: str, **extra) -> dict:
    return {"target": "event", "event_id": event_id, "deployment_id": "cam-1", "label": label,
            **extra}  # fmt: skip


def test_append_writes_a_delta_table_with_every_field_filled(tmp_path):
    root = str(tmp_path)
    ids = append_reviews(
        root,
        [
            event_review(
                "e1",
                "Vulpes vulpes",
                machine_label="badger",
                machine_probability=0.83,
                count=2,
                comment="  two foxes  ",
            ),  # fmt: skip
            event_review("e2", "blank", machine_label="fox", machine_probability=0.51),
            {
                "target": "observation",
                "event_id": "e3",
                "observation_id": "m9-0",
                "deployment_id": "cam-2",
                "label": "red deer",
                "machine_label": "red deer",
                "machine_probability": 0.97,
                "count": 1,
            },  # fmt: skip
        ],
        reviewer="ana",
        now=T0,
    )
    assert len(ids) == 3 and len(set(ids)) == 3
    assert TABLES["reviews"] is REVIEWS
    table = DeltaTable(str(tmp_path / "reviews"))  # a plain Delta table any reader opens
    assert table.version() == 1  # created (0), then one commit for the three rows
    rows = {r["event_id"]: r for r in read_table(root, "reviews").to_pylist()}
    fox = rows["e1"]
    assert fox["reviewer"] == "ana" and fox["reviewed_at"] == T0
    assert (fox["label"], fox["scientific_name"], fox["taxon_rank"]) == (
        "fox", "Vulpes vulpes", "species"
    )  # fmt: skip
    assert (fox["machine_label"], round(fox["machine_probability"], 2)) == ("badger", 0.83)
    assert fox["observation_type"] == "animal" and fox["count"] == 2 and not fox["accepted"]
    assert fox["comment"] == "two foxes" and fox["observation_id"] is None
    blank = rows["e2"]
    assert blank["observation_type"] == "blank" and blank["count"] == 0
    assert blank["scientific_name"] is None
    deer = rows["e3"]
    assert deer["target"] == "observation" and deer["observation_id"] == "m9-0"
    assert deer["accepted"] and deer["deployment_id"] == "cam-2"
    folders = sorted(p.parent.name for p in (tmp_path / "reviews").rglob("*.parquet"))
    assert folders == ["deployment_id=cam-1", "deployment_id=cam-2"]


def test_a_later_review_of_the_same_item_wins_and_the_history_stays(tmp_path):
    root = str(tmp_path)
    append_reviews(root, [event_review("e1", "fox"), event_review("e2", "wolf")], "ana", now=T0)
    append_reviews(root, [event_review("e1", "badger")], "ben", now=T0 + timedelta(minutes=5))
    # An observation review of a box in e1 is its own item: it does not replace the event's.
    append_reviews(
        root,
        [
            {
                "target": "observation",
                "event_id": "e1",
                "observation_id": "m1-0",
                "deployment_id": "cam-1",
                "label": "person",
            }
        ],  # fmt: skip
        "ana",
        now=T0 + timedelta(minutes=6),
    )
    assert read_reviews(root).num_rows == 4
    latest = latest_reviews(root)
    assert latest.schema.equals(REVIEWS)
    by_item = {(r["target"], r["observation_id"] or r["event_id"]): r for r in latest.to_pylist()}
    assert set(by_item) == {("event", "e1"), ("event", "e2"), ("observation", "m1-0")}
    assert by_item[("event", "e1")]["label"] == "badger"
    assert by_item[("event", "e1")]["reviewer"] == "ben"
    assert by_item[("observation", "m1-0")]["observation_type"] == "human"
    events = reviewed_events(root)
    assert {k: v["label"] for k, v in events.items()} == {"e1": "badger", "e2": "wolf"}
    # Same item twice in one batch: the later row wins. The commit order decides, not the
    # times: a review saved late wins even with an earlier time (no clock is trusted).
    earlier = T0 - timedelta(minutes=1)
    append_reviews(
        root, [event_review("e2", "lynx"), event_review("e2", "otter")], "ana", now=earlier
    )
    assert reviewed_events(root)["e2"]["label"] == "otter"


def test_reading_before_anyone_reviewed_gives_empty_tables(tmp_path):
    assert latest_reviews(str(tmp_path)).num_rows == 0
    assert latest_reviews(str(tmp_path)).schema.equals(REVIEWS)
    assert reviewed_events(str(tmp_path)) == {}


def test_reviews_filter_by_deployment(tmp_path):
    root = str(tmp_path)
    other = {**event_review("e9", "fox"), "deployment_id": "cam-9"}
    append_reviews(root, [event_review("e1", "wolf"), other], "ana", now=T0)
    assert latest_reviews(root, ["cam-9"])["event_id"].to_pylist() == ["e9"]
    assert read_reviews(root, []).num_rows == 0


def test_incomplete_rows_are_refused_with_the_row_named(tmp_path):
    root = str(tmp_path)
    with pytest.raises(ValueError, match="reviewer"):
        append_reviews(root, [event_review("e1", "fox")], reviewer=" ")
    with pytest.raises(ValueError, match=r"row 1 .*label is missing"):
        append_reviews(root, [event_review("e1", "fox"), event_review("e2", "")], "ana")
    with pytest.raises(ValueError, match="observation_id"):
        append_reviews(root, [{**event_review("e1", "fox"), "target": "observation"}], "ana")
    with pytest.raises(ValueError, match="count"):
        append_reviews(root, [event_review("e1", "fox", count=-1)], "ana")
    with pytest.raises(ValueError, match="target"):
        append_reviews(root, [{**event_review("e1", "fox"), "target": "media"}], "ana")
    assert read_reviews(root).num_rows == 0  # nothing half-written


def test_labels_resolve_to_the_tables_vocabulary():
    assert resolve_label("Cervus elaphus").label == "red deer"
    assert resolve_label("  Red   Deer ").label == "red deer"
    family = resolve_label("cervidae")
    assert (family.label, family.taxon_rank, family.observation_type) == (
        "Cervidae", "family", "animal"
    )  # fmt: skip
    assert resolve_label("Human").observation_type == "human"
    assert resolve_label("human").label == "person"
    assert resolve_label("vehicle").scientific_name is None
    unknown = resolve_label("Vulpes lagopus")
    assert (unknown.label, unknown.scientific_name, unknown.taxon_rank) == (
        "Vulpes lagopus", "Vulpes lagopus", None
    )  # fmt: skip
    with pytest.raises(ValueError):
        resolve_label("   ")


def test_search_names_hold_the_classifier_labels_and_the_taxonomy():
    names = {n.label: n for n in label_names()}
    assert {"blank", "person", "vehicle", "fox", "wild boar", "Cervidae", "Mammalia"} <= set(names)
    assert names["fox"].source == "classifier" and names["fox"].scientific_name == "Vulpes vulpes"
    assert names["Carnivora"].source == "taxonomy" and names["Carnivora"].rank == "order"
    assert "Vulpes vulpes" not in names  # found through its label, not listed twice


def test_two_reviewers_saving_at_once_both_land(tmp_path):
    root = str(tmp_path)
    append_reviews(root, [event_review("e0", "fox")], "setup", now=T0)  # table exists
    errors = []

    def save(name: str) -> None:
        try:
            for i in range(3):
                append_reviews(root, [event_review(f"{name}{i}", "wolf")], name)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=save, args=(n,)) for n in ("ana", "ben")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert read_reviews(root).num_rows == 7


def test_the_review_committed_last_wins_whatever_the_servers_clocks_say(tmp_path):
    """'Latest wins' was decided by each server's wall clock (one API replica's clock an hour
    ahead won over every later review), and equal times by a random id."""
    root = str(tmp_path)
    ahead = T0 + timedelta(hours=1)
    append_reviews(root, [event_review("e1", "fox")], "ana", now=ahead)  # a fast clock
    append_reviews(root, [event_review("e1", "wolf")], "ben", now=T0)  # committed later
    append_reviews(root, [event_review("e2", "badger")], "ana", now=T0)
    append_reviews(root, [event_review("e2", "marmot")], "ben", now=T0)  # the same instant
    latest = {r["event_id"]: r["label"] for r in latest_reviews(root).to_pylist()}
    assert latest == {"e1": "wolf", "e2": "marmot"}
    history = [r["label"] for r in read_reviews(root).to_pylist()]
    assert history == ["fox", "wolf", "badger", "marmot"]  # commit order
