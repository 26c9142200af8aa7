"""Build ultralytics-style YOLOv8 / YOLO11 detection models and pickle them like ultralytics.

For tests and benchmarks: ultralytics' own `parse_model` rules (read at ultralytics/ultralytics
`ultralytics/nn/tasks.py` @002217d4), for the blocks `ultralytics_arch.py` re-implements, give
the same module tree, parameter names and `f`/`i`/`save` routing as a real checkpoint of that
yaml; `save_ultralytics_checkpoint` writes the dict ultralytics' trainer leaves, with the class
names (`ultralytics.nn.tasks.DetectionModel`, `ultralytics.nn.modules.block.C3k2`, ...) a real
MDv1000 / MDv6 `.pt` has.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trapline.models.importers.ultralytics_arch import (
    C2PSA,
    SPPF,
    ULTRALYTICS_CLASSES,
    ULTRALYTICS_MODULES,
    C2f,
    C3k2,
    Concat,
    Conv,
    Detect,
    DetectionModel,
    IterableSimpleNamespace,
)
from trapline.models.importers.ultralytics_v9 import (
    SPPELAN,
    YOLOV9_CLASSES,
    YOLOV9_MODULES,
    ADown,
    RepNCSPELAN4,
)


def _make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


_BLOCKS: dict[str, type[nn.Module]] = {
    "Conv": Conv, "C2f": C2f, "C3k2": C3k2, "SPPF": SPPF, "C2PSA": C2PSA, "Concat": Concat,
    "Detect": Detect, "nn.Upsample": nn.Upsample, "RepNCSPELAN4": RepNCSPELAN4, "ADown": ADown,
    "SPPELAN": SPPELAN,
}  # fmt: skip
_REPEATED = (C2f, C3k2, C2PSA)  # n goes into the block's args, not into a Sequential


def parse_model(d: dict, ch: int) -> tuple[nn.Sequential, list[int]]:
    """ultralytics' yaml rules for this subset: the `scale` row (depth, width, max_channels),
    channel bookkeeping, C3k2's c3k forced on for m/l/x, Detect `legacy` unless C3k2 seen."""
    nc = d["nc"]
    depth, width, max_channels = d["scales"][d["scale"]]
    legacy = True
    chs = [ch]
    layers, save = [], []
    c2 = ch
    for i, (f, n, name, args) in enumerate(d["backbone"] + d["head"]):
        m = _BLOCKS[name]
        args = list(args)
        n = max(round(n * depth), 1) if n > 1 else n
        if m in (Conv, C2f, C3k2, SPPF, C2PSA, RepNCSPELAN4, ADown, SPPELAN):
            c1, c2 = chs[f], args[0]
            if c2 != nc:
                c2 = _make_divisible(min(c2, max_channels) * width, 8)
            if m is C3k2:
                legacy = False
                if d["scale"] in "mlx":
                    args[1] = True
            args = [c1, c2, *args[1:]]
            if m in _REPEATED:
                args.insert(2, n)
                n = 1
        elif m is Concat:
            c2 = sum(chs[x] for x in f)
        elif m is Detect:
            args = [nc, [chs[x] for x in f]]
            m.legacy = legacy
        else:
            c2 = chs[f]
        try:
            block = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        finally:
            Detect.legacy = False
        block.i, block.f, block.type = i, f, name
        block.np = sum(p.numel() for p in block.parameters())
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(block)
        if i == 0:
            chs = []
        chs.append(c2)
    return nn.Sequential(*layers), sorted(save)


_SCALES = {"n": [0.50, 0.25, 1024], "s": [0.50, 0.50, 1024], "m": [0.50, 1.00, 512],
           "l": [1.00, 1.00, 512], "x": [1.00, 1.50, 512]}  # fmt: skip
YOLO11 = {  # ultralytics cfg/models/11/yolo11.yaml (MDv1000 "sorrel" is a YOLO11)
    "nc": 80, "scales": _SCALES, "scale": "n",
    "backbone": [
        [-1, 1, "Conv", [64, 3, 2]], [-1, 1, "Conv", [128, 3, 2]],
        [-1, 2, "C3k2", [256, False, 0.25]], [-1, 1, "Conv", [256, 3, 2]],
        [-1, 2, "C3k2", [512, False, 0.25]], [-1, 1, "Conv", [512, 3, 2]],
        [-1, 2, "C3k2", [512, True]], [-1, 1, "Conv", [1024, 3, 2]],
        [-1, 2, "C3k2", [1024, True]], [-1, 1, "SPPF", [1024, 5]], [-1, 2, "C2PSA", [1024]],
    ],
    "head": [
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]], [[-1, 6], 1, "Concat", [1]],
        [-1, 2, "C3k2", [512, False]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 4], 1, "Concat", [1]], [-1, 2, "C3k2", [256, False]],
        [-1, 1, "Conv", [256, 3, 2]], [[-1, 13], 1, "Concat", [1]], [-1, 2, "C3k2", [512, False]],
        [-1, 1, "Conv", [512, 3, 2]], [[-1, 10], 1, "Concat", [1]], [-1, 2, "C3k2", [1024, True]],
        [[16, 19, 22], 1, "Detect", ["nc"]],
    ],
}  # fmt: skip
YOLOV9C = {  # ultralytics cfg/models/v9/yolov9c.yaml (no scales: one width)
    "nc": 80, "scales": {"n": [1.0, 1.0, 1024]}, "scale": "n",
    "backbone": [
        [-1, 1, "Conv", [64, 3, 2]], [-1, 1, "Conv", [128, 3, 2]],
        [-1, 1, "RepNCSPELAN4", [256, 128, 64, 1]], [-1, 1, "ADown", [256]],
        [-1, 1, "RepNCSPELAN4", [512, 256, 128, 1]], [-1, 1, "ADown", [512]],
        [-1, 1, "RepNCSPELAN4", [512, 512, 256, 1]], [-1, 1, "ADown", [512]],
        [-1, 1, "RepNCSPELAN4", [512, 512, 256, 1]], [-1, 1, "SPPELAN", [512, 256]],
    ],
    "head": [
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]], [[-1, 6], 1, "Concat", [1]],
        [-1, 1, "RepNCSPELAN4", [512, 512, 256, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 4], 1, "Concat", [1]], [-1, 1, "RepNCSPELAN4", [256, 256, 128, 1]],
        [-1, 1, "ADown", [256]], [[-1, 12], 1, "Concat", [1]],
        [-1, 1, "RepNCSPELAN4", [512, 512, 256, 1]], [-1, 1, "ADown", [512]],
        [[-1, 9], 1, "Concat", [1]], [-1, 1, "RepNCSPELAN4", [512, 512, 256, 1]],
        [[15, 18, 21], 1, "Detect", ["nc"]],
    ],
}  # fmt: skip
YOLOV8 = {  # ultralytics cfg/models/v8/yolov8.yaml
    "nc": 80, "scale": "n",
    "scales": {"n": [0.33, 0.25, 1024], "s": [0.33, 0.50, 1024], "m": [0.67, 0.75, 768],
               "l": [1.00, 1.00, 512], "x": [1.00, 1.25, 512]},
    "backbone": [
        [-1, 1, "Conv", [64, 3, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 3, "C2f", [128, True]],
        [-1, 1, "Conv", [256, 3, 2]], [-1, 6, "C2f", [256, True]], [-1, 1, "Conv", [512, 3, 2]],
        [-1, 6, "C2f", [512, True]], [-1, 1, "Conv", [1024, 3, 2]], [-1, 3, "C2f", [1024, True]],
        [-1, 1, "SPPF", [1024, 5]],
    ],
    "head": [
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]], [[-1, 6], 1, "Concat", [1]],
        [-1, 3, "C2f", [512]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 4], 1, "Concat", [1]], [-1, 3, "C2f", [256]], [-1, 1, "Conv", [256, 3, 2]],
        [[-1, 12], 1, "Concat", [1]], [-1, 3, "C2f", [512]], [-1, 1, "Conv", [512, 3, 2]],
        [[-1, 9], 1, "Concat", [1]], [-1, 3, "C2f", [1024]], [[15, 18, 21], 1, "Detect", ["nc"]],
    ],
}  # fmt: skip


def tiny(cfg: dict, width: float = 0.0625) -> dict:
    """`cfg` at its smallest depth and `width` (test checkpoints that load in milliseconds).
    GELAN blocks' inner widths (args after the first) are not scaled by parse_model, so they
    are divided here."""
    cfg = copy.deepcopy(cfg)
    for layer in cfg["backbone"] + cfg["head"]:
        if layer[2] in ("RepNCSPELAN4", "SPPELAN"):
            layer[3] = (
                [layer[3][0]] + [max(int(a * width), 4) for a in layer[3][1:3]] + layer[3][3:]
            )
    cfg["scales"] = {**cfg["scales"], "tiny": [cfg["scales"]["n"][0], width, 1024]}
    cfg["scale"] = "tiny"
    return cfg


def build_ultralytics(
    cfg: dict, names: tuple[str, ...] = ("animal", "person", "vehicle"), ch: int = 3
) -> DetectionModel:
    """A randomly initialised model of `cfg` in eval mode, classes named like MegaDetector's
    (what ultralytics DetectionModel.__init__ does: parse, strides, bias and BN init)."""
    cfg = copy.deepcopy(cfg)
    cfg["nc"] = len(names)
    layers, save = parse_model(copy.deepcopy(cfg), ch)
    head = layers[-1]
    model = DetectionModel(layers, save, cfg, dict(enumerate(names)))
    s = 256
    with torch.no_grad():
        model.train()  # the training forward answers the raw maps, whose sizes give strides
        feats = model(torch.zeros(1, ch, s, s))["feats"]
    head.stride = torch.tensor([s / f.shape[-2] for f in feats])
    model.stride = head.stride
    head.bias_init()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = 1e-3, 0.03  # ultralytics initialize_weights
    return model.eval()


@contextlib.contextmanager
def named_as_ultralytics() -> Iterator[None]:
    """While saving: the classes report ultralytics' module names, as in a real `.pt`.

    pickle writes `cls.__module__` and checks that `sys.modules[module].<name>` is the class,
    so temporary `ultralytics.*` modules point at the classes here; all restored on exit.
    """
    modules = {m: ULTRALYTICS_MODULES.get(m, ()) + YOLOV9_MODULES.get(m, ())
               for m in {**ULTRALYTICS_MODULES, **YOLOV9_MODULES}}  # fmt: skip
    every = {**ULTRALYTICS_CLASSES, **YOLOV9_CLASSES}
    names = ["ultralytics", "ultralytics.nn", "ultralytics.nn.modules", *modules]
    names = list(dict.fromkeys(names))
    saved_modules = {k: sys.modules.get(k) for k in names}
    classes = {every[(m, n)] for m, ns in modules.items() for n in ns}
    saved_names = {cls: cls.__module__ for cls in classes}
    fake = {k: types.ModuleType(k) for k in names}
    try:
        for module, members in modules.items():
            for name in members:
                cls = every[(module, name)]
                setattr(fake[module], name, cls)
                cls.__module__ = module
        sys.modules.update(fake)
        yield
    finally:
        for cls, module in saved_names.items():
            cls.__module__ = module
        for k, v in saved_modules.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def save_ultralytics_checkpoint(
    model: DetectionModel, path: Path, half: bool = True, **extra: Any
) -> None:
    """`torch.save` of the dict ultralytics' trainer + strip_optimizer leave: fp16 model under
    'model', 'ema'/'optimizer' None, train_args as a plain dict."""
    model = copy.deepcopy(model)
    model.args = IterableSimpleNamespace(imgsz=640, task="detect")  # the trainer sets this
    if half:
        model = model.half()
    ckpt = {"date": "2025-01-01T00:00:00", "version": "8.3.0", "license": "AGPL-3.0",
            "epoch": -1, "best_fitness": None, "model": model, "ema": None, "updates": None,
            "optimizer": None, "train_args": {"imgsz": 640, "task": "detect"},
            "train_metrics": {}, "train_results": {}, **extra}  # fmt: skip
    with named_as_ultralytics():
        torch.save(ckpt, path)
