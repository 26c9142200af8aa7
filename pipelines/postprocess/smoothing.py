"""Smoothing: the boxes of one photo, and the photos of one event, tell one story.

Within a photo (MegaDetector's `smooth_classification_results_image_level`): a herd of seven
boxes called red deer and one called fallow deer is eight red deer. The photo's dominant class
(at least `min_dominant` confident boxes, no tie) relabels the photo's undefined boxes, boxes
rolled up to one of its ancestors, and classes with at most `max_nondominant` boxes.

Within an event (DeepFaune): the event's label is the vote over its frames (mean logits,
temperature, threshold: `pipelines/events.py`); DeepFaune gives it to every frame. One
confident dissenting frame can pull that vote under the threshold (4 foxes at 0.95 and a cat at
0.95 vote fox 0.79), so an undefined vote falls back to the class confidently seen in more than
half of the classified frames (k of n frames: each frame votes once, however many boxes it has)
and in at least `min_dominant` of them. The event's label then goes to its boxes with the photo
rule's guard: a class with more than `max_nondominant` confident boxes in the event is taken for
a second animal and kept (here boxes, not frames: three foxes in one photo are foxes), and a
confident species is never replaced by one of its own ancestors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from trapline.pipelines.classify import UNDEFINED
from trapline.pipelines.postprocess.decision import Decision
from trapline.pipelines.postprocess.options import PostprocessOptions
from trapline.pipelines.postprocess.taxonomy import Taxonomy

CONFIDENT_SOURCES = ("classifier", "image")


def confident_counts(decisions: Iterable[Decision]) -> Counter[str]:
    """Boxes per class among labels the classifier (or the photo rule) was sure of."""
    return Counter(
        d.label
        for d in decisions
        if d.source in CONFIDENT_SOURCES and d.label not in (None, UNDEFINED)
    )


def takes(d: Decision, target: str, counts: Counter[str], taxonomy: Taxonomy, limit: int) -> bool:
    """Whether box `d` should take `target`, the photo's or event's label."""
    if d.label is None or d.is_static or d.source is None:
        return False
    if d.label == UNDEFINED:
        return True
    if d.source in ("rollup", "geofence"):  # a higher taxon: refine it only to a descendant
        return taxonomy.within(target, d.label)
    if taxonomy.within(d.label, target):  # never replace a species by its own ancestor
        return d.label == target
    return counts[d.label] <= limit


def smooth_image(
    decisions: list[Decision], options: PostprocessOptions, taxonomy: Taxonomy
) -> None:
    counts = confident_counts(decisions)
    ranked = counts.most_common(2)
    if not ranked or ranked[0][1] < options.min_dominant:
        return
    if len(ranked) > 1 and ranked[1][1] == ranked[0][1]:
        return  # a tie has no dominant class
    top, count = ranked[0]
    shares = [d.probability for d in decisions if d.label == top and d.probability is not None]
    probability = round(sum(shares) / len(shares), 4) if shares else None
    for d in decisions:
        if d.label != top and takes(d, top, counts, taxonomy, options.max_nondominant):
            d.rule = f"image: {top} in {count} of {len(decisions)} boxes (was {d.label})"
            d.label, d.probability, d.source = top, probability, "image"


def smooth_sequence(
    photos: list[list[Decision]],
    label: str,
    probability: float | None,
    options: PostprocessOptions,
    taxonomy: Taxonomy,
) -> None:
    """Give the event's label to its boxes, unless one is a second animal (see module doc).

    A confident box next to a box of the event's class in the same photo is a second animal
    too (a fox and a boar in one frame), whatever the counts say.
    """
    counts = confident_counts(d for photo in photos for d in photo)
    for photo in photos:
        beside = confident_counts(photo)
        for d in photo:
            confident = d.source in CONFIDENT_SOURCES and d.label not in (None, UNDEFINED)
            if confident and d.label != label and beside[label]:
                continue
            if takes(d, label, counts, taxonomy, options.max_nondominant):
                if d.label != label:  # "(was LABEL P)": the photo's own answer, for exports
                    was = (
                        d.label
                        if d.probability is None
                        else f"{d.label} {round(float(d.probability), 4)}"
                    )
                    d.rule = f"sequence: event vote {label} {probability} (was {was})"
                d.label, d.probability, d.source = label, probability, "sequence"


def frame_counts(photos: Iterable[Iterable[Decision]]) -> Counter[str]:
    """Frames per class that hold at least one confident box of it: one vote per frame, so a
    herd in one photo counts once (three foxes in a frame do not outvote three frames of cat)."""
    return Counter(label for photo in photos for label in confident_counts(photo))


def majority_vote(
    vote: Decision,
    photos: list[list[Decision]],
    classified_frames: int,
    options: PostprocessOptions,
) -> None:
    """An undefined event vote becomes the class confidently seen in more than half of its
    classified frames (and in at least `min_dominant` of them), if exactly one class is."""
    ranked = frame_counts(photos).most_common(2)
    if not ranked or (len(ranked) > 1 and ranked[1][1] == ranked[0][1]):
        return
    top, frames = ranked[0]
    if frames * 2 > classified_frames and frames >= options.min_dominant:
        shares = [d.probability for photo in photos for d in photo
                  if d.label == top and d.probability is not None]  # fmt: skip
        vote.rule = (
            f"sequence: vote {vote.label} {vote.probability}; {top} in {frames} of "
            f"{classified_frames} frames"
        )
        vote.label = top
        vote.probability = round(sum(shares) / len(shares), 4) if shares else None
