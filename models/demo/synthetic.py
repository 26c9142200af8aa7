"""Seeded synthetic camera-trap scenes: the training data and test fixtures of the demo models.

No real camera-trap weights or labelled photos can be downloaded where Trapline is built and
tested, so the project makes its own: this module draws camera-trap-like frames (ground and
vegetation, tree trunks, rocks and bushes that are *not* objects, an info strip) with animals of
eight DeepFaune species, people or vehicles, and returns the ground-truth boxes in MegaDetector's
convention. The demo detector and classifier are trained on these frames (`train.py`), the
sample photos are drawn with them (`sample.py`), and tests and load tests render fresh ones.

It uses only numpy and Pillow (it runs on the runtime path, without torch) and is fast: the
scene is drawn at most `RENDER_MAX_WIDTH` pixels wide and then upscaled, so a 4000x3000 frame
takes a fraction of a second. Everything is a pure function of the `numpy.random.Generator`
passed in.

Over 400 lines because it draws the synthetic scenes (terrain, animals, people, vehicles, light),
one small function per element, all needed to make photos the models can learn from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

SPECIES: tuple[str, ...] = (
    "red deer", "roe deer", "wild boar", "fox", "badger", "chamois", "lynx", "lagomorph",
)  # fmt: skip
"""The DeepFaune labels the demo classifier learns; each has its own shape and pattern."""

KINDS: tuple[str, ...] = ("blank", "animal", "person", "vehicle")
RENDER_MAX_WIDTH = 640
"""Scenes are drawn at most this wide, then upscaled to the requested size."""
LETTERBOX_FILL = 114
"""Grey of the letterbox padding (YOLOv5 / MegaDetector)."""


@dataclass
class GroundTruthBox:
    """One drawn object; `bbox` is relative (x_min, y_min, width, height), top-left origin."""

    category: str  # "animal" | "person" | "vehicle"
    species: str | None  # one of SPECIES for animals, else None
    bbox: tuple[float, float, float, float]


# --------------------------------------------------------------------------------------------
# Shape helpers. Objects are built in a local frame: x points forward (towards the head),
# y points up, the ground is y = 0 and the body is about 1 unit long.

Shape = tuple[tuple[int, int, int], np.ndarray]  # (RGB colour, N x 2 polygon)


def _ell(cx: float, cy: float, rx: float, ry: float, rot: float = 0.0, n: int = 18) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(rot), math.sin(rot)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _limb(
    x0: float, y0: float, x1: float, y1: float, w0: float, w1: float | None = None
) -> np.ndarray:
    """A tapered quad from (x0, y0) (width w0) to (x1, y1) (width w1)."""
    w1 = w0 if w1 is None else w1
    dx, dy = x1 - x0, y1 - y0
    n = math.hypot(dx, dy) or 1.0
    px, py = -dy / n, dx / n
    return np.array(
        [
            [x0 + px * w0 / 2, y0 + py * w0 / 2],
            [x1 + px * w1 / 2, y1 + py * w1 / 2],
            [x1 - px * w1 / 2, y1 - py * w1 / 2],
            [x0 - px * w0 / 2, y0 - py * w0 / 2],
        ]
    )


def _poly(*pts: tuple[float, float]) -> np.ndarray:
    return np.array(pts, dtype=np.float64)


def _jit(
    rng: np.random.Generator, colour: tuple[int, int, int], amount: int = 18
) -> tuple[int, int, int]:
    c = np.asarray(colour) + rng.integers(-amount, amount + 1, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def _shade(colour: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, v * f))) for v in colour)  # type: ignore[return-value]


def _legs(
    out: list[Shape],
    colour: tuple[int, int, int],
    xs: tuple[float, float],
    top: float,
    width: float,
    rng: np.random.Generator,
    hoof: tuple[int, int, int] | None = None,
    far: bool = False,
) -> None:
    """A front and a hind leg from y=top to the ground, with a little stride."""
    for x in xs:
        sway = float(rng.uniform(-0.06, 0.06))
        if far:
            x += 0.05
        out.append((colour, _limb(x, top, x + sway, 0.0, width, width * 0.7)))
        if hoof is not None:
            out.append((hoof, _limb(x + sway, 0.06, x + sway, 0.0, width * 0.75)))


# --------------------------------------------------------------------------------------------
# The eight species. Each returns (shapes, eye positions) in the local frame. Identity is
# carried by shape and pattern (antlers, horns, ears, tail, stripes, spots, rump patch, leg
# length) so it survives the grey night frames; colour helps by day.


def _red_deer(rng: np.random.Generator) -> tuple[list[Shape], list[tuple[float, float]]]:
    body = _jit(rng, (135, 72, 40))
    dark, leg_h = _shade(body, 0.7), rng.uniform(0.58, 0.68)
    by = leg_h + 0.16
    s: list[Shape] = []
    _legs(s, _shade(body, 0.55), (0.33, -0.33), by, 0.07, rng, far=True)
    s.append((dark, _limb(-0.5, by + 0.12, -0.58, by - 0.02, 0.06, 0.04)))  # tail
    s.append((body, _ell(0.0, by, 0.52, 0.22)))
    s.append((_jit(rng, (190, 160, 115)), _ell(-0.44, by + 0.02, 0.1, 0.13)))  # pale rump
    _legs(s, dark, (0.36, -0.3), by, 0.08, rng, hoof=(30, 25, 20))
    hx, hy = 0.72, by + 0.55
    s.append(
        (dark, _poly((0.3, by + 0.15), (0.5, by - 0.05), (hx, hy - 0.05), (hx - 0.12, hy + 0.06)))
    )
    s.append((body, _ell(hx + 0.06, hy, 0.16, 0.08, rot=-0.35)))
    s.append((body, _ell(hx - 0.06, hy + 0.1, 0.08, 0.035, rot=0.6)))  # ear
    # Antlers: two tall branching beams, the red deer's mark.
    ant = _jit(rng, (175, 150, 112), 12)
    for off in (0.0, -0.07):
        bx, by0 = hx - 0.02 + off, hy + 0.07
        tip = (bx - 0.22 + off, by0 + 0.62)
        s.append((ant, _limb(bx, by0, bx - 0.08 + off, by0 + 0.3, 0.06, 0.05)))
        s.append((ant, _limb(bx - 0.08 + off, by0 + 0.3, *tip, 0.05, 0.03)))
        for frac, length in ((0.12, 0.2), (0.45, 0.22), (0.8, 0.16)):
            px = bx + (tip[0] - bx) * frac
            py = by0 + (tip[1] - by0) * frac
            s.append((ant, _limb(px, py, px + length, py + 0.09, 0.04, 0.02)))
    return s, [(hx + 0.08, hy + 0.02)]


def _roe_deer(rng: np.random.Generator) -> tuple[list[Shape], list[tuple[float, float]]]:
    body = _jit(rng, (150, 95, 55))
    dark, leg_h = _shade(body, 0.7), rng.uniform(0.5, 0.58)
    by = leg_h + 0.13
    s: list[Shape] = []
    _legs(s, _shade(body, 0.55), (0.3, -0.3), by, 0.055, rng, far=True)
    s.append((body, _ell(0.0, by, 0.45, 0.18)))
    s.append(((245, 242, 235), _ell(-0.4, by + 0.02, 0.12, 0.15)))  # large white rump patch
    _legs(s, dark, (0.33, -0.27), by, 0.06, rng, hoof=(25, 20, 15))
    hx, hy = 0.58, by + 0.42
    s.append(
        (
            body,
            _poly(
                (0.28, by + 0.1), (0.45, by - 0.05), (hx + 0.02, hy - 0.04), (hx - 0.08, hy + 0.05)
            ),
        )
    )
    s.append((body, _ell(hx + 0.06, hy, 0.12, 0.065, rot=-0.3)))
    s.append(((20, 18, 15), _ell(hx + 0.17, hy - 0.04, 0.03, 0.025)))  # black nose
    s.append(((235, 230, 220), _ell(hx + 0.12, hy - 0.06, 0.04, 0.02)))  # white chin
    s.append((dark, _ell(hx - 0.04, hy + 0.12, 0.04, 0.09, rot=-0.4)))  # big ears
    s.append((dark, _ell(hx - 0.09, hy + 0.1, 0.035, 0.08, rot=-0.6)))
    if rng.random() < 0.6:  # short spiked antlers (bucks)
        ant = (80, 65, 45)
        s.append((ant, _limb(hx + 0.0, hy + 0.06, hx + 0.02, hy + 0.24, 0.03, 0.015)))
        s.append((ant, _limb(hx - 0.03, hy + 0.06, hx - 0.03, hy + 0.22, 0.03, 0.015)))
    return s, [(hx + 0.06, hy + 0.02)]


def _wild_boar(rng: np.random.Generator) -> tuple[list[Shape], list[tuple[float, float]]]:
    body = _jit(rng, (62, 52, 44), 12)
    dark, leg_h = _shade(body, 0.6), rng.uniform(0.2, 0.25)
    by = leg_h + 0.24
    s: list[Shape] = []
    _legs(s, dark, (0.3, -0.3), by - 0.1, 0.09, rng, far=True)
    s.append((dark, _limb(-0.48, by + 0.1, -0.56, by - 0.12, 0.025)))  # thin tail
    s.append((body, _ell(0.0, by, 0.5, 0.27)))
    # Bristly mane along the back: a jagged ridge.
    xs = np.linspace(-0.25, 0.45, 12)
    ridge = [
        (float(x), by + 0.27 * math.sqrt(max(0.0, 1 - (x / 0.5) ** 2)) + (0.07 if i % 2 else 0.0))
        for i, x in enumerate(xs)
    ]
    s.append((dark, _poly(*ridge, (0.45, by + 0.1), (-0.25, by + 0.15))))
    _legs(s, _shade(body, 0.5), (0.33, -0.27), by - 0.1, 0.1, rng, hoof=(20, 18, 15))
    # Long wedge-shaped head ending in a flat snout, held low.
    s.append(
        (
            _shade(body, 0.85),
            _poly((0.36, by + 0.22), (0.42, by - 0.2), (0.82, by - 0.17), (0.84, by - 0.05)),
        )
    )
    s.append((_shade(body, 0.5), _ell(0.84, by - 0.11, 0.025, 0.065)))  # snout disc
    s.append(((230, 225, 210), _limb(0.76, by - 0.15, 0.8, by - 0.03, 0.02, 0.01)))  # tusk
    s.append((dark, _poly((0.42, by + 0.2), (0.4, by + 0.34), (0.5, by + 0.19))))  # ear
    return s, [(0.6, by - 0.02)]


def _fox(rng: np.random.Generator) -> tuple[list[Shape], list[tuple[float, float]]]:
    body = _jit(rng, (205, 105, 40))
    white, black = (240, 236, 228), (28, 22, 20)
    by = rng.uniform(0.28, 0.33) + 0.1
    s: list[Shape] = []
    _legs(s, black, (0.25, -0.25), by, 0.05, rng, far=True)
    # Long bushy tail held out behind, with a white tip.
    tail_y = by - rng.uniform(0.0, 0.12)
    s.append((body, _ell(-0.68, tail_y, 0.32, 0.09, rot=0.12)))
    s.append((white, _ell(-0.95, tail_y - 0.035, 0.07, 0.06)))
    s.append((body, _ell(0.0, by, 0.38, 0.13)))
    s.append((white, _ell(0.3, by - 0.04, 0.1, 0.08)))  # white chest
    _legs(s, black, (0.27, -0.22), by, 0.055, rng)
    hx, hy = 0.5, by + 0.2
    s.append((body, _ell(hx, hy, 0.1, 0.08)))
    s.append((body, _poly((hx + 0.05, hy + 0.04), (hx + 0.26, hy - 0.04), (hx + 0.05, hy - 0.07))))
    s.append((white, _poly((hx + 0.04, hy - 0.03), (hx + 0.24, hy - 0.04), (hx + 0.05, hy - 0.08))))
    s.append((black, _ell(hx + 0.26, hy - 0.04, 0.02, 0.018)))
    for ex in (-0.02, -0.09):  # big pointed ears with black backs
        s.append(
            (
                black,
                _poly(
                    (hx + ex - 0.05, hy + 0.05), (hx + ex, hy + 0.25), (hx + ex + 0.05, hy + 0.05)
                ),
            )
        )
        s.append(
            (
                body,
                _poly(
                    (hx + ex - 0.03, hy + 0.05), (hx + ex, hy + 0.19), (hx + ex + 0.03, hy + 0.05)
                ),
            )
        )
    return s, [(hx + 0.06, hy + 0.02)]


def _badger(rng: np.random.Generator) -> tuple[list[Shape], list[tuple[float, float]]]:
    body = _jit(rng, (135, 132, 125), 12)
    black, white = (20, 20, 22), (238, 236, 232)
    by = rng.uniform(0.11, 0.14) + 0.12
    s: list[Shape] = []
    _legs(s, black, (0.3, -0.3), by, 0.11, rng, far=True)
    s.append((body, _ell(0.0, by, 0.46, 0.19)))
    s.append(
        (black, _poly((-0.4, by - 0.08), (0.4, by - 0.08), (0.35, by - 0.17), (-0.35, by - 0.17)))
    )  # dark belly
    _legs(s, black, (0.32, -0.28), by, 0.12, rng)
    # Long wedge head, white with two bold black stripes running through the eyes.
    hx, hy = 0.45, by + 0.02
    s.append(
        (
            white,
            _poly(
                (hx - 0.05, hy + 0.15),
                (hx + 0.38, hy - 0.04),
                (hx + 0.36, hy - 0.09),
                (hx - 0.05, hy - 0.12),
            ),
        )
    )
    s.append(
        (
            black,
            _poly(
                (hx - 0.04, hy + 0.11),
                (hx + 0.3, hy - 0.02),
                (hx + 0.3, hy - 0.05),
                (hx - 0.04, hy + 0.03),
            ),
        )
    )
    s.append(
        (
            black,
            _poly(
                (hx - 0.04, hy - 0.02),
                (hx + 0.3, hy - 0.06),
                (hx + 0.3, hy - 0.08),
                (hx - 0.04, hy - 0.09),
            ),
        )
    )
    s.append((black, _ell(hx + 0.37, hy - 0.065, 0.025, 0.025)))
    s.append((white, _ell(hx - 0.03, hy + 0.14, 0.035, 0.025)))  # white-rimmed ear
    return s, [(hx + 0.12, hy + 0.03)]


def _chamois(rng: np.random.Generator) -> tuple[list[Shape], list[tuple[float, float]]]:
    body = _jit(rng, (72, 52, 38), 14)
    pale, black = (225, 215, 190), (18, 15, 12)
    leg_h = rng.uniform(0.46, 0.54)
    by = leg_h + 0.14
    s: list[Shape] = []
    _legs(s, black, (0.28, -0.28), by, 0.07, rng, far=True)
    s.append((body, _ell(0.0, by, 0.4, 0.2)))
    s.append((pale, _ell(-0.36, by - 0.04, 0.06, 0.1)))  # pale rear
    _legs(s, black, (0.3, -0.25), by, 0.075, rng)
    hx, hy = 0.5, by + 0.38
    s.append(
        (
            body,
            _poly(
                (0.22, by + 0.14), (0.42, by - 0.08), (hx + 0.05, hy - 0.05), (hx - 0.08, hy + 0.05)
            ),
        )
    )
    # Pale face with a black band from horn base through the eye to the muzzle.
    s.append((pale, _ell(hx + 0.06, hy, 0.12, 0.07, rot=-0.45)))
    s.append((black, _limb(hx - 0.02, hy + 0.06, hx + 0.14, hy - 0.07, 0.04, 0.03)))
    # Short black horns: straight up, then a sharp hook backwards.
    for off in (0.0, -0.045):
        x0, y0 = hx + off, hy + 0.06
        s.append((black, _limb(x0, y0, x0 + 0.01, y0 + 0.2, 0.035, 0.03)))
        s.append((black, _limb(x0 + 0.01, y0 + 0.2, x0 - 0.07, y0 + 0.15, 0.03, 0.015)))
    s.append((body, _ell(hx - 0.08, hy + 0.08, 0.06, 0.025, rot=0.5)))  # ear
    return s, [(hx + 0.05, hy + 0.02)]


def _lynx(rng: np.random.Generator) -> tuple[list[Shape], list[tuple[float, float]]]:
    body = _jit(rng, (185, 145, 95), 10)
    dark, black, pale = (70, 45, 25), (20, 18, 15), (235, 225, 205)
    leg_h = rng.uniform(0.42, 0.48)
    by = leg_h + 0.12
    s: list[Shape] = []
    _legs(s, _shade(body, 0.7), (0.27, -0.27), by, 0.09, rng, far=True)
    s.append((body, _ell(-0.4, by + 0.02, 0.1, 0.05, rot=0.4)))  # short bobbed tail
    s.append((black, _ell(-0.47, by + 0.05, 0.04, 0.04)))  # black tip
    s.append((body, _ell(0.0, by, 0.4, 0.17)))
    for _ in range(int(rng.integers(14, 20))):  # dark spots
        sx, sy = rng.uniform(-0.33, 0.32), rng.uniform(-0.11, 0.11)
        s.append((dark, _ell(float(sx), by + float(sy), 0.035, 0.028)))
    _legs(s, body, (0.3, -0.24), by, 0.1, rng)
    for lx in (0.3, -0.24):  # spotted legs
        s.append((dark, _ell(lx, by - 0.2, 0.025, 0.02)))
    hx, hy = 0.48, by + 0.2
    s.append(
        (pale, _poly((hx - 0.1, hy - 0.02), (hx + 0.06, hy - 0.16), (hx + 0.15, hy - 0.05)))
    )  # ruff
    s.append((body, _ell(hx, hy, 0.12, 0.1)))
    for ex in (-0.06, 0.03):  # ears with long black tufts
        s.append(
            (
                body,
                _poly(
                    (ex + hx - 0.04, hy + 0.07), (ex + hx, hy + 0.2), (ex + hx + 0.04, hy + 0.07)
                ),
            )
        )
        s.append((black, _limb(ex + hx, hy + 0.19, ex + hx + 0.01, hy + 0.3, 0.02, 0.008)))
    s.append((pale, _ell(hx + 0.09, hy - 0.03, 0.04, 0.03)))
    return s, [(hx + 0.05, hy + 0.03)]


def _lagomorph(rng: np.random.Generator) -> tuple[list[Shape], list[tuple[float, float]]]:
    body = _jit(rng, (140, 112, 82))
    dark, white, black = _shade(body, 0.7), (240, 238, 232), (20, 18, 15)
    s: list[Shape] = []
    s.append((dark, _ell(-0.1, 0.12, 0.2, 0.1)))  # long hind foot
    s.append((body, _ell(0.0, 0.3, 0.32, 0.22, rot=0.15)))  # round hunched body
    s.append((dark, _ell(-0.14, 0.22, 0.15, 0.15)))  # big haunch
    s.append((white, _ell(-0.33, 0.33, 0.06, 0.06)))  # white scut
    s.append((body, _limb(0.25, 0.25, 0.3, 0.0, 0.06, 0.05)))  # front leg
    hx, hy = 0.33, 0.48
    s.append((body, _ell(hx, hy, 0.13, 0.1, rot=-0.2)))
    # Very long upright ears with black tips.
    for ex, ang in ((-0.02, 0.3), (0.04, 0.15)):
        top = (hx + ex - 0.55 * math.sin(ang), hy + 0.55 * math.cos(ang))
        s.append((body, _limb(hx + ex, hy + 0.06, top[0], top[1], 0.08, 0.05)))
        s.append(
            (black, _limb(top[0] + 0.03 * math.sin(ang), top[1] - 0.08, top[0], top[1], 0.05, 0.04))
        )
    return s, [(hx + 0.05, hy + 0.02)]


_SPECIES_DRAW = {
    "red deer": _red_deer,
    "roe deer": _roe_deer,
    "wild boar": _wild_boar,
    "fox": _fox,
    "badger": _badger,
    "chamois": _chamois,
    "lynx": _lynx,
    "lagomorph": _lagomorph,
}
# Box width as a fraction of the image width: small animals stay smaller.
_SIZE = {
    "red deer": (0.16, 0.45),
    "roe deer": (0.12, 0.4),
    "wild boar": (0.12, 0.42),
    "fox": (0.11, 0.35),
    "badger": (0.11, 0.32),
    "chamois": (0.12, 0.4),
    "lynx": (0.1, 0.38),
    "lagomorph": (0.08, 0.24),
    "person": (0.08, 0.22),
    "vehicle": (0.25, 0.6),
}


def _person(rng: np.random.Generator) -> tuple[list[Shape], list[tuple[float, float]]]:
    skin = _jit(rng, [(230, 190, 160), (190, 140, 100), (120, 85, 60)][int(rng.integers(3))], 10)
    jacket = tuple(int(v) for v in rng.integers(20, 230, 3))
    trousers = tuple(int(v) for v in rng.integers(20, 140, 3))
    hair = _jit(rng, (50, 40, 30), 25)
    s: list[Shape] = []
    stride = float(rng.uniform(0.0, 0.18))
    side = rng.random() < 0.5
    hip, sh = 0.92, 1.42
    if side:  # walking, seen from the side
        s.append((_shade(trousers, 0.8), _limb(0.0, hip, -stride, 0.03, 0.13, 0.09)))
        s.append((trousers, _limb(0.0, hip, stride, 0.03, 0.14, 0.1)))
        for x in (-stride, stride):
            s.append(
                (
                    (30, 28, 25),
                    _poly((x - 0.05, 0.0), (x + 0.12, 0.0), (x + 0.1, 0.06), (x - 0.05, 0.06)),
                )
            )
        s.append((jacket, _poly((-0.12, hip - 0.05), (0.12, hip - 0.05), (0.11, sh), (-0.11, sh))))
        if rng.random() < 0.5:  # backpack
            s.append(
                (
                    _jit(rng, (60, 70, 50), 30),
                    _poly(
                        (-0.11, sh - 0.05),
                        (-0.26, sh - 0.08),
                        (-0.25, hip + 0.1),
                        (-0.11, hip + 0.1),
                    ),
                )
            )
        s.append(
            (
                _shade(jacket, 0.8),
                _limb(0.0, sh - 0.05, stride * 0.8 + 0.05, hip - 0.05, 0.09, 0.07),
            )
        )
        head_x = 0.02
    else:  # facing the camera
        for x in (-0.08, 0.08):
            s.append((trousers, _limb(x, hip, x * 1.3, 0.03, 0.13, 0.1)))
            s.append(((30, 28, 25), _ell(x * 1.3, 0.03, 0.07, 0.035)))
        s.append((jacket, _poly((-0.18, hip - 0.05), (0.18, hip - 0.05), (0.21, sh), (-0.21, sh))))
        for x in (-0.21, 0.21):
            s.append((_shade(jacket, 0.85), _limb(x, sh - 0.03, x * 1.25, hip - 0.05, 0.09, 0.07)))
            s.append((skin, _ell(x * 1.25, hip - 0.08, 0.04, 0.05)))
        head_x = 0.0
    s.append((skin, _limb(head_x, sh - 0.02, head_x, sh + 0.07, 0.08)))
    s.append((skin, _ell(head_x, sh + 0.16, 0.1, 0.12)))
    if rng.random() < 0.5:  # hat
        s.append(
            (
                _jit(rng, (90, 80, 60), 40),
                _poly(
                    (head_x - 0.14, sh + 0.2),
                    (head_x + 0.14, sh + 0.2),
                    (head_x + 0.09, sh + 0.31),
                    (head_x - 0.09, sh + 0.31),
                ),
            )
        )
    else:
        s.append((hair, _ell(head_x, sh + 0.23, 0.1, 0.06)))
    return s, []


def _vehicle(rng: np.random.Generator) -> tuple[list[Shape], list[tuple[float, float]]]:
    paint = tuple(int(v) for v in rng.integers(25, 235, 3))
    glass = _jit(rng, (70, 90, 105), 15)
    s: list[Shape] = []
    wheel_r = 0.34
    pickup = rng.random() < 0.4
    s.append(
        (
            paint,
            _poly((-2.1, 0.22), (2.1, 0.22), (2.15, 0.55), (2.0, 0.95), (-2.05, 0.98), (-2.1, 0.5)),
        )
    )
    if pickup:  # cab at the front, open bed behind
        s.append((paint, _poly((-0.2, 0.95), (1.05, 0.95), (0.75, 1.55), (-0.15, 1.58))))
        s.append((glass, _poly((0.05, 1.0), (0.9, 1.0), (0.68, 1.45), (0.05, 1.47))))
        s.append(
            (_shade(paint, 0.6), _poly((-2.0, 0.95), (-0.25, 0.95), (-0.25, 1.05), (-2.0, 1.05)))
        )
    else:  # estate / SUV cabin over most of the length
        s.append((paint, _poly((-1.95, 0.95), (1.1, 0.95), (0.6, 1.55), (-1.85, 1.6))))
        s.append((glass, _poly((-1.75, 1.02), (-0.65, 1.02), (-0.65, 1.5), (-1.7, 1.52))))
        s.append((glass, _poly((-0.5, 1.02), (0.95, 1.02), (0.52, 1.48), (-0.5, 1.5))))
    s.append((_shade(paint, 0.65), _limb(-2.1, 0.5, 2.1, 0.5, 0.03)))  # door line
    s.append(((240, 235, 200), _ell(2.08, 0.75, 0.06, 0.08)))  # headlight
    s.append(((170, 30, 25), _ell(-2.08, 0.78, 0.05, 0.08)))  # tail light
    s.append(
        ((35, 35, 35), _poly((-2.15, 0.18), (2.18, 0.18), (2.18, 0.32), (-2.15, 0.32)))
    )  # bumpers
    for wx in (-1.35, 1.35):
        s.append(((22, 22, 24), _ell(wx, wheel_r, wheel_r, wheel_r, n=22)))
        s.append(((150, 150, 155), _ell(wx, wheel_r, wheel_r * 0.45, wheel_r * 0.45)))
    return s, []


# --------------------------------------------------------------------------------------------
# Background and distractors.

_PALETTES = (  # (upper band: forest/sky, far ground, near ground)
    ((38, 58, 34), (92, 84, 58), (104, 88, 60)),  # forest floor
    ((64, 92, 48), (112, 128, 62), (96, 118, 52)),  # meadow
    ((150, 165, 180), (128, 120, 104), (112, 104, 90)),  # alpine
    ((45, 60, 45), (214, 218, 226), (232, 234, 240)),  # snow
    ((105, 78, 40), (122, 92, 52), (108, 80, 46)),  # autumn
)


def _lowfreq(rng: np.random.Generator, w: int, h: int, cells: tuple[int, int]) -> np.ndarray:
    small = rng.random((cells[1], cells[0]), dtype=np.float32)
    return np.asarray(
        Image.fromarray(small, mode="F").resize((w, h), Image.BICUBIC), dtype=np.float32
    )


def _background(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, float]:
    top, far, near = (
        np.asarray(_jit(rng, c, 14), dtype=np.float32)
        for c in _PALETTES[int(rng.integers(len(_PALETTES)))]
    )
    horizon = float(rng.uniform(0.22, 0.5))
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h
    t = np.clip((ys - horizon) / max(1e-3, 1.0 - horizon), 0.0, 1.0)[:, None, None]
    ground = far * (1.0 - t) + near * t
    soft = np.clip((ys - horizon) * h / 6.0 + 0.5, 0.0, 1.0)[:, None, None]  # soft horizon edge
    profile = top * (1.0 - soft) + ground * soft  # h x 1 x 3
    big = _lowfreq(rng, w, h, (6, 5))
    mid = _lowfreq(rng, w, h, (max(2, w // 10), max(2, h // 10)))
    img = profile * (0.75 + 0.45 * big)[..., None] + ((mid - 0.5) * 38.0)[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), horizon


@lru_cache(maxsize=16)
def _flash_map(w: int, h: int) -> np.ndarray:
    """Fall-off of an infrared flash: bright near the centre and the bottom, dark edges."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx / w - 0.5) / 0.7) ** 2 + ((yy / h - 0.62) / 0.75) ** 2
    out = np.clip(1.15 - 0.9 * r2, 0.15, 1.1).astype(np.float32)
    out.flags.writeable = False
    return out


def _distractors(
    rng: np.random.Generator,
    draw: ImageDraw.ImageDraw,
    w: int,
    h: int,
    horizon: float,
    ground_max: float,
) -> None:
    hy = horizon * h
    for _ in range(int(rng.integers(0, 4))):  # tree trunks from the top edge to the ground
        x = rng.uniform(-0.02, 1.0) * w
        tw = rng.uniform(0.02, 0.09) * w
        base = rng.uniform(hy + 0.05 * h, ground_max)
        birch = rng.random() < 0.25
        col = _jit(rng, (215, 212, 200) if birch else (72, 56, 40), 15)
        draw.polygon(
            [(x, -1), (x + tw * 0.85, -1), (x + tw * 1.05, base), (x - tw * 0.2, base)], fill=col
        )
        if birch:
            for _ in range(int(rng.integers(3, 8))):
                my = rng.uniform(0, base)
                draw.rectangle(
                    [x, my, x + tw * rng.uniform(0.3, 0.8), my + h * 0.01], fill=(35, 35, 35)
                )
        else:
            draw.line(
                [(x + tw * 0.3, 0), (x + tw * 0.35, base)],
                fill=_shade(col, 0.7),
                width=max(1, int(tw * 0.1)),
            )
    for _ in range(int(rng.integers(0, 4))):  # rocks
        rx, ry = rng.uniform(0.03, 0.13) * w, 0.0
        ry = rx * rng.uniform(0.4, 0.8)
        cx, cy = rng.uniform(0, w), rng.uniform(hy + ry, ground_max)
        pts = _ell(cx, cy - ry * 0.5, rx, ry, n=9) + rng.normal(0, rx * 0.08, (9, 2))
        col = _jit(rng, (128, 126, 120), 25)
        draw.polygon([tuple(p) for p in pts], fill=col)
        draw.polygon(
            [tuple(p) for p in _ell(cx - rx * 0.2, cy - ry * 0.8, rx * 0.5, ry * 0.35, n=8)],
            fill=_shade(col, 1.15),
        )
    for _ in range(int(rng.integers(0, 4))):  # bushes: clusters of leafy blobs
        cx, cy = rng.uniform(0, w), rng.uniform(hy, ground_max)
        size = rng.uniform(0.04, 0.14) * w
        col = _jit(rng, (58, 88, 42), 20)
        for _ in range(int(rng.integers(5, 10))):
            bx, by = cx + rng.normal(0, size * 0.45), cy - abs(rng.normal(0, size * 0.35))
            r = size * rng.uniform(0.2, 0.45)
            draw.ellipse([bx - r, by - r, bx + r, by + r], fill=_shade(col, rng.uniform(0.75, 1.2)))
    if rng.random() < 0.3:  # fallen log
        y = rng.uniform(hy + 0.05 * h, ground_max)
        x0, lw = rng.uniform(-0.2, 0.7) * w, rng.uniform(0.15, 0.5) * w
        th = rng.uniform(0.015, 0.04) * w
        draw.rectangle([x0, y - th, x0 + lw, y], fill=_jit(rng, (84, 64, 44), 15))
        draw.ellipse([x0 + lw - th * 0.4, y - th, x0 + lw + th * 0.4, y], fill=(150, 120, 85))


def _grass(
    rng: np.random.Generator,
    draw: ImageDraw.ImageDraw,
    w: int,
    h: int,
    ground_max: float,
    night: bool,
) -> None:
    """A few foreground blades that may cross the objects' feet, as in real camera traps."""
    for _ in range(int(rng.integers(0, 25))):
        x, y = rng.uniform(0, w), rng.uniform(ground_max - 0.12 * h, ground_max)
        ln = rng.uniform(0.02, 0.07) * h
        col = (150, 150, 150) if night else _jit(rng, (80, 110, 45), 25)
        draw.line([(x, y), (x + rng.normal(0, ln * 0.3), y - ln)], fill=col, width=max(1, w // 320))


def _info_strip(rng: np.random.Generator, img: Image.Image, strip_h: int) -> None:
    """Black band with text-like marks (date, time, temperature, camera name)."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, h - strip_h, w, h], fill=(8, 8, 8))
    ch = max(3, int(strip_h * 0.55))
    cw = max(2, int(ch * 0.6))
    y0 = h - strip_h + (strip_h - ch) // 2
    for start, n_chars in (
        (int(0.02 * w), int(rng.integers(16, 22))),
        (int(0.62 * w), int(rng.integers(8, 14))),
    ):
        x = start
        for i in range(n_chars):
            if i % 6 == 5:  # gaps between words
                x += cw
                continue
            mark = int(rng.integers(3))
            if mark == 0:
                draw.rectangle(
                    [x, y0, x + cw - 1, y0 + ch], outline=(235, 235, 235), width=max(1, cw // 4)
                )
            elif mark == 1:
                draw.rectangle(
                    [x + cw // 3, y0, x + cw // 3 + max(1, cw // 4), y0 + ch], fill=(235, 235, 235)
                )
            else:
                draw.rectangle(
                    [
                        x,
                        y0 + ch // 2 - max(1, ch // 10),
                        x + cw - 1,
                        y0 + ch // 2 + max(1, ch // 10),
                    ],
                    fill=(235, 235, 235),
                )
            x += int(cw * 1.4)


# --------------------------------------------------------------------------------------------
# Scenes.


def _draw_object(rng: np.random.Generator, kind: str, species: str | None):
    if kind == "animal":
        assert species is not None
        return _SPECIES_DRAW[species](rng)
    if kind == "person":
        return _person(rng)
    return _vehicle(rng)


def _place(
    rng: np.random.Generator,
    shapes: list[Shape],
    eyes: list[tuple[float, float]],
    size_key: str,
    w: int,
    h: int,
    horizon: float,
    ground_max: float,
    taken: list[tuple[float, float, float, float]],
) -> tuple[list[Shape], list[tuple[float, float]], tuple[float, float, float, float]]:
    """Scale, flip, tilt and position a local-frame object; returns image-space shapes and box."""
    pts = np.concatenate([p for _, p in shapes])
    lx0, ly0 = pts.min(axis=0)
    lx1, ly1 = pts.max(axis=0)
    lw, lh = lx1 - lx0, ly1 - ly0
    direction = 1.0 if rng.random() < 0.5 else -1.0
    tilt = float(rng.normal(0.0, 0.03))
    ground_top = horizon * h + 0.04 * h
    for _ in range(30):
        lo, hi = _SIZE[size_key]
        frac = rng.uniform(lo, hi)
        scale = frac * w / lw
        # The whole object must fit between the top edge and the ground band.
        scale = min(scale, 0.92 * ground_max / lh)
        bw, bh = lw * scale, lh * scale
        foot_lo = max(ground_top, bh + 0.01 * h)
        foot = rng.uniform(min(foot_lo, ground_max), ground_max)
        if rng.random() < 0.1:  # partly out of the frame, at most 30 %
            cx = rng.choice([rng.uniform(0.0, 0.2), rng.uniform(0.8, 1.0)]) * w
            cx = float(np.clip(cx, bw * 0.2, w - bw * 0.2))
        else:
            cx = rng.uniform(bw / 2, max(bw / 2 + 1, w - bw / 2))
        box = (cx - bw / 2, foot - bh, cx + bw / 2, foot)
        if all(_iou(box, t) < 0.05 for t in taken):
            break
    mid = (lx0 + lx1) / 2
    c, s_ = math.cos(tilt), math.sin(tilt)

    def tf(p: np.ndarray) -> np.ndarray:
        x = (p[:, 0] - mid) * scale * direction
        y = (p[:, 1] - ly0) * scale
        return np.stack([cx + c * x - s_ * y, foot - (s_ * x + c * y)], axis=1)

    out = [(col, tf(p)) for col, p in shapes]
    eyes_img = [tuple(tf(np.array([e]))[0]) for e in eyes]
    allp = np.concatenate([p for _, p in out])
    x0, y0 = np.maximum(allp.min(axis=0), 0.0)
    x1, y1 = allp.max(axis=0)
    x1, y1 = min(x1, w), min(y1, h)
    return out, eyes_img, (float(x0), float(y0), float(x1), float(y1))


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def render_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    kind: str,
    species: str | None = None,
    night: bool = False,
    n_objects: int = 1,
    *,
    scene_rng: np.random.Generator | None = None,
) -> tuple[Image.Image, list[GroundTruthBox]]:
    """Draw one camera-trap frame; returns the RGB image and its ground-truth boxes.

    `kind` is "blank", "animal", "person" or "vehicle"; an animal scene with `species=None`
    picks a species per object. Night frames are grey infrared-looking flash images.
    `scene_rng`, when given, draws the site (ground, trees, rocks, info strip) and the looks
    of the objects, while `rng` draws where the objects stand and the noise: frames of one
    burst pass generators with the same seed as `scene_rng`, so they share their background
    and show the same individual moving.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if species is not None and species not in SPECIES:
        raise ValueError(f"species must be one of {SPECIES}, not {species!r}")
    iw = min(width, RENDER_MAX_WIDTH)
    ih = max(8, round(height * iw / width))
    srng = rng if scene_rng is None else scene_rng
    bg, horizon = _background(srng, iw, ih)
    has_strip = srng.random() < 0.7
    ground_max = ih * (1.0 - 0.05 - srng.uniform(0.0, 0.06))
    _distractors(srng, ImageDraw.Draw(bg), iw, ih, horizon, ground_max)

    layer = Image.new("RGBA", (iw, ih), (0, 0, 0, 0))
    ldraw = ImageDraw.Draw(layer)
    boxes: list[GroundTruthBox] = []
    taken: list[tuple[float, float, float, float]] = []
    all_eyes: list[tuple[tuple[float, float], float]] = []
    n = 0 if kind == "blank" else max(1, n_objects)
    for _ in range(n):
        sp = (species or SPECIES[int(rng.integers(len(SPECIES)))]) if kind == "animal" else None
        shapes, eyes = _draw_object(srng, kind, sp)
        out, eyes_img, box = _place(
            rng, shapes, eyes, sp or kind, iw, ih, horizon, ground_max, taken
        )
        taken.append(box)
        for col, p in out:
            ldraw.polygon([tuple(q) for q in p], fill=(*col, 255))
        all_eyes += [(e, box[2] - box[0]) for e in eyes_img]
        x0, y0, x1, y1 = box
        boxes.append(GroundTruthBox(kind, sp, (x0 / iw, y0 / ih, (x1 - x0) / iw, (y1 - y0) / ih)))
    _grass(srng, ImageDraw.Draw(layer), iw, ih, ground_max, night)

    if night:
        # Infrared flash: grey, bright near the camera and the centre, dark far edges; the
        # objects reflect the flash more than the background does.
        gray = bg.convert("L").point(lambda v: int(v * 0.65))
        gray.paste(
            layer.convert("L").point(lambda v: int(v * 0.75 + 60)), (0, 0), layer.getchannel("A")
        )
        flash = _flash_map(iw, ih) * np.float32(rng.uniform(0.8, 1.15))
        lit = np.where(
            np.asarray(layer.getchannel("A")) > 0, np.maximum(flash, np.float32(0.6)), flash
        )
        g = np.asarray(gray, dtype=np.float32) * lit
        g += rng.standard_normal((ih, iw), dtype=np.float32) * 7.0
        tint = (1.0 + rng.uniform(-0.03, 0.03, 3)).astype(np.float32)
        img_arr = g[..., None] * tint
    else:
        bg.paste(layer, (0, 0), layer)
        img_arr = np.asarray(bg, dtype=np.float32) * np.float32(rng.uniform(0.8, 1.15))  # exposure
        img_arr += rng.standard_normal((ih, iw, 1), dtype=np.float32) * 4.0
    img = Image.fromarray(np.clip(img_arr, 0, 255).astype(np.uint8))
    if night:
        d = ImageDraw.Draw(img)
        for (ex, ey), bw in all_eyes:  # eyeshine
            r = max(1.0, bw * 0.012)
            d.ellipse([ex - r, ey - r, ex + r, ey + r], fill=(250, 250, 250))
    else:
        d = ImageDraw.Draw(img)
        for (ex, ey), bw in all_eyes:
            r = max(0.6, bw * 0.01)
            d.ellipse([ex - r, ey - r, ex + r, ey + r], fill=(12, 10, 8))
    if (iw, ih) != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    if has_strip:
        _info_strip(srng, img, max(6, round(0.035 * height)))
    return img, boxes


# --------------------------------------------------------------------------------------------
# The pre-processing the demo models were trained with (the pipeline's own code must match).


def letterbox(
    image: Image.Image, size: int = 320, resample: int = Image.BILINEAR
) -> tuple[np.ndarray, float, int, int]:
    """YOLOv5 letterbox: resize to fit `size` keeping aspect, centre on a 114-grey square.

    Returns the uint8 HxWx3 canvas, the scale r, and the left/top padding, so a box in canvas
    pixels maps back to the image with x_img = (x - left) / r, y_img = (y - top) / r.
    """
    w, h = image.size
    r = min(size / w, size / h)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    left, top = (size - nw) // 2, (size - nh) // 2
    canvas = np.full((size, size, 3), LETTERBOX_FILL, dtype=np.uint8)
    canvas[top : top + nh, left : left + nw] = np.asarray(
        image.convert("RGB").resize((nw, nh), resample)
    )
    return canvas, r, left, top


def square_crop_box(
    bbox: tuple[float, float, float, float], width: int, height: int
) -> tuple[int, int, int, int]:
    """DeepFaune's crop: the relative box made square by extending its short side, clipped.

    Returns pixel (left, top, right, bottom) for `Image.crop`.
    """
    x1, y1 = bbox[0] * width, bbox[1] * height
    x2, y2 = x1 + bbox[2] * width, y1 + bbox[3] * height
    xs, ys = x2 - x1, y2 - y1
    if xs > ys:
        y1, y2 = y1 - int((xs - ys) / 2), y2 + int((xs - ys) / 2)
    elif ys > xs:
        x1, x2 = x1 - int((ys - xs) / 2), x2 + int((ys - xs) / 2)
    left, top = max(0, int(x1)), max(0, int(y1))
    right, bottom = min(int(x2), width), min(int(y2), height)
    return left, top, max(right, left + 1), max(bottom, top + 1)


def crop_for_classifier(
    image: Image.Image, bbox: tuple[float, float, float, float], size: int = 182
) -> Image.Image:
    """Square crop of a relative box, resized bicubic to `size` (DeepFaune's input)."""
    box = square_crop_box(bbox, image.width, image.height)
    return image.crop(box).resize((size, size), Image.BICUBIC)


def render_crop(
    rng: np.random.Generator,
    species: str,
    size: int = 182,
    night: bool = False,
    jitter: float = 0.06,
) -> Image.Image:
    """A classifier training crop: a rendered scene cut the way the pipeline cuts detections.

    `jitter` moves the box edges by up to that fraction of its size, as a detector's box would.
    """
    width = int(rng.choice([640, 800, 1024]))
    height = int(width * (0.75 if rng.random() < 0.8 else 0.5625))
    img, boxes = render_scene(rng, width, height, "animal", species=species, night=night)
    x, y, w, h = boxes[0].bbox
    if jitter:
        d = rng.uniform(-jitter, jitter, 4)
        x0, y0 = x + d[0] * w, y + d[1] * h
        x1, y1 = x + w + d[2] * w, y + h + d[3] * h
        x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(1.0, x1), min(1.0, y1)
        x, y, w, h = x0, y0, max(1e-3, x1 - x0), max(1e-3, y1 - y0)
    return crop_for_classifier(img, (x, y, w, h), size)
