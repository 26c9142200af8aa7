"""One entry for the label decisions after the event vote: geofence, roll-up, smoothing.

Order, and why: a box's own answer is fenced first (a reindeer in France is never a reindeer,
whatever its neighbours say), uncertain answers roll up next, then the photo and the event smooth
what is left. Static boxes (found before the vote) only get their flag.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from trapline.pipelines.classify import UNDEFINED, softmax
from trapline.pipelines.deployments import Deployments
from trapline.pipelines.events import Event
from trapline.pipelines.postprocess.countries import country_at
from trapline.pipelines.postprocess.decision import Decision
from trapline.pipelines.postprocess.geofence import Geofence, cached_geofence
from trapline.pipelines.postprocess.options import PostprocessOptions
from trapline.pipelines.postprocess.smoothing import majority_vote, smooth_image, smooth_sequence
from trapline.pipelines.postprocess.static import StaticDetections
from trapline.pipelines.postprocess.taxonomy import Taxonomy, default_taxonomy
from trapline.pipelines.types import MediaResult

log = logging.getLogger(__name__)


def deployment_country(
    deployment_id: str, deployments: Deployments, from_coordinates: bool
) -> str | None:
    """The deployments file's country, else the one at its coordinates (see countries.py)."""
    deployment = deployments.get(deployment_id)
    if deployment is None:
        return None
    if deployment.country:
        return deployment.country
    if from_coordinates and deployment.latitude is not None and deployment.longitude is not None:
        return country_at(deployment.latitude, deployment.longitude)
    return None


class _Labeller:
    """Geofence and roll-up of one probability vector, for a box or an event."""

    def __init__(self, labels: Sequence[str], options: PostprocessOptions, taxonomy: Taxonomy):
        self.labels, self.options, self.taxonomy = tuple(labels), options, taxonomy
        self.fence: Geofence | None = (
            cached_geofence(options.geofence_file) if options.geofence else None
        )

    def decide(self, d: Decision, probabilities: np.ndarray | None, country: str | None) -> None:
        if probabilities is None or d.label is None:
            return
        if self.fence is not None and d.label != UNDEFINED:
            fenced = self.fence.fence(d.label, probabilities, self.labels, country, self.taxonomy)
            if fenced is not None:
                up = fenced.rollup
                d.label = up.name if up else UNDEFINED
                d.probability = up.probability if up else d.probability
                d.source, d.rule = "geofence", fenced.rule
                return
        if self.options.rollup and d.label == UNDEFINED:
            fence = self.fence
            up = self.taxonomy.rollup(
                probabilities,
                self.labels,
                self.options.rollup_ranks,
                self.options.rollup_threshold,
                allowed=lambda name: fence is None or fence.blocked(name, country) is None,
            )
            if up is not None:
                parts = " + ".join(f"{label} {p:.2f}" for label, p in up.parts[:4])
                more = " + ..." if len(up.parts) > 4 else ""
                d.rule = (
                    f"rollup: {parts}{more} = {up.probability:.2f} >= "
                    f"{self.options.rollup_threshold} -> {up.name} ({up.rank})"
                )
                d.label, d.probability, d.source = up.name, up.probability, "rollup"


def apply_postprocessing(
    results: Sequence[MediaResult],
    events: Sequence[Event],
    static: StaticDetections,
    deployments: Deployments,
    labels: Sequence[str],
    options: PostprocessOptions,
) -> dict[str, list[Decision]]:
    """Each photo's decisions, one per detection; fills the events' final labels in place."""
    taxonomy = default_taxonomy()
    unknown = [label for label in labels if label not in taxonomy.by_label]
    if unknown and options.enabled:
        log.warning("no taxonomy row for classifier labels %s: they never roll up", unknown)
    on = options.enabled
    labeller = _Labeller(labels, options, taxonomy)
    countries: dict[str, str | None] = {}

    def country_of(deployment_id: str) -> str | None:
        if deployment_id not in countries:
            countries[deployment_id] = deployment_country(
                deployment_id, deployments, options.geofence_from_coordinates
            )
        return countries[deployment_id]

    decisions: dict[str, list[Decision]] = {}
    for result in results:
        country = country_of(result.ref.deployment_id)
        photo = []
        for index, d in enumerate(result.detections):
            group = static.group_of.get((result.media_id, index))
            if group is not None:
                photo.append(Decision(None, None, None, is_static=True, static_group=group))
                continue
            decision = Decision(d.label, d.probability, "classifier" if d.label else None)
            if on and d.logits is not None:
                labeller.decide(decision, softmax(np.asarray(d.logits, np.float64)), country)
            photo.append(decision)
        if on and options.smooth_image:
            smooth_image(photo, options, taxonomy)
        decisions[result.media_id] = photo

    for event in events:
        if event.label is None:
            continue
        vote = Decision(event.label, event.probability, "sequence")
        frames = [decisions.get(m, []) for m in event.media_ids]
        boxes = [d for frame in frames for d in frame]
        if on and options.smooth_sequence and vote.label == UNDEFINED:
            majority_vote(vote, frames, event.classified_frames, options)
        if on:
            labeller.decide(vote, event.probabilities, country_of(event.deployment_id))
        event.label, event.probability = vote.label, vote.probability
        event.label_source, event.rule = vote.source, vote.rule
        event.scientific_name = taxonomy.scientific_name(vote.label)
        event.taxon_rank = taxonomy.rank_of(vote.label)
        if on and options.smooth_sequence and event.classified_frames > 1:
            if vote.source == "sequence" and vote.label != UNDEFINED:
                photos = [decisions[m] for m in event.media_ids if m in decisions]
                smooth_sequence(photos, vote.label, vote.probability, options, taxonomy)
            elif vote.label != UNDEFINED:  # a rolled-up or fenced vote only fills undefined boxes
                for d in boxes:
                    if d.label == UNDEFINED and not d.is_static:
                        d.label, d.probability, d.source, d.rule = (
                            vote.label,
                            vote.probability,
                            "sequence",
                            f"sequence: {vote.rule}",
                        )

    for photo in decisions.values():
        for decision in photo:
            decision.scientific_name = taxonomy.scientific_name(decision.label)
            decision.taxon_rank = taxonomy.rank_of(decision.label)
    return decisions
