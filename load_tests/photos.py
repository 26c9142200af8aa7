"""Synthetic 12 MP camera-trap JPEGs for benchmarks, cached on disk.

Scenes are rendered small by the demo scene renderer and upscaled with camera-like noise, so a
photo costs what a real 12 MP JPEG costs to read and decode (~2-4 MB, full DCT detail), and its
content is what the demo models know. One cache folder per size and seed grows on demand:
asking for more photos generates only the missing ones, and a run asking for fewer uses the
first `count` of them (photo `i` is the same whatever the count).
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
DEPLOYMENTS = 4


def photo_path(folder: Path, index: int) -> Path:
    return folder / f"cam{index % DEPLOYMENTS:02d}" / f"IMG_{index:05d}.JPG"


def _one(args: tuple[Path, int, int, int, int]) -> str:
    folder, index, width, height, seed = args
    path = photo_path(folder, index)
    if path.exists():
        return str(path)
    rng = np.random.default_rng(seed * 100_003 + index)
    kind = KINDS[index % len(KINDS)]
    species = SPECIES[index % len(SPECIES)] if kind == "animal" else None
    scene, _ = render_scene(
        rng, width // 4, height // 4, kind, species=species, night=index % 5 == 0
    )
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
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")  # a killed run must not leave a half photo under its name
    temporary.write_bytes(buffer.getvalue())
    temporary.rename(path)
    return str(path)


def ensure_photos(
    cache: Path, count: int, width: int = 4000, height: int = 3000, seed: int = 1
) -> list[Path]:
    """Paths of photos 0..count-1 (four deployments) of this size and seed, generated once."""
    folder = cache.resolve() / f"{width}x{height}-seed{seed}"
    jobs = [(folder, i, width, height, seed) for i in range(count)]
    missing = [job for job in jobs if not photo_path(folder, job[1]).exists()]
    if missing:
        with ProcessPoolExecutor(max_workers=2) as pool:
            list(pool.map(_one, missing, chunksize=4))
    return [photo_path(folder, i) for i in range(count)]


def link_folder(paths: list[Path], folder: Path) -> Path:
    """A folder holding exactly `paths` (hard links, else copies), laid out by deployment."""
    import shutil

    for path in paths:
        target = folder / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.hardlink_to(path)
        except OSError:
            shutil.copyfile(path, target)
    return folder
