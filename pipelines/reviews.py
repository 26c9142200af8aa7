"""People's reviews of the machine's labels: the append-only `reviews` Delta table.

A reviewer accepts or corrects an event (a burst) or one observation (a box); each decision is a
row, appended in one Delta commit like every other table (`pipelines/delta.py`), under the same
results root (`ROOT/reviews/`, partitioned by deployment). Nothing is ever updated or deleted:
a later review of the same item wins, and the history stays for audit. Columns:
docs/tables/reviews.md; the review screen: docs/review.md.

Use from other code (exports, report, sort, the review server):

    append_reviews(root, rows, reviewer, *, now=None, taxonomy=None) -> list[str]
        Append `rows` (dicts, see `ReviewInput` for the keys) in one commit; returns their
        review ids. Fills review_id, reviewer, reviewed_at (a row's own `reviewed_at` if given,
        else `now`, else the clock), scientific_name, taxon_rank and observation_type from the
        label (`resolve_label`), and accepted (label == machine_label unless given). Raises
        ValueError naming the row when a row is incomplete or its label is empty.
    read_reviews(root, deployment_ids=None, version=None) -> pa.Table
        Every review (the history), REVIEWS schema, optionally of some deployments only.
    latest_reviews(root, deployment_ids=None, version=None) -> pa.Table
        One row per reviewed item, the latest review of it (the one committed last, whatever
        the servers' clocks said: `review_id` carries the commit's sequence): the labels to use.
        An item is (target, event_id) for an event review, (target, observation_id) for an
        observation review. Empty table (REVIEWS schema) when nobody reviewed anything.
    reviewed_events(root, deployment_ids=None) -> dict[str, dict]
        event_id -> the latest event review as a row dict: what the report and `sort` use.
    reviewed_final_label(review) -> str
        The label `sort` and the report give a reviewed event: its taxon label for an animal
        ('red deer', 'Cervidae', 'undefined'), else blank | human | vehicle.
    resolve_label(name, taxonomy=None) -> ReviewedLabel
        A reviewer's label in the tables' vocabulary: 'Vulpes vulpes' -> fox (the classifier's
        own label), 'Cervidae' -> family, 'person' -> human; ValueError when empty.
    label_names(taxonomy=None) -> list[LabelName]
        What the review screen's taxon search offers: blank, person, vehicle, the classifier's
        labels and every name in the taxonomy's lineages.

An event review speaks for the whole burst (every photo and box in it): Camtrap DP's
classificationMethod becomes "human" and classifiedBy the reviewer. An observation review speaks
for one box and wins over its event's review for that box.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trapline.models.labels import DEEPFAUNE_LABELS
from trapline.pipelines import delta
from trapline.pipelines.postprocess.options import RANKS
from trapline.pipelines.postprocess.taxonomy import Taxonomy, default_taxonomy
from trapline.pipelines.readers import read_table
from trapline.pipelines.tables import REVIEWS

TABLE = "reviews"
TARGETS = ("event", "observation")
# Labels that are not taxa: what they mean as Camtrap DP observationType.
NOT_ANIMALS = {"blank": "blank", "person": "human", "human": "human", "vehicle": "vehicle"}
UNDEFINED = "undefined"  # an animal whose taxon the reviewer cannot tell


class ReviewInput(TypedDict, total=False):
    """One review as a caller gives it to `append_reviews` (the rest is filled in)."""

    target: str  # event | observation (required)
    event_id: str  # required (for an observation: its event)
    observation_id: str | None  # required for target observation
    deployment_id: str  # required
    label: str  # required: classifier label, scientific name, blank | person | vehicle
    count: int | None
    comment: str | None
    machine_label: str | None  # what the tables said, to keep beside the correction
    machine_probability: float | None
    accepted: bool  # default: label == machine_label
    reviewed_at: datetime  # default: now (UTC)


@dataclass(frozen=True, slots=True)
class ReviewedLabel:
    label: str  # classifier label, taxon name, undefined, or blank | person | vehicle
    scientific_name: str | None
    taxon_rank: str | None
    observation_type: str  # animal | human | vehicle | blank


@dataclass(frozen=True, slots=True)
class LabelName:
    """One entry of the review screen's taxon search."""

    label: str  # what is stored when picked
    scientific_name: str | None
    rank: str | None  # species ... class; None for blank/person/vehicle/undefined
    source: str  # classifier | taxonomy | other


def resolve_label(name: str, taxonomy: Taxonomy | None = None) -> ReviewedLabel:
    """A reviewer's label in the vocabulary the tables use (see the module docstring)."""
    taxonomy = taxonomy or default_taxonomy()
    text = " ".join((name or "").split())
    if not text:
        raise ValueError("empty label: give a taxon, blank, person or vehicle")
    lower = text.lower()
    if lower in NOT_ANIMALS:
        kind = NOT_ANIMALS[lower]
        return ReviewedLabel("person" if kind == "human" else lower, None, None, kind)
    if lower == UNDEFINED:
        return ReviewedLabel(UNDEFINED, None, None, "animal")
    by_lower = {label.lower(): taxon for label, taxon in taxonomy.by_label.items()}
    if lower in by_lower:  # a classifier label
        taxon = by_lower[lower]
        return ReviewedLabel(taxon.label, taxon.scientific_name, taxon.rank, "animal")
    for taxon in taxonomy.by_label.values():  # a classifier label's scientific name
        if taxon.scientific_name.lower() == lower:
            return ReviewedLabel(taxon.label, taxon.scientific_name, taxon.rank, "animal")
    for candidate in _taxonomy_names(taxonomy):  # a higher taxon: Cervidae, Carnivora
        if candidate.lower() == lower:
            return ReviewedLabel(candidate, candidate, taxonomy.rank_of(candidate), "animal")
    # A taxon the classifier and taxonomy lack (Vulpes lagopus): kept as typed, rank unknown.
    return ReviewedLabel(text, text, None, "animal")


def label_names(taxonomy: Taxonomy | None = None) -> list[LabelName]:
    """Every name the review screen's search offers, classifier labels first."""
    taxonomy = taxonomy or default_taxonomy()
    names = [
        LabelName("blank", None, None, "other"),
        LabelName("person", None, None, "other"),
        LabelName("vehicle", None, None, "other"),
        LabelName(UNDEFINED, None, None, "other"),
    ]
    labels = [label for label in DEEPFAUNE_LABELS if label in taxonomy.by_label]
    labels += sorted(set(taxonomy.by_label) - set(labels))
    for label in labels:
        taxon = taxonomy.by_label[label]
        names.append(LabelName(label, taxon.scientific_name, taxon.rank, "classifier"))
    known = {taxon.scientific_name for taxon in taxonomy.by_label.values()}
    for name in sorted(_taxonomy_names(taxonomy) - known):
        names.append(LabelName(name, name, taxonomy.rank_of(name), "taxonomy"))
    return names


def _taxonomy_names(taxonomy: Taxonomy) -> set[str]:
    names: set[str] = set()
    for taxon in taxonomy.by_label.values():
        names.update(name for rank in RANKS if (name := taxon.ancestor(rank)))
    return names


def review_rows(
    rows: Iterable[Mapping[str, Any]],
    reviewer: str,
    *,
    now: datetime | None = None,
    taxonomy: Taxonomy | None = None,
) -> pa.Table:
    """The rows `append_reviews` would commit, checked and completed (REVIEWS schema)."""
    reviewer = (reviewer or "").strip()
    if not reviewer:
        raise ValueError("a review needs a reviewer: pass --reviewer NAME (or sign in)")
    now = now or datetime.now(timezone.utc)
    out = []
    for index, row in enumerate(rows):
        where = f"review row {index} ({row.get('target')} {row.get('event_id')})"
        target = row.get("target")
        if target not in TARGETS:
            raise ValueError(f"{where}: target must be one of {TARGETS}, not {target!r}")
        for key in ("event_id", "deployment_id", "label"):
            if not row.get(key):
                raise ValueError(f"{where}: {key} is missing")
        if target == "observation" and not row.get("observation_id"):
            raise ValueError(f"{where}: an observation review needs its observation_id")
        try:
            resolved = resolve_label(row["label"], taxonomy)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
        count = row.get("count")
        if count is not None and (int(count) != count or count < 0):
            raise ValueError(f"{where}: count must be a whole number >= 0, not {count!r}")
        if count is None and resolved.observation_type == "blank":
            count = 0
        machine = row.get("machine_label")
        accepted = row.get("accepted")
        if accepted is None:
            accepted = machine is not None and resolved.label == machine
        # Same item twice in one batch: the later row must win, so it gets a later time.
        when = row.get("reviewed_at") or now + timedelta(microseconds=index)
        if when.tzinfo is None:
            raise ValueError(f"{where}: reviewed_at must carry a time zone")
        comment = (row.get("comment") or "").strip() or None
        out.append({
            "review_id": uuid.uuid4().hex, "reviewer": reviewer,
            "reviewed_at": when.astimezone(timezone.utc), "target": target,
            "event_id": row["event_id"],
            "observation_id": row.get("observation_id") if target == "observation" else None,
            "deployment_id": row["deployment_id"], "machine_label": machine,
            "machine_probability": row.get("machine_probability"), "label": resolved.label,
            "scientific_name": resolved.scientific_name, "taxon_rank": resolved.taxon_rank,
            "observation_type": resolved.observation_type,
            "count": None if count is None else int(count), "accepted": bool(accepted),
            "comment": comment,
        })  # fmt: skip
    return pa.Table.from_pylist(out, schema=REVIEWS)


# Every reviews commit carries this application transaction, version = the commit's sequence
# number (1, 2, ...), so two commits that read the same sequence conflict and the second takes
# the next one: the sequence is the commit order, the same for every server whatever its clock.
SEQUENCE_APP = "trapline-reviews"
MAX_COMMIT_ATTEMPTS = 50  # reviewers saving at the same moment each take the next sequence
_ORDERED_ID = r"^\d{12}-\d{5}-"  # review ids since the sequence: commit, row, then random


def append_reviews(
    root: str,
    rows: Iterable[Mapping[str, Any]],
    reviewer: str,
    *,
    now: datetime | None = None,
    taxonomy: Taxonomy | None = None,
) -> list[str]:
    """Append reviews to `root`'s reviews table in one commit; returns their review ids.

    A review id is `<commit sequence, 12 digits>-<row in the commit, 5 digits>-<random>`:
    the later of two reviews of one item is the one committed later (`review_order`), not the
    one whose server clock read later (two servers' clocks disagree; equal times fell to a
    random id). Two reviewers saving at once both read sequence N; delta-rs refuses the second
    commit (same application id), which takes N + 1 on the fresh snapshot.
    """
    data = review_rows(rows, reviewer, now=now, taxonomy=taxonomy)
    if data.num_rows == 0:
        return []
    table = delta.create_table(root, TABLE)
    for _attempt in range(MAX_COMMIT_ATTEMPTS):
        sequence = (delta.app_version(table, SEQUENCE_APP) or 0) + 1
        ids = [f"{sequence:012d}-{row:05d}-{uuid.uuid4().hex[:15]}" for row in range(len(data))]
        data = data.set_column(
            data.schema.get_field_index("review_id"),
            data.schema.field("review_id"),
            pa.array(ids, pa.string()),
        )
        try:
            delta.append(table, TABLE, data, [delta.AppVersion(SEQUENCE_APP, sequence)])
            return ids
        except delta.ConcurrentCommit:
            table.update_incremental()
    raise RuntimeError(f"{root}: {MAX_COMMIT_ATTEMPTS} reviews commits refused in a row")


def review_order(reviews: pa.Table) -> pa.Array:
    """A sort key in commit order: the sequence and row prefix of a review id; "" for ids made
    before the sequence (they were all committed before, and keep `reviewed_at` order)."""
    ids = reviews["review_id"]
    ordered = pc.match_substring_regex(ids, _ORDERED_ID)
    return pc.if_else(ordered, pc.utf8_slice_codeunits(ids, 0, 18), "")


def read_reviews(
    root: str, deployment_ids: Sequence[str] | None = None, version: int | None = None
) -> pa.Table:
    """Every committed review (the full history), oldest first."""
    where = None
    if deployment_ids is not None:
        where = pc.field("deployment_id").isin(pa.array(list(deployment_ids), pa.string()))
    data = read_table(root, TABLE, filter=where, version=version)
    if data.num_rows == 0:
        return data
    ordered = data.append_column("_order", review_order(data))
    ordered = ordered.sort_by([("_order", "ascending"), ("reviewed_at", "ascending")])
    return ordered.drop_columns(["_order"])


def latest_reviews(
    root: str, deployment_ids: Sequence[str] | None = None, version: int | None = None
) -> pa.Table:
    """The latest review of each reviewed item (see the module docstring)."""
    return latest_of(read_reviews(root, deployment_ids, version))


def latest_of(reviews: pa.Table) -> pa.Table:
    """Keep the latest row per item of a reviews table, the one committed last (any order
    in, reviewed_at order out)."""
    if reviews.num_rows == 0:
        return reviews
    ids = pc.if_else(
        pc.equal(reviews["target"], "observation"), reviews["observation_id"], reviews["event_id"]
    )
    keyed = reviews.append_column(
        "_key", pc.binary_join_element_wise(reviews["target"], ids, "\x1f")
    ).append_column("_order", review_order(reviews))
    keyed = keyed.sort_by(
        [("_key", "ascending"), ("_order", "ascending"), ("reviewed_at", "ascending")]
    )
    keys = np.asarray(keyed["_key"].to_pylist(), dtype=object)
    last = np.append(keys[1:] != keys[:-1], True)
    latest = keyed.filter(pa.array(last)).drop_columns(["_key", "_order"])
    return latest.sort_by([("reviewed_at", "ascending")])


def reviewed_events(
    root: str, deployment_ids: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """event_id -> the latest event-level review (a row dict)."""
    latest = latest_reviews(root, deployment_ids)
    events = latest.filter(pc.equal(latest["target"], "event"))
    return {row["event_id"]: row for row in events.to_pylist()}


def reviewed_final_label(review: Mapping[str, Any]) -> str:
    """A reviewed event's label as `sort` and the report name labels (see `final_label`)."""
    if review["observation_type"] == "animal":
        return review["label"] or UNDEFINED
    return review["observation_type"]  # blank | human | vehicle
