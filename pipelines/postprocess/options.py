"""Post-processing knobs as one typed object (`Settings.stage_options()` builds it).

Names follow MegaDetector's `RepeatDetectionOptions` and `ClassificationSmoothingOptions` where
they mean the same thing; every feature has its own switch, and `enabled=False` turns all off.
"""

from __future__ import annotations

from dataclasses import dataclass

RANKS = ("species", "genus", "family", "order", "class")


@dataclass(frozen=True)
class PostprocessOptions:
    enabled: bool = True  # master switch: False leaves every label as the classifier gave it
    # Repeat detections (MegaDetector RDE): a box seen at one place again and again is scenery.
    static: bool = True
    static_iou: float = 0.9  # boxes overlapping this much are "the same place" (RDE iouThreshold)
    static_min_count: int = 20  # photos at one place before it is suspicious (occurrenceThreshold)
    static_min_span_h: float = 24.0  # ... and hours between first and last (an animal moves on)
    static_max_area: float = 0.2  # larger boxes are not flagged (maxSuspiciousDetectionSize)
    static_min_confidence: float = 0.0  # weaker boxes are not considered (confidenceMin)
    # Roll-up of uncertain predictions to a common ancestor (SpeciesNet).
    rollup: bool = True
    rollup_threshold: float = 0.8  # summed probability an ancestor needs
    rollup_ranks: tuple[str, ...] = ("genus", "family", "order", "class")  # tried in this order
    # Geofencing: a species reported where it cannot be rolls up to an allowed ancestor.
    geofence: bool = True
    geofence_file: str | None = None  # CSV of allow/block rules; None: the shipped geofence.csv
    geofence_from_coordinates: bool = True  # no country in the deployments file: use lat/lon
    # Smoothing (MegaDetector classification_postprocessing, DeepFaune sequence rule).
    smooth_image: bool = True
    smooth_sequence: bool = True
    min_dominant: int = 2  # confident boxes (in an event: frames) a dominant class needs
    max_nondominant: int = 1  # a class with more confident boxes than this is a second animal

    def __post_init__(self) -> None:
        unknown = [rank for rank in self.rollup_ranks if rank not in RANKS[1:]]
        if unknown:
            raise ValueError(f"rollup ranks {unknown} unknown; use some of {', '.join(RANKS[1:])}")
