"""People's reviews as both exports apply them (the `reviews` table, `pipelines/reviews.py`).

A reviewer decides for an event (the whole burst: every photo and box in it) or for one box;
a box's own review wins over its event's. Only the latest review of an item counts
(`latest_reviews`). Results without a reviews table export the machine's labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reviews:
    """The latest review of each reviewed event and box, as row dicts of the reviews table."""

    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # event_id -> review
    boxes: dict[str, dict[str, Any]] = field(default_factory=dict)  # observation_id -> review

    def for_box(self, obs: Mapping[str, Any]) -> dict[str, Any] | None:
        return self.boxes.get(obs["observation_id"]) or self.events.get(obs["event_id"])

    def __len__(self) -> int:
        return len(self.events) + len(self.boxes)


def read_reviews(root: str) -> Reviews:
    """The latest reviews under `root`; none when nobody reviewed (or no reviews table)."""
    try:
        from trapline.pipelines.reviews import latest_reviews
    except ImportError:  # a Trapline without the review screen: the machine's labels
        return Reviews()
    reviews = Reviews()
    for row in latest_reviews(root).to_pylist():
        if row["target"] == "event":
            reviews.events[row["event_id"]] = row
        elif row["target"] == "observation" and row.get("observation_id"):
            reviews.boxes[row["observation_id"]] = row
    return reviews
