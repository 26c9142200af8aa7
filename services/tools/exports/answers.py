"""What both exports say about a box: the photo's own answer, and the English name of a taxon.

Why one module: a photo must read the same in the Camtrap DP package (media-level observations)
and in the MegaDetector JSON (a detection's first classification). Both take the answer from
`photo_answer`.

The photo's own answer is what post-processing decided from that photo alone: the classifier's
label, or the geofence's or roll-up's higher taxon, or the photo's dominant class (image
smoothing). The event's vote (`label_source = sequence`) is not a photo's answer: it belongs to
the event-level observation. When the tables hold the vote on a box (DeepFaune copies it to
every frame), the box's own answer is recovered from what the row kept: `classifier_label` and
`classification_probability`, and the rule text `sequence: event vote ... (was LABEL P)` that
post-processing writes when the vote replaced a different label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from trapline.pipelines.postprocess.taxonomy import Taxonomy, default_taxonomy

UNDEFINED = "undefined"
_WAS = re.compile(
    r"^sequence: event vote .* \(was (?P<label>.+?)(?: (?P<p>[0-9.]+(?:e-?\d+)?))?\)$"
)


@dataclass(frozen=True, slots=True)
class Answer:
    """A box's label as an export writes it."""

    label: str | None  # classifier label ('red deer'), taxon ('Cervidae'), 'undefined' or None
    probability: float | None  # of `label`
    scientific_name: str | None  # None for 'undefined' and unlabelled boxes
    taxon_rank: str | None
    source: str | None  # classifier | image | rollup | geofence | None (unlabelled)
    exact: bool = True  # False: the probability was summed over the top-k only (a lower bound)

    @property
    def named(self) -> bool:
        return self.scientific_name is not None


NO_ANSWER = Answer(None, None, None, None, None)


def photo_answer(obs: Mapping[str, Any], photo: Iterable[Mapping[str, Any]] = ()) -> Answer:
    """The box's answer from its own photo (see the module docstring). `photo`: the photo's
    boxes (observation rows), used only to recompute an image-smoothed label's probability
    in tables written before the rule text carried it."""
    label, source = obs.get("label"), obs.get("label_source")
    if label is None or obs.get("is_static"):
        return NO_ANSWER
    if source != "sequence":
        probability = obs.get("label_probability")
        if probability is None:
            probability = obs.get("classification_probability")
        return _answer(label, probability, source)
    own, own_p = obs.get("classifier_label"), obs.get("classification_probability")
    rule = obs.get("rule") or ""
    was = _WAS.match(rule)
    if was:  # the vote replaced another label: that label was the photo's answer
        previous = was.group("label")
        if was.group("p") is not None:
            return _answer(previous, float(was.group("p")), _source_of(previous, own))
    elif rule.startswith("sequence:"):  # a rolled-up or fenced vote filled an undefined box
        previous = UNDEFINED
    else:  # the vote agreed with the box: the probability is the photo's, not the vote's
        previous = label
    if previous in (own, UNDEFINED):
        return _answer(previous, own_p, "classifier")
    if rule.startswith("image:") or previous in _taxonomy().by_label:  # image smoothing
        shares = [
            float(o["classification_probability"])
            for o in photo
            if o.get("classifier_label") == previous
            and o.get("classification_probability") is not None
            and not o.get("is_static")
        ]
        p = round(sum(shares) / len(shares), 4) if shares else None
        return _answer(previous, p, "image")
    # A higher taxon (roll-up or geofence) whose probability the row no longer holds: the sum
    # of the classifier's top-k below it, which is a lower bound of the summed probability.
    taxonomy = _taxonomy()
    top = zip(obs.get("top_labels") or [], obs.get("top_probabilities") or [])
    p = sum(float(q) for name, q in top if taxonomy.within(name, previous))
    return Answer(previous, round(p, 4), *_names(previous), source="rollup", exact=False)


def _answer(label: str, probability: float | None, source: str | None) -> Answer:
    p = None if probability is None else round(float(probability), 6)
    return Answer(label, p, *_names(label), source=source)


def _source_of(label: str, own: str | None) -> str:
    if label in (own, UNDEFINED):
        return "classifier"
    return "image" if label in _taxonomy().by_label else "rollup"


def _names(label: str) -> tuple[str | None, str | None]:
    """(scientific name, rank) of a classifier label or a taxon name; None for undefined."""
    if label == UNDEFINED:
        return None, None
    taxonomy = _taxonomy()
    name = taxonomy.scientific_name(label)
    if name is None:  # a label the taxonomy lacks (another classifier): the label itself
        return label, None
    return name, taxonomy.rank_of(label)


@lru_cache(maxsize=1)
def _taxonomy() -> Taxonomy:
    return default_taxonomy()


def english_names(rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """scientific name -> the classifier's English label for it, from the taxonomy (each
    classifier label and the taxon it names) and from the rows' own (label, scientific_name)
    pairs. A higher taxon that no classifier label names (Cervidae after a roll-up) has none:
    its row's `classifier_label` is a different species' (or 'undefined'), never its name."""
    names: dict[str, str] = {}
    for taxon in _taxonomy().by_label.values():
        names.setdefault(taxon.scientific_name, taxon.label)
    for row in rows:
        label, scientific = row.get("label"), row.get("scientific_name")
        if label and scientific and label not in (scientific, UNDEFINED):
            names.setdefault(scientific, label)
    return names


def run_root(rows: Iterable[Mapping[str, Any]]) -> str:
    """The folder given to `trapline run`, from where its photos lie.

    A folder run names each photo's deployment after the first folder below the input root
    (`pipelines/source.py`), so the root is the part of the URI before that folder. Rows whose
    URI has no folder named after their deployment (uploads with an event's deployment) give
    no root; then the deepest folder holding every photo is used."""
    from trapline.services.tools.exports.common import common_base

    rows = list(rows)
    roots = set()
    for row in rows:
        if not row.get("deployment_id"):  # a failure before the deployment was known
            continue
        root = _root_of(row["uri"], row["deployment_id"])
        if root is None:
            return common_base(r["uri"] for r in rows)
        roots.add(root)
    if len(roots) == 1:
        return roots.pop()
    return common_base(f"{root}/-" for root in roots)


def _root_of(uri: str, deployment_id: str) -> str | None:
    folders = uri.split("/")[:-1]
    for index in range(len(folders) - 1, -1, -1):
        if folders[index] == deployment_id:
            root = "/".join(folders[:index])
            return None if root.endswith(":") or root.endswith(":/") else root
    return None
