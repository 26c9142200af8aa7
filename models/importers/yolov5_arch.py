"""The YOLOv5 inference modules that MegaDetector v5 checkpoints are pickled from, in plain torch.

MegaDetector v5a/v5b are pickles of whole `nn.Module` trees whose classes live in the YOLOv5
repository's top-level `models.yolo` / `models.common` modules. Unpickling restores each
object's `__dict__` (submodules, buffers, attributes such as `f`, `i`, `stride`, `anchors`) into
whatever class the unpickler hands back for a name, then calls no constructor. So the classes
below only need YOLOv5's attribute names and forward passes, not its code: they are written
from the module semantics here (Apache-2.0), and YOLOv5 itself (AGPL-3.0, plus ultralytics,
opencv and friends as dependencies) is never imported. `YOLOV5_CLASSES` is the one place that
says which pickled name becomes which class; `checkpoint_loader.py` uses it.

Quirks of real YOLOv5 checkpoints handled here:
- `Detect.grid` / `anchor_grid` were lists in v6+ and a registered buffer in v5.0; `forward`
  below uses neither: it builds the grid from the feature map size and the `anchors` buffer
  (in stride units since Model.__init__ divides them), so both kinds export the same way.
- `models.yolo.DetectionModel` (YOLOv5 v7) and `models.yolo.Model` (v6, MegaDetector v5) are one
  class.
- `nn.Upsample` pickled by torch < 1.11 lacks `recompute_scale_factor`: `patch_loaded` adds it.

`build_yolov5(cfg)` builds the same tree from a YOLOv5 model yaml (as a dict) with random
weights: the tests make tiny MegaDetector-shaped checkpoints with it, and the Triton benchmark
builds a MegaDetector-v5-sized network (`YOLOV5X6`) at 1280.
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


def autopad(k: int, p: int | None = None, d: int = 1) -> int:
    if d > 1:
        k = d * (k - 1) + 1
    return k // 2 if p is None else p


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU; attributes conv, bn, act as in YOLOv5."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = (
            nn.SiLU() if act is True else act if isinstance(act, nn.Module) else nn.Identity()
        )

    def forward(self, x):
        if not hasattr(self, "bn"):  # a checkpoint saved after YOLOv5's fuse()
            return self.act(self.conv(x))
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class SPP(nn.Module):
    def __init__(self, c1, c2, k=(5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x):
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class Focus(nn.Module):
    """Space-to-depth stem of YOLOv5 before v6 (v6 replaced it with a 6x6 stride-2 Conv)."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act)

    def forward(self, x):
        return self.conv(
            torch.cat(
                (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1
            )
        )


class Concat(nn.Module):
    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class Detect(nn.Module):
    """YOLOv5 head: per level, na anchors x (cx, cy, w, h, objectness, nc class scores).

    Inference output (B, sum(na * ny * nx), 5 + nc) in input pixels, sigmoid scores: the
    `yolov5` layout of `models/yolo.py`.
    """

    def __init__(self, nc=80, anchors=(), ch=(), inplace=True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace
        self.stride = None  # set by Model (pixels per cell of each level)

    def forward(self, x):
        x = list(x)
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if self.training:
                continue
            grid, anchor_grid = self._make_grid(nx, ny, i, x[i].dtype, x[i].device)
            xy, wh, conf = x[i].sigmoid().split((2, 2, self.no - 4), 4)
            xy = (xy * 2 + grid) * self.stride[i]
            wh = (wh * 2) ** 2 * anchor_grid
            z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        return x if self.training else (torch.cat(z, 1), x)

    def _make_grid(self, nx: int, ny: int, i: int, dtype, device):
        shape = 1, self.na, ny, nx, 2
        # float32 ranges, then cast: ONNX Range has no float16 (an fp16 export would not load).
        y = torch.arange(ny, device=device, dtype=torch.float32)
        x = torch.arange(nx, device=device, dtype=torch.float32)
        yv, xv = torch.meshgrid(y, x, indexing="ij")
        grid = (torch.stack((xv, yv), 2).expand(shape) - 0.5).to(dtype)
        anchors = (self.anchors[i] * self.stride[i]).to(dtype)
        return grid, anchors.view((1, self.na, 1, 1, 2)).expand(shape)


class Model(nn.Module):
    """YOLOv5 detection model: `model` is an nn.Sequential whose layers carry `f` (inputs) and `i`."""

    def __init__(self, cfg: dict, ch: int = 3, nc: int | None = None):
        super().__init__()
        self.yaml = copy.deepcopy(cfg)
        if nc is not None:
            self.yaml["nc"] = nc
        self.model, self.save = parse_model(copy.deepcopy(self.yaml), [ch])
        self.names = [str(i) for i in range(self.yaml["nc"])]
        self.inplace = True
        head = self.model[-1]
        s = 256
        with torch.no_grad():
            head.stride = torch.tensor(
                [s / f.shape[-2] for f in self.forward(torch.zeros(1, ch, s, s))]
            )
        head.anchors /= head.stride.view(-1, 1, 1)
        self.stride = head.stride
        self._initialize_biases()

    def forward(self, x):
        y: list[Any] = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def _initialize_biases(self) -> None:
        """YOLOv5's prior: few objects per cell, classes equally likely."""
        head = self.model[-1]
        for conv, s in zip(head.m, head.stride):
            b = conv.bias.view(head.na, -1)
            with torch.no_grad():
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5 : 5 + head.nc] += math.log(0.6 / (head.nc - 0.99999))


DetectionModel = Model


def _make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


_BLOCKS: dict[str, type[nn.Module]] = {
    "Conv": Conv, "Bottleneck": Bottleneck, "C3": C3, "SPPF": SPPF, "SPP": SPP, "Focus": Focus,
    "Concat": Concat, "Detect": Detect, "nn.Upsample": nn.Upsample, "nn.BatchNorm2d": nn.BatchNorm2d,
}  # fmt: skip


def parse_model(d: dict, ch: list[int]) -> tuple[nn.Sequential, list[int]]:
    """YOLOv5's yaml rules: depth/width multiples, channel bookkeeping, `f`/`i` per layer."""
    anchors, nc, gd, gw = d["anchors"], d["nc"], d["depth_multiple"], d["width_multiple"]
    na = len(anchors[0]) // 2
    no = na * (nc + 5)
    layers, save, c2 = [], [], ch[-1]
    for i, (f, n, name, args) in enumerate(d["backbone"] + d["head"]):
        m = _BLOCKS[name]
        args = [nc if a == "nc" else anchors if a == "anchors" else a for a in args]
        n = max(round(n * gd), 1) if n > 1 else n
        if m in (Conv, Bottleneck, C3, SPPF, SPP, Focus):
            c1, c2 = ch[f], args[0]
            if c2 != no:
                c2 = _make_divisible(c2 * gw, 8)
            args = [c1, c2, *args[1:]]
            if m is C3:
                args.insert(2, n)
                n = 1
        elif m is nn.BatchNorm2d:
            args = [ch[f]]
        elif m is Concat:
            c2 = sum(ch[x] for x in f)
        elif m is Detect:
            args.append([ch[x] for x in f])
        else:
            c2 = ch[f]
        block = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        block.i, block.f, block.type = i, f, name
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(block)
        if i == 0:
            ch = []
        ch.append(c2)
    return nn.Sequential(*layers), sorted(save)


def _p6_config(depth: float, width: float, nc: int) -> dict:
    """YOLOv5 P6 (four output levels, strides 8-64): the family of MegaDetector v5 (x6)."""
    return {
        "nc": nc, "depth_multiple": depth, "width_multiple": width,
        "anchors": [[19, 27, 44, 40, 38, 94], [96, 68, 86, 152, 180, 137],
                    [140, 301, 303, 264, 238, 542], [436, 615, 739, 380, 925, 792]],
        "backbone": [
            [-1, 1, "Conv", [64, 6, 2, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 3, "C3", [128]],
            [-1, 1, "Conv", [256, 3, 2]], [-1, 6, "C3", [256]], [-1, 1, "Conv", [512, 3, 2]],
            [-1, 9, "C3", [512]], [-1, 1, "Conv", [768, 3, 2]], [-1, 3, "C3", [768]],
            [-1, 1, "Conv", [1024, 3, 2]], [-1, 3, "C3", [1024]], [-1, 1, "SPPF", [1024, 5]],
        ],
        "head": [
            [-1, 1, "Conv", [768, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
            [[-1, 8], 1, "Concat", [1]], [-1, 3, "C3", [768, False]],
            [-1, 1, "Conv", [512, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
            [[-1, 6], 1, "Concat", [1]], [-1, 3, "C3", [512, False]],
            [-1, 1, "Conv", [256, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
            [[-1, 4], 1, "Concat", [1]], [-1, 3, "C3", [256, False]],
            [-1, 1, "Conv", [256, 3, 2]], [[-1, 20], 1, "Concat", [1]], [-1, 3, "C3", [512, False]],
            [-1, 1, "Conv", [512, 3, 2]], [[-1, 16], 1, "Concat", [1]], [-1, 3, "C3", [768, False]],
            [-1, 1, "Conv", [768, 3, 2]], [[-1, 12], 1, "Concat", [1]], [-1, 3, "C3", [1024, False]],
            [[23, 26, 29, 32], 1, "Detect", ["nc", "anchors"]],
        ],
    }  # fmt: skip


YOLOV5X6 = _p6_config(1.33, 1.25, 3)  # MegaDetector v5a/v5b: YOLOv5x6, 3 classes, 1280 input
YOLOV5N6 = _p6_config(0.33, 0.25, 3)  # the same family at its smallest
TINY_P6 = _p6_config(0.33, 0.0625, 3)  # 8-64 channels: test checkpoints that load in milliseconds


def build_yolov5(cfg: dict, names: tuple[str, ...] = ("animal", "person", "vehicle")) -> Model:
    """A randomly initialised YOLOv5 of `cfg`, in eval mode, classes named like MegaDetector's."""
    model = Model(cfg, nc=len(names))
    model.names = {i: n for i, n in enumerate(names)}
    return model.eval()


# --------------------------------------------------------------------------------------------
# The names a YOLOv5 pickle uses, and writing checkpoints the way MegaDetector's were written.

_COMMON = ("Conv", "Bottleneck", "C3", "SPPF", "SPP", "Focus", "Concat")
YOLOV5_CLASSES: dict[tuple[str, str], type[nn.Module]] = {
    **{("models.common", n): globals()[n] for n in _COMMON},
    ("models.yolo", "Model"): Model,
    ("models.yolo", "DetectionModel"): Model,
    ("models.yolo", "Detect"): Detect,
}
# Checkpoints saved through the `yolov5` pip package name the same classes under `yolov5.`.
YOLOV5_CLASSES.update({("yolov5." + m, n): c for (m, n), c in list(YOLOV5_CLASSES.items())})


def patch_loaded(model: nn.Module) -> nn.Module:
    """Make a freshly unpickled tree run on this torch (what YOLOv5's attempt_load patches)."""
    for m in model.modules():
        if isinstance(m, nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None
        if isinstance(m, Detect):
            m.inplace = True
    return model


@contextlib.contextmanager
def _named_as_yolov5_repo() -> Iterator[None]:
    """While saving: the classes report the YOLOv5 repository's module names, as in MD files.

    pickle writes `cls.__module__` and checks that `sys.modules[module].<name>` is the class,
    so temporary `models`, `models.yolo`, `models.common` modules point at the classes here.
    Everything is restored on exit; nothing named `models` stays importable.
    """
    saved_modules = {k: sys.modules.get(k) for k in ("models", "models.yolo", "models.common")}
    saved_names = {cls: cls.__module__ for cls in set(YOLOV5_CLASSES.values())}
    fake = {k: types.ModuleType(k) for k in saved_modules}
    try:
        for (module, name), cls in YOLOV5_CLASSES.items():
            if module.startswith("models."):
                setattr(fake[module], name, cls)
                if name != "DetectionModel":
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


def save_yolov5_checkpoint(model: Model, path: Path, half: bool = True, **extra: Any) -> None:
    """`torch.save({'model': ..., 'epoch': ...})` as YOLOv5's train.py + strip_optimizer do.

    The pickle names `models.yolo.Model`, `models.common.Conv`, ... exactly like a MegaDetector
    v5 file, and the weights are fp16 as in the released files.
    """
    model = copy.deepcopy(model)
    if half:
        model = model.half()
    ckpt = {"epoch": -1, "best_fitness": None, "model": model, "ema": None, "updates": None,
            "optimizer": None, "wandb_id": None, **extra}  # fmt: skip
    with _named_as_yolov5_repo():
        torch.save(ckpt, path)
