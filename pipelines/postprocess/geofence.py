"""Geofencing: a species predicted where it does not occur becomes its nearest allowed ancestor.

Why: a classifier trained on all of Europe will now and then call a French roe deer a reindeer.
SpeciesNet answers with a geofence (allow or block lists per taxon and country) and rolls a
blocked prediction up the tree until it reaches a taxon that is allowed there: reindeer in
France becomes Cervidae, with the summed probability of the deer classes. The rules are data
(`geofence.csv`, each with its source), replaceable per program (`geofence_file`).

A deployment's country comes from the deployments file (`country`), else from its coordinates
through `countries.country_at` (offline). No country: no geofence, and the row says nothing.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from trapline.pipelines.postprocess.taxonomy import Rollup, Taxonomy

_COUNTRY = re.compile(r"[A-Z]{2}")
GEOFENCE_RANKS = ("family", "order", "class")  # SpeciesNet rolls a blocked label up from family


@dataclass(frozen=True, slots=True)
class Fenced:
    """A prediction the geofence replaced: the ancestor it rolled up to, and why."""

    rollup: Rollup | None  # None: no ancestor is allowed there (the label becomes undefined)
    rule: str  # for the row's `rule` column


class Geofence:
    def __init__(
        self, allow: dict[str, set[str]], block: dict[str, set[str]], source: str = "<rules>"
    ):
        self.allow = allow  # taxon -> the only countries it may be reported in
        self.block = block  # taxon -> countries it may not be reported in
        self.source = source

    def blocked(self, taxon: str | None, country: str | None) -> str | None:
        """Why `taxon` may not be reported in `country` (a short rule text), or None."""
        if not taxon or not country:
            return None
        allowed = self.allow.get(taxon)
        if allowed is not None and country not in allowed:
            return f"{taxon} allowed only in {' '.join(sorted(allowed))}"
        if country in self.block.get(taxon, ()):
            return f"{taxon} blocked in {country}"
        return None

    def fence(
        self,
        label: str,
        probabilities: np.ndarray,
        labels: Sequence[str],
        country: str | None,
        taxonomy: Taxonomy,
    ) -> Fenced | None:
        """None if `label` may stand in `country`; else its nearest allowed ancestor.

        The ancestor's probability is the sum over the classes below it; the threshold is the
        label's own probability, so the first allowed ancestor always passes (as SpeciesNet).
        """
        why = self.blocked(taxonomy.scientific_name(label), country)
        if why is None:
            return None
        own = float(probabilities[list(labels).index(label)]) if label in labels else 0.0
        taxon = taxonomy.by_label.get(label)
        ranks = [  # above the label itself: a blocked family cannot roll up to itself
            r for r in GEOFENCE_RANKS
            if taxon is None or taxon.ancestor(r) not in (None, taxon.scientific_name)
        ]  # fmt: skip
        up = taxonomy.rollup(
            probabilities,
            labels,
            ranks,
            own - 1e-9,
            allowed=lambda name: self.blocked(name, country) is None,
        )
        target = f"{up.name} ({up.rank})" if up else "undefined (no allowed ancestor)"
        return Fenced(up, f"geofence: {why}; {label} in {country} -> {target}")


def read_geofence(path: str | Path | None = None) -> Geofence:
    """The shipped `geofence.csv`, or a program's own file with the same columns."""
    if path is None:
        text = resources.files(__package__).joinpath("geofence.csv").read_text("utf-8")
        source = "geofence.csv (shipped)"
    else:
        text, source = Path(path).read_text("utf-8"), str(path)
    allow: dict[str, set[str]] = {}
    block: dict[str, set[str]] = {}
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    for number, row in enumerate(rows, start=2):
        taxon, rule = (row.get("taxon") or "").strip(), (row.get("rule") or "").strip()
        countries = (row.get("countries") or "").split()
        bad = [c for c in countries if not _COUNTRY.fullmatch(c)]
        if not taxon or rule not in ("allow", "block") or bad or not countries:
            raise ValueError(
                f"{source} row {number}: need taxon, rule allow|block and ISO alpha-2 countries "
                f"separated by spaces; got {dict(row)}"
            )
        target = allow if rule == "allow" else block
        if rule == "allow" and taxon in allow:
            raise ValueError(f"{source} row {number}: a second allow list for {taxon!r}")
        target.setdefault(taxon, set()).update(countries)
    return Geofence(allow, block, source)


@lru_cache(maxsize=8)
def cached_geofence(path: str | None) -> Geofence:
    return read_geofence(path)
