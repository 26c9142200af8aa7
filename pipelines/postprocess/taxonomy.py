"""Classifier labels as taxa, and the roll-up of uncertain predictions to a common ancestor.

Why: when DeepFaune splits its vote between red deer (0.45) and roe deer (0.40) the honest
answer is "a deer" (Cervidae, 0.85), not "undefined". SpeciesNet does this: it sums the
probabilities of the classes under each ancestor, rank by rank, and takes the first ancestor
above a threshold. The lineages are data (`taxonomy.csv`), one row per classifier label.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from trapline.pipelines.postprocess.options import RANKS


@dataclass(frozen=True, slots=True)
class Taxon:
    """A classifier label's place in the tree; `lineage[rank]` is None above the label's rank."""

    label: str
    scientific_name: str
    rank: str  # species | genus | family | order | class
    lineage: dict[str, str | None]

    def ancestor(self, rank: str) -> str | None:
        """The name at `rank` if the label is at that rank or below it, else None."""
        if RANKS.index(rank) < RANKS.index(self.rank):
            return None
        return self.lineage.get(rank)


@dataclass(frozen=True, slots=True)
class Rollup:
    name: str  # the ancestor's scientific name, e.g. "Cervidae"
    rank: str
    probability: float  # summed over the classes below it
    parts: tuple[tuple[str, float], ...]  # the classes that contributed, largest first


class Taxonomy:
    def __init__(self, taxa: Sequence[Taxon], source: str = "<taxa>"):
        self.by_label = {t.label: t for t in taxa}
        self.source = source
        self._rank_of_name: dict[str, str] = {}
        self._above: dict[str, set[str]] = {}  # any name -> the names of its ancestors
        for taxon in taxa:
            names = [taxon.ancestor(rank) for rank in RANKS]
            for position, name in enumerate(names):
                if name:
                    self._rank_of_name.setdefault(name, RANKS[position])
                    self._above.setdefault(name, set()).update(
                        n for n in names[position + 1 :] if n
                    )
            self._above.setdefault(taxon.label, set()).update(n for n in names if n)

    def rank_of(self, name: str | None) -> str | None:
        """Rank of a label or a taxon name ('Cervidae' -> 'family'); None if unknown."""
        if name is None:
            return None
        taxon = self.by_label.get(name)
        return taxon.rank if taxon else self._rank_of_name.get(name)

    def within(self, name: str, ancestor: str) -> bool:
        """Whether a label or taxon name lies under `ancestor` (or is it): red deer in Cervidae."""
        if name == ancestor or self.scientific_name(name) == ancestor:
            return True
        return ancestor in self._above.get(name, ())

    def scientific_name(self, name: str | None) -> str | None:
        """A label's scientific name; a taxon name is its own."""
        if name is None:
            return None
        taxon = self.by_label.get(name)
        if taxon:
            return taxon.scientific_name
        return name if name in self._rank_of_name else None

    def check_labels(self, labels: Sequence[str]) -> None:
        """Every classifier label must have a row; a missing one would silently never roll up."""
        missing = [label for label in labels if label not in self.by_label]
        if missing:
            raise ValueError(
                f"{self.source}: no taxonomy row for classifier labels {missing}; add them"
            )

    def rollup(
        self,
        probabilities: np.ndarray,
        labels: Sequence[str],
        ranks: Sequence[str],
        threshold: float,
        allowed: Callable[[str], bool] = lambda name: True,
    ) -> Rollup | None:
        """The first rank whose most probable allowed ancestor reaches `threshold` (SpeciesNet)."""
        for rank in ranks:
            sums: dict[str, float] = {}
            parts: dict[str, list[tuple[str, float]]] = {}
            for label, p in zip(labels, probabilities):
                taxon = self.by_label.get(label)
                name = taxon.ancestor(rank) if taxon else None
                if name:
                    sums[name] = sums.get(name, 0.0) + float(p)
                    parts.setdefault(name, []).append((label, float(p)))
            candidates = [(s, n) for n, s in sums.items() if allowed(n)]
            if not candidates:
                continue
            best_sum, best = max(candidates)
            if best_sum >= threshold:
                contributed = sorted(parts[best], key=lambda item: -item[1])
                return Rollup(best, rank, round(best_sum, 4), tuple(contributed))
        return None


def read_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """The shipped `taxonomy.csv`, or a program's own file with the same columns."""
    if path is None:
        text = resources.files(__package__).joinpath("taxonomy.csv").read_text("utf-8")
        source = "taxonomy.csv (shipped)"
    else:
        text, source = Path(path).read_text("utf-8"), str(path)
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    taxa = []
    for number, row in enumerate(rows, start=2):
        rank = (row.get("rank") or "").strip()
        if rank not in RANKS:
            raise ValueError(f"{source} row {number}: rank {rank!r} is not one of {RANKS}")
        lineage = {r: (row.get(r) or "").strip() or None for r in RANKS}
        if lineage[rank] != row["scientific_name"].strip():
            raise ValueError(
                f"{source} row {number}: {row['label']!r} is a {rank} but its {rank} column "
                f"is {lineage[rank]!r}, not {row['scientific_name']!r}"
            )
        taxa.append(Taxon(row["label"].strip(), row["scientific_name"].strip(), rank, lineage))
    return Taxonomy(taxa, source)


@lru_cache(maxsize=1)
def default_taxonomy() -> Taxonomy:
    return read_taxonomy()
