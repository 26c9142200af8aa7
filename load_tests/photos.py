"""Synthetic 12 MP camera-trap JPEGs for benchmarks, cached on disk.

Scenes are rendered small by the demo scene renderer and upscaled with camera-like noise, so a
photo costs what a real 12 MP JPEG costs to read and decode (~2-4 MB, full DCT detail), and its
content is what the demo models know.
"""

from __future__ import annotations

import io
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from trapline.models.demo.synthetic import SPECIES, render_scene

KINDS = ("blank", "blank", "blank", "animal", "animal", "animal", "animal", "person", "vehicle")


def _one(args: tuple[Path, int, int, int, int]) -> str:
    folder, index, width, height, seed = args
    rng = np.random.default_rng(seed * 100_003 + index)
    kind = KINDS[index % len(KINDS)]
    species = SPECIES[index % len(SPECIES)] if kind == "animal" else None
    scene, _ = render_scene(rng, width // 4, height // 4, kind, species=species, night=index % 5 == 0)
    big = scene.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(big, dtype=np.int16)
    noise = rng.integers(-9, 10, size=pixels.shape, dtype=np.int16)  # sensor noise: real JPEG sizes
    big = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "TraplineSynth", "SC-12MP"
    when = datetime(2025, 5, 1, 6, 0, 0) + timedelta(seconds=index * 7)
    exif.get_ifd(0x8769)[0x9003] = when.strftime("%Y:%m:%d %H:%M:%S")
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=88, exif=exif)
    path = folder / f"cam{index % 4:02d}" / f"IMG_{index:05d}.JPG"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return str(path)


def ensure_photos(folder: Path, count: int, width: int = 4000, height: int = 3000, seed: int = 1) -> Path:
    """`count` photos under `folder` (four deployments), generated once and reused."""
    marker = folder / ".complete"
    if marker.exists() and marker.read_text() == f"{count} {width}x{height} {seed}":
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder, i, width, height, seed) for i in range(count)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_one, jobs, chunksize=8))
    marker.write_text(f"{count} {width}x{height} {seed}")
    return folder
