"""What post-processing decided about one box: its final label and where that label came from."""

from __future__ import annotations

from dataclasses import dataclass

SOURCES = ("classifier", "image", "sequence", "rollup", "geofence")


@dataclass(slots=True)
class Decision:
    label: str | None  # final label: classifier label, a higher taxon, "undefined" or None
    probability: float | None  # of `label` (summed for a higher taxon, the vote's for sequence)
    source: str | None  # one of SOURCES; None when there is no label (static, person, vehicle)
    rule: str | None = None  # the rule that changed the label, for a human; None if none did
    scientific_name: str | None = None
    taxon_rank: str | None = None
    is_static: bool = False
    static_group: str | None = None
