"""Post-processing on constructed detections: static boxes, roll-up, geofence, smoothing.

Each test builds MediaResults by hand and runs them through `assemble`, so the rows checked are
the ones a run writes; the probabilities are set through the logits the classifier would give.
"""

import csv
from datetime import datetime, timedelta

import numpy as np
import pytest

from trapline.models.labels import DEEPFAUNE_LABELS, SCIENTIFIC_NAMES
from trapline.pipelines.classify import UNDEFINED
from trapline.pipelines.flow import assemble
from trapline.pipelines.postprocess.countries import country_at
from trapline.pipelines.postprocess.geofence import read_geofence
from trapline.pipelines.postprocess.taxonomy import read_taxonomy
from trapline.pipelines.tables import TABLES, ModelNames
from trapline.pipelines.types import Detection, MediaRef, MediaResult
from trapline.services.settings import Settings

MODELS = ModelNames("det", "1", "cls", "1")
START = datetime(2024, 5, 1, 6, 0, 0)


def animal(bbox, threshold=0.8, **probabilities: float) -> Detection:
    """A classified animal box whose softmax gives `probabilities` (rest spread evenly)."""
    names = {name.replace("_", " "): p for name, p in probabilities.items()}
    rest = (1.0 - sum(names.values())) / (len(DEEPFAUNE_LABELS) - len(names))
    p = np.array([names.get(label, rest) for label in DEEPFAUNE_LABELS])
    order = np.argsort(-p)
    best = DEEPFAUNE_LABELS[order[0]]
    return Detection(
        "animal", 0.9, bbox,
        best if p[order[0]] >= threshold else UNDEFINED, round(float(p[order[0]]), 4),
        [DEEPFAUNE_LABELS[i] for i in order[:3]], [round(float(p[i]), 4) for i in order[:3]],
        np.log(p).astype(np.float32),
    )  # fmt: skip


def photo(media_id: str, when: datetime | None, *detections: Detection, deployment="d1"):
    ref = MediaRef(uri=f"/photos/{deployment}/{media_id}.jpg", deployment_id=deployment)
    return MediaResult(ref, media_id, media_id, 4000, 3000, when, None, None, 1, list(detections))


def run(results, **settings):
    tables = assemble(results, [], Settings(**settings).stage_options(), MODELS, DEEPFAUNE_LABELS)
    for name, table in tables.as_dict().items():
        assert table.schema.equals(TABLES[name]), name
    return tables


def rows_by_media(table) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        rows.setdefault(row["media_id"], []).append(row)
    return rows


@pytest.fixture
def deployments(tmp_path):
    path = tmp_path / "deployments.csv"
    path.write_text(
        "deployment_id,latitude,longitude,country,utc_offset\n"
        "fr,44.96,5.48,FR,+02:00\n"
        "no,69.65,18.96,NO,+01:00\n"
        "fr-coords,45.76,4.84,,+02:00\n"
    )
    return str(path)


def test_a_box_fixed_for_50_frames_over_3_days_is_static_and_a_moving_animal_is_not():
    rock = (0.10, 0.70, 0.08, 0.06)
    results = []
    for i in range(50):
        when = START + timedelta(hours=1.5 * i)  # 50 frames over 3 days
        jitter = 0.001 * (i % 3)  # the detector's boxes wobble a little
        moving = (0.05 + 0.015 * i, 0.2, 0.2, 0.25)  # an animal walking across the frames
        results.append(
            photo(f"p{i:02d}", when,
                  animal((rock[0] + jitter, rock[1], rock[2], rock[3]), fox=0.9),
                  animal(moving, roe_deer=0.95))
        )  # fmt: skip
    tables = run(results)
    observations = tables.observations.to_pylist()
    static = [o for o in observations if o["is_static"]]
    assert len(static) == 50 and all(o["classifier_label"] == "fox" for o in static)
    assert all(o["label"] is None and o["label_source"] is None for o in static)
    assert len({o["static_group"] for o in static}) == 1
    moving = [o for o in observations if not o["is_static"]]
    assert len(moving) == 50 and {o["label"] for o in moving} == {"roe deer"}
    media = tables.media.to_pylist()
    assert all(m["animal_count"] == 1 and m["static_count"] == 1 for m in media)
    assert "fox" not in {e["label"] for e in tables.events.to_pylist()}


def test_a_short_burst_at_one_place_is_an_animal_bedded_down_not_scenery():
    results = [
        photo(f"b{i:02d}", START + timedelta(seconds=30 * i), animal((0.4, 0.4, 0.1, 0.1), fox=0.9))
        for i in range(40)
    ]  # 40 frames, same place, 20 minutes
    observations = run(results).observations.to_pylist()
    assert not any(o["is_static"] for o in observations)
    assert {o["label"] for o in observations} == {"fox"}


def test_red_deer_045_and_roe_deer_040_roll_up_to_cervidae():
    tables = run([photo("a", START, animal((0.1, 0.1, 0.3, 0.3), red_deer=0.45, roe_deer=0.40))])
    (row,) = tables.observations.to_pylist()
    assert row["classifier_label"] == UNDEFINED
    assert (row["label"], row["scientific_name"], row["taxon_rank"]) == (
        "Cervidae",
        "Cervidae",
        "family",
    )
    assert row["label_source"] == "rollup"
    # 0.85 from the two, plus the little the other three deer classes hold
    assert 0.85 <= row["label_probability"] < 0.87
    assert "red deer 0.45 + roe deer 0.40" in row["rule"]


def test_roll_up_stops_at_the_first_rank_that_reaches_the_threshold():
    # wolf + golden jackal share the genus Canis: genus, not family
    tables = run([photo("a", START, animal((0.1, 0.1, 0.3, 0.3), wolf=0.5, golden_jackal=0.35))])
    (row,) = tables.observations.to_pylist()
    assert (row["label"], row["taxon_rank"]) == ("Canis", "genus")
    # a bird or a mammal: no ancestor reaches 0.8, not even a class; the box stays undefined
    tables = run(
        [photo("b", START, animal((0.1, 0.1, 0.3, 0.3), bird=0.4, fox=0.3, roe_deer=0.15))]
    )
    (row,) = tables.observations.to_pylist()
    assert row["label"] == UNDEFINED and row["label_source"] == "classifier" and row["rule"] is None


def test_a_reindeer_at_a_french_deployment_is_blocked_and_rolled_up(deployments):
    results = [
        photo("fr1", START, animal((0.1, 0.1, 0.3, 0.3), reindeer=0.9, red_deer=0.05), deployment="fr"),
        photo("no1", START, animal((0.1, 0.1, 0.3, 0.3), reindeer=0.9, red_deer=0.05), deployment="no"),
        photo("xy1", START, animal((0.1, 0.1, 0.3, 0.3), reindeer=0.9), deployment="fr-coords"),
    ]  # fmt: skip
    tables = run(results, deployments_file=deployments)
    rows = {r["media_id"]: r for r in tables.observations.to_pylist()}
    fenced = rows["fr1"]
    assert fenced["classifier_label"] == "reindeer"
    assert (fenced["label"], fenced["taxon_rank"], fenced["label_source"]) == (
        "Cervidae",
        "family",
        "geofence",
    )
    assert "Rangifer tarandus allowed only in" in fenced["rule"] and "FR" in fenced["rule"]
    assert fenced["label_probability"] >= 0.95 - 1e-3  # reindeer + red deer + the other deer
    assert rows["no1"]["label"] == "reindeer" and rows["no1"]["rule"] is None
    assert rows["xy1"]["label"] == "Cervidae"  # no country column: Lyon's coordinates say FR
    events = {e["event_id"]: e for e in tables.events.to_pylist()}
    media = {m["media_id"]: m for m in tables.media.to_pylist()}
    event = events[media["fr1"]["event_id"]]
    assert (event["label"], event["vote_label"], event["label_source"]) == (
        "Cervidae",
        "reindeer",
        "geofence",
    )


def test_geofence_switched_off_keeps_the_reindeer(deployments):
    result = photo("fr1", START, animal((0.1, 0.1, 0.3, 0.3), reindeer=0.9), deployment="fr")
    (row,) = run(
        [result], deployments_file=deployments, geofence_enabled=False
    ).observations.to_pylist()
    assert row["label"] == "reindeer" and row["label_source"] == "classifier"


def test_five_frames_four_fox_one_cat_give_fox_to_all_from_the_sequence():
    results = [
        photo(
            f"s{i}", START + timedelta(seconds=2 * i), animal((0.3, 0.3, 0.2, 0.2), **{kind: 0.95})
        )
        for i, kind in enumerate(["fox", "fox", "cat", "fox", "fox"])
    ]
    tables = run(results)
    observations = tables.observations.to_pylist()
    assert [o["label"] for o in observations] == ["fox"] * 5
    assert {o["label_source"] for o in observations} == {"sequence"}
    (changed,) = [o for o in observations if o["classifier_label"] == "cat"]
    assert "was cat" in changed["rule"]
    (event,) = tables.events.to_pylist()
    assert event["label"] == "fox" and event["label_source"] == "sequence"


def test_a_second_species_seen_twice_in_a_sequence_is_kept():
    kinds = ["fox", "fox", "badger", "fox", "badger", "fox"]
    results = [
        photo(
            f"s{i}", START + timedelta(seconds=2 * i), animal((0.3, 0.3, 0.2, 0.2), **{kind: 0.95})
        )
        for i, kind in enumerate(kinds)
    ]
    labels = [o["label"] for o in run(results).observations.to_pylist()]
    assert labels == kinds


def test_a_second_species_beside_the_events_species_in_one_photo_is_kept():
    results = [
        photo("f1", START, animal((0.1, 0.3, 0.2, 0.2), fox=0.97)),
        photo("f2", START + timedelta(seconds=2), animal((0.2, 0.3, 0.2, 0.2), fox=0.97),
              animal((0.6, 0.3, 0.2, 0.2), wild_boar=0.9)),
        photo("f3", START + timedelta(seconds=4), animal((0.3, 0.3, 0.2, 0.2), fox=0.97)),
    ]  # fmt: skip
    rows = run(results).observations.to_pylist()
    assert [r["label"] for r in rows] == ["fox", "fox", "wild boar", "fox"]
    assert [r["label_source"] for r in rows] == ["sequence", "sequence", "classifier", "sequence"]


def test_a_photo_of_a_herd_relabels_its_odd_box_and_its_undefined_box():
    tables = run([
        photo("herd", START,
              animal((0.0, 0.1, 0.1, 0.1), red_deer=0.9),
              animal((0.2, 0.1, 0.1, 0.1), red_deer=0.9),
              animal((0.4, 0.1, 0.1, 0.1), red_deer=0.85),
              animal((0.6, 0.1, 0.1, 0.1), fallow_deer=0.85),
              animal((0.8, 0.1, 0.1, 0.1), red_deer=0.5, wolf=0.2))
    ])  # fmt: skip
    rows = tables.observations.to_pylist()
    assert [r["label"] for r in rows] == ["red deer"] * 5
    assert [r["label_source"] for r in rows] == ["classifier"] * 3 + ["image"] * 2


def test_postprocessing_switched_off_gives_the_classifier_answers():
    rock = (0.10, 0.70, 0.08, 0.06)
    results = [
        photo(f"p{i:02d}", START + timedelta(hours=2 * i), animal(rock, fox=0.9)) for i in range(30)
    ]
    results.append(photo("u", START, animal((0.5, 0.5, 0.2, 0.2), red_deer=0.45, roe_deer=0.40)))
    rows = run(results, postprocess_enabled=False).observations.to_pylist()
    assert not any(r["is_static"] for r in rows)
    assert {r["label"] for r in rows} == {"fox", UNDEFINED}
    assert {r["label_source"] for r in rows} == {"classifier"}


def test_the_taxonomy_covers_every_deepfaune_class_with_its_scientific_name():
    taxonomy = read_taxonomy()
    taxonomy.check_labels(DEEPFAUNE_LABELS)
    for label in DEEPFAUNE_LABELS:
        assert taxonomy.by_label[label].scientific_name == SCIENTIFIC_NAMES[label], label
    assert taxonomy.rank_of("mustelid") == "family" and taxonomy.within("badger", "Mustelidae")
    assert taxonomy.rank_of("bird") == "class" and taxonomy.within("red deer", "Mammalia")


def test_bad_rule_files_are_refused_with_the_row(tmp_path):
    bad = tmp_path / "fence.csv"
    bad.write_text("taxon,rule,countries,source\nRangifer tarandus,allow,France,x\n")
    with pytest.raises(ValueError, match="row 2.*ISO alpha-2"):
        read_geofence(bad)
    wrong_rank = tmp_path / "taxa.csv"
    wrong_rank.write_text(
        "label,scientific_name,rank,class,order,family,genus,species\n"
        "fox,Vulpes vulpes,genus,Mammalia,Carnivora,Canidae,Vulpes,Vulpes vulpes\n"
    )
    with pytest.raises(ValueError, match="row 2: 'fox' is a genus"):
        read_taxonomy(wrong_rank)


def test_country_from_coordinates_is_offline_and_says_none_at_sea():
    assert country_at(44.96, 5.48) == "FR"
    assert country_at(46.50, 6.12) == "CH"
    assert country_at(60.17, 24.94) == "FI"
    assert country_at(45.0, -30.0) is None  # the Atlantic


def test_the_static_report_lists_each_suppressed_place_with_its_period_and_examples(tmp_path):
    from typer.testing import CliRunner

    from trapline.services.cli.main import app
    from trapline.services.run.folder import write_tables

    rock = (0.10, 0.70, 0.08, 0.06)
    results = [
        photo(f"p{i:02d}", START + timedelta(hours=2 * i), animal(rock, fox=0.9)) for i in range(30)
    ]
    results.append(photo("deer", START, animal((0.5, 0.3, 0.3, 0.3), red_deer=0.95)))
    write_tables(run(results), str(tmp_path / "results"), Settings())
    out = tmp_path / "static.csv"
    done = CliRunner().invoke(
        app, ["postprocess-report", str(tmp_path / "results"), "--csv", str(out)]
    )
    assert done.exit_code == 0, done.output
    (row,) = list(csv.DictReader(out.open()))
    assert (row["deployment_id"], row["category"], row["photos"]) == ("d1", "animal", "30")
    assert row["first"].startswith("2024-05-01") and row["last"].startswith("2024-05-03")
    assert row["classifier_labels"] == "fox:30"
    assert row["examples"].split() == [
        "/photos/d1/p00.jpg",
        "/photos/d1/p14.jpg",
        "/photos/d1/p29.jpg",
    ]


def test_an_undefined_event_vote_counts_frames_not_boxes():
    """One vote per frame: three foxes in one photo do not outvote three frames of cat."""
    from trapline.pipelines.postprocess.decision import Decision
    from trapline.pipelines.postprocess.options import PostprocessOptions
    from trapline.pipelines.postprocess.smoothing import majority_vote

    def box(label: str) -> Decision:
        return Decision(label, 0.95, "classifier")

    frames = [[box("fox"), box("fox"), box("fox")], [box("cat")], [box("cat")], [box("cat")]]
    vote = Decision(UNDEFINED, 0.6, "sequence")
    majority_vote(vote, frames, 4, PostprocessOptions())
    assert vote.label == "cat" and "cat in 3 of 4 frames" in vote.rule
    # Two classes each in a majority of frames (both in every frame) is no majority.
    vote = Decision(UNDEFINED, 0.6, "sequence")
    majority_vote(vote, [[box("fox"), box("cat")]] * 3, 3, PostprocessOptions())
    assert vote.label == UNDEFINED


def test_a_herd_of_foxes_in_one_photo_does_not_take_an_event_of_cats():
    """End to end: the event's own vote is undefined (cat, fox and badger frames); the
    fallback gives it to cat, seen in 3 of 5 frames, not to fox, in 3 boxes of one frame."""
    herd = [animal((0.1 + 0.3 * k, 0.3, 0.2, 0.2), fox=0.95) for k in range(3)]
    results = [photo("s0", START, *herd)] + [
        photo(f"s{i}", START + timedelta(seconds=2 * i), animal((0.3, 0.3, 0.2, 0.2), **{k: 0.95}))
        for i, k in enumerate(["cat", "cat", "cat", "badger"], start=1)
    ]
    (event,) = run(results).events.to_pylist()
    assert event["label"] == "cat", event
    assert "cat in 3 of 5 frames" in event["rule"]
