"""Result tables for the review tests, written by the project's own code (assemble + write_tables).

`write_review_results(base, events=...)` makes `events` bursts over five deployments: each burst
two or three photos 4 s apart, bursts an hour apart, so every burst is one event. Most are
animal events whose classifier logits favour one species strongly (a confident vote) or weakly
(below the threshold: `undefined` or a rolled-up taxon); every 7th shows a person, every 11th
nothing. The photo files are a small pool of generated JPEGs shared by the media rows (the
tables do not care, and 5,000 events need no 12,000 files).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from trapline.models.labels import DEEPFAUNE_LABELS
from trapline.pipelines.flow import assemble
from trapline.pipelines.tables import ModelNames
from trapline.pipelines.types import Detection, MediaRef, MediaResult
from trapline.services.run.folder import write_tables
from trapline.services.settings import Settings

MODELS = ModelNames("demo-detector", "1", "demo-classifier", "1")
SPECIES = ("fox", "red deer", "wild boar", "badger", "roe deer", "lynx", "wolf", "chamois")
DEPLOYMENTS = tuple(f"cam-{i:02d}" for i in range(1, 6))
POOL = 12
WIDTH, HEIGHT = 960, 720


def _pool(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    for i in range(POOL):
        base = rng.integers(40, 120, size=(HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(image)
        draw.ellipse((300 + 20 * i, 250, 560 + 20 * i, 470), fill=(150 + 8 * i, 110, 70))
        draw.text((20, 20), f"pool photo {i}", fill=(255, 255, 255))
        path = folder / f"pool-{i:02d}.jpg"
        image.save(path, quality=85)
        paths.append(path)
    return paths


def _animal(species: str, strength: float, x: float, y: float) -> Detection:
    logits = np.zeros(len(DEEPFAUNE_LABELS), np.float32)
    logits[DEEPFAUNE_LABELS.index(species)] = strength
    probabilities = np.exp(logits) / np.exp(logits).sum()
    p = float(probabilities.max())
    return Detection(
        "animal", 0.9, (x, y, 0.25, 0.3), species, p, [species], [p], logits
    )  # fmt: skip


def write_review_results(base: Path, events: int = 60) -> tuple[Path, list[dict]]:
    """Write results under base/results; returns the folder and what each event was made as."""
    pool = _pool(base / "photos")
    results: list[MediaResult] = []
    plan = []
    start = datetime(2025, 5, 1, 6, 0, 0)
    rng = np.random.default_rng(11)  # boxes move between events: else they are "static" scenery
    for n in range(events):
        deployment = DEPLOYMENTS[n % len(DEPLOYMENTS)]
        when = start + timedelta(hours=n // len(DEPLOYMENTS))
        photos = 2 + n % 2
        if n % 11 == 5:
            kind, species = "blank", None
        elif n % 7 == 3:
            kind, species = "person", None
        else:
            kind, species = "animal", SPECIES[n % len(SPECIES)]
        strength = 9.0 if n % 4 else 3.5  # every 4th animal event: an unsure vote
        plan.append({"n": n, "deployment_id": deployment, "kind": kind, "species": species,
                     "start": when})  # fmt: skip
        x, y = rng.uniform(0.05, 0.4), rng.uniform(0.05, 0.6)
        for k in range(photos):
            media_id = f"m{n:05d}-{k}"
            if kind == "animal":
                detections = [_animal(species, strength, x + 0.05 * k, y)]
                if n % 5 == 0:  # two animals in the frame
                    detections.append(_animal(species, strength, x + 0.4, y))
            elif kind == "person":
                detections = [Detection("person", 0.85, (x + 0.3, y / 2, 0.15, 0.45))]
            else:
                detections = []
            uri = str(pool[(n + k) % POOL])
            results.append(
                MediaResult(
                    MediaRef(uri=uri, deployment_id=deployment, media_id=media_id),
                    media_id, hashlib.sha256(media_id.encode()).hexdigest(), WIDTH, HEIGHT,
                    when + timedelta(seconds=4 * k), "Reconyx", "HC600", 40_000, detections,
                )
            )  # fmt: skip
    settings = Settings(utc_offset="+00:00")
    tables = assemble(results, [], settings.stage_options(), MODELS, DEEPFAUNE_LABELS)
    out = base / "results"
    write_tables(tables, str(out), settings)
    return out, plan
