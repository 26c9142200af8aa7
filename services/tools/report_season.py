"""What the report counts, added up one deployment at a time.

The report walks the tables a deployment at a time (`DeploymentRows`) and keeps only the counts
its page shows: per deployment, per type, per species and hour, per day. So its memory is one
deployment's rows plus counts that grow with deployments and days, not with photos (100,000
photos held as one pandas frame were ~2 KB a photo: ~2 GB at a season of a million).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pandas as pd

RATE_DAILY_MAX_DAYS = 90  # longer surveys are binned by week, else the plot is a comb
UNDEFINED = "undefined"


@dataclass
class DeploymentLine:
    """One row of the page's per-deployment table."""

    deployment_id: str
    location: str
    first: pd.Timestamp | None  # local time of its first and last photo
    last: pd.Timestamp | None
    photos: int
    videos: int
    types: Counter  # observation_type -> photos
    animal_events: int
    species: list[str]


@dataclass
class Season:
    """The report's counts over every deployment added so far (`add`)."""

    media: int = 0
    videos: int = 0
    types: Counter = field(default_factory=Counter)  # observation_type -> photos
    detections: int = 0
    categories: Counter = field(default_factory=Counter)  # detections per MegaDetector category
    labels: Counter = field(default_factory=Counter)  # detections per classifier label
    events: int = 0  # every event (burst)
    animal_events: int = 0
    reviewed_events: int = 0
    reviewers: set[str] = field(default_factory=set)
    species: set[str] = field(default_factory=set)
    zones: set[str] = field(default_factory=set)
    lines: list[DeploymentLine] = field(default_factory=list)
    diel: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # hour counts
    species_at: dict[str, set[str]] = field(default_factory=dict)  # deployment -> species
    events_per_day: dict[str, pd.Series] = field(default_factory=dict)  # deployment -> day: n
    active: dict[str, tuple[pd.Timestamp, pd.Timestamp] | None] = field(default_factory=dict)

    def add(
        self,
        deployment_id: str,
        location: str,
        media: pd.DataFrame,
        observations: pd.DataFrame,
        events: pd.DataFrame,
    ) -> None:
        """Count one deployment: its media rows (local time, reviews and final labels added),
        the observations of those media, and its animal events (one row each: label, start)."""
        self.media += len(media)
        videos = int(media["is_video"].sum())
        self.videos += videos
        types = Counter(media["observation_type"].value_counts().to_dict())
        self.types.update(types)
        self.detections += len(observations)
        self.categories.update(observations["category"].value_counts().to_dict())
        self.labels.update(observations["label"].dropna().value_counts().to_dict())
        animal_events = media.loc[media["event_label"].notna(), "event_id"].nunique()
        self.animal_events += animal_events  # an event never spans deployments (its id says so)
        self.events += media["event_id"].nunique()
        self.reviewed_events += media.loc[media["reviewed_by"] != "", "event_id"].nunique()
        self.reviewers |= set(media["reviewed_by"]) - {""}
        species = sorted(set(media["event_label"].dropna()) - {UNDEFINED})
        self.species |= set(species)
        self.zones |= set(media["zone"])
        times = media["local_time"].dropna()
        first, last = (times.min(), times.max()) if len(times) else (None, None)
        self.lines.append(DeploymentLine(
            deployment_id, location, first, last, len(media) - videos, videos, types,
            animal_events, species,
        ))  # fmt: skip
        self.active[deployment_id] = (first.normalize(), last.normalize()) if len(times) else None
        classified = events[events["label"] != UNDEFINED]
        for name, group in classified.groupby("label"):
            self.diel[name].update(group["start"].dt.hour.value_counts().to_dict())
        self.species_at[deployment_id] = set(classified["label"])
        self.events_per_day[deployment_id] = events.groupby(events["start"].dt.normalize()).size()

    def zone_note(self) -> str:
        zones = sorted(self.zones)
        if zones in ([], ["UTC"]):
            return "UTC: no deployments file"
        return f"local time, {zones[0]}" if len(zones) == 1 else "each camera's local time"

    def detection_rate(self) -> tuple[pd.DataFrame, str]:
        """Animal events per day (per week past 90 days) per deployment, zeros on the days a
        camera ran, nothing before its first photo or after its last."""
        spans = [span for span in self.active.values() if span is not None]
        if not spans:
            return pd.DataFrame(), "day"
        first, last = min(s[0] for s in spans), max(s[1] for s in spans)
        unit, freq = (
            ("day", "D") if (last - first).days <= RATE_DAILY_MAX_DAYS else ("week", "W-MON")
        )
        days = pd.date_range(first, last, freq="D")
        rate = pd.DataFrame(index=days)
        for deployment_id in sorted(self.active):
            counts = self.events_per_day[deployment_id].reindex(days, fill_value=0).astype(float)
            span = self.active[deployment_id]
            if span is None:
                counts[:] = float("nan")
            else:
                counts[(days < span[0]) | (days > span[1])] = float("nan")
            rate[deployment_id] = counts
        if unit == "week":
            rate = rate.resample(freq, label="left", closed="left").sum(min_count=1)
        return rate, unit
