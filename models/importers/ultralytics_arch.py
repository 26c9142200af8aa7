"""The ultralytics modules that YOLOv8 / YOLO11 detection checkpoints (MDv1000, MDv6) pickle.

Like `yolov5_arch.py`: an ultralytics `.pt` is a pickle of a whole `DetectionModel` tree whose
classes live in `ultralytics.nn.tasks` / `ultralytics.nn.modules.{conv,block,head}`. Unpickling
restores each object's `__dict__` (submodules, `f`/`i` routing, `stride`, `nc`, `reg_max`...)
into whatever class the unpickler hands back, and calls no constructor, so these classes need
only ultralytics' attribute and parameter names and forward passes. They are written here from
the module semantics (Apache-2.0); ultralytics (AGPL-3.0, needs torchvision) is never imported.
Names and semantics were read from ultralytics/ultralytics: `ultralytics/nn/modules/conv.py`
@007216d4, `block.py` @00779d6a (DFL, Bottleneck, C2f, C3, SPPF) plus the YOLO11 blocks
(C3k2, C3k, Attention, PSABlock, C2PSA) as released in 8.3, `head.py` @001ce22b (Detect),
`ultralytics/nn/tasks.py` @002217d4 (DetectionModel, parse_model).

Quirks of real ultralytics checkpoints handled here:
- `Detect.cv3` is `Conv, Conv, Conv2d` per level for YOLOv8 (`legacy`) and `DWConv+Conv` pairs
  for YOLO11; it is pickled as built, so `forward` just runs whatever Sequential it holds.
- `Detect.stride` (and `DetectionModel.stride`) are plain tensor attributes, not buffers: a
  `.half()` checkpoint stores them in fp16 and `Module.float()` would not convert them, so the
  head reads them as Python floats. `anchors`/`strides`/`shape` caches pickled by older releases
  are ignored: the grid is built from each feature map's size on every call.
- YOLOv10 / YOLO26 end-to-end heads (`one2one_cv2`, `end2end`) answer top-k rows, not
  (B, 4 + nc, N): `ultralytics_loader.py` refuses them.
- A checkpoint saved after `fuse()` has Conv without `bn`: Conv then runs conv + act only.

`ultralytics_build.py` builds these trees from a model yaml with random weights and pickles
them under ultralytics' names (the tests' checkpoints).
"""

from __future__ import annotations

import math
import types
import warnings
from typing import Any

import torch
from torch import nn

from trapline.models.importers.yolov5_arch import autopad


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + SiLU: attributes conv, bn, act (ultralytics conv.Conv)."""

    default_act = nn.SiLU()

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = (
            self.default_act
            if act is True
            else act
            if isinstance(act, nn.Module)
            else nn.Identity()
        )

    def forward(self, x):
        if not hasattr(self, "bn"):  # saved after ultralytics' fuse()
            return self.act(self.conv(x))
        return self.act(self.bn(self.conv(x)))


class DWConv(Conv):
    """Depth-wise Conv (groups = gcd(c1, c2)); YOLO11's Detect.cv3 uses it."""

    def __init__(self, c1, c2, k=1, s=1, d=1, act=True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


class Concat(nn.Module):
    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class Bottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, g=1, k=(3, 3), e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, k[0], 1)
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """cv1 splits into two halves; each of `m` extends the last; cv2 fuses them all (YOLOv8)."""

    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(
            Bottleneck(self.c, self.c, shortcut, g, k=(3, 3), e=1.0) for _ in range(n)
        )

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C3(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(
            *(Bottleneck(c_, c_, shortcut, g, k=(1, 3), e=1.0) for _ in range(n))
        )

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3k(C3):
    """C3 whose bottlenecks use k x k kernels (inside YOLO11's m/l/x C3k2)."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5, k=3):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(
            *(Bottleneck(c_, c_, shortcut, g, k=(k, k), e=1.0) for _ in range(n))
        )


class C3k2(C2f):
    """C2f whose inner blocks are C3k (c3k=True) or plain Bottlenecks (YOLO11)."""

    def __init__(self, c1, c2, n=1, c3k=False, e=0.5, g=1, shortcut=True):
        super().__init__(c1, c2, n, shortcut, g, e)
        self.m = nn.ModuleList(
            C3k(self.c, self.c, 2, shortcut, g) if c3k else Bottleneck(self.c, self.c, shortcut, g)
            for _ in range(n)
        )


class SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class Attention(nn.Module):
    """Multi-head self-attention over H*W positions, q/k/v from one 1x1 conv, plus a 3x3
    depth-wise positional term on v."""

    def __init__(self, dim, num_heads=8, attn_ratio=0.5):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim**-0.5
        self.qkv = Conv(dim, dim + 2 * self.key_dim * num_heads, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.qkv(x).view(b, self.num_heads, self.key_dim * 2 + self.head_dim, h * w)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(x)


class PSABlock(nn.Module):
    def __init__(self, c, attn_ratio=0.5, num_heads=4, shortcut=True):
        super().__init__()
        self.attn = Attention(c, attn_ratio=attn_ratio, num_heads=num_heads)
        self.ffn = nn.Sequential(Conv(c, c * 2, 1), Conv(c * 2, c, 1, act=False))
        self.add = shortcut

    def forward(self, x):
        x = x + self.attn(x) if self.add else self.attn(x)
        return x + self.ffn(x) if self.add else self.ffn(x)


class C2PSA(nn.Module):
    """Half the channels through n PSABlocks (YOLO11's P5 attention), the other half as is."""

    def __init__(self, c1, c2, n=1, e=0.5):
        super().__init__()
        assert c1 == c2
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        # ultralytics uses self.c // 64 heads (0 below 64 channels); max(.., 1) lets tiny test
        # models exist. Real checkpoints store their num_heads; this line never runs for them.
        heads = max(self.c // 64, 1)
        self.m = nn.Sequential(
            *(PSABlock(self.c, attn_ratio=0.5, num_heads=heads) for _ in range(n))
        )

    def forward(self, x):
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class DFL(nn.Module):
    """Distribution Focal Loss integral: expected bin of a softmax over `c1` distance bins."""

    def __init__(self, c1=16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class Detect(nn.Module):
    """Anchor-free head: per level, cv2 -> 4 * reg_max distance bins, cv3 -> nc class logits.

    Inference output (B, 4 + nc, N), N = sum of H*W over levels: box centre and size in input
    pixels, then sigmoid class scores, no objectness (the `ultralytics` layout of models/yolo.py).
    """

    legacy = False  # YOLOv8-style cv3 when set before construction (parse_model does)

    def __init__(self, nc=80, ch=()):
        super().__init__()
        self.nc = nc
        self.nl = len(ch)
        self.reg_max = 16
        self.no = nc + self.reg_max * 4
        self.stride = torch.zeros(self.nl)
        c2, c3 = max((16, ch[0] // 4, self.reg_max * 4)), max(ch[0], min(self.nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1))
            for x in ch
        )
        if self.legacy:
            self.cv3 = nn.ModuleList(
                nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, self.nc, 1))
                for x in ch
            )
        else:
            self.cv3 = nn.ModuleList(
                nn.Sequential(
                    nn.Sequential(DWConv(x, x, 3), Conv(x, c3, 1)),
                    nn.Sequential(DWConv(c3, c3, 3), Conv(c3, c3, 1)),
                    nn.Conv2d(c3, self.nc, 1),
                )
                for x in ch
            )
        self.dfl = DFL(self.reg_max) if self.reg_max > 1 else nn.Identity()
        self.end2end = False

    def forward(self, x):
        bs = x[0].shape[0]
        boxes = torch.cat(
            [self.cv2[i](x[i]).view(bs, 4 * self.reg_max, -1) for i in range(self.nl)], -1
        )
        scores = torch.cat([self.cv3[i](x[i]).view(bs, self.nc, -1) for i in range(self.nl)], -1)
        if self.training:
            return {"boxes": boxes, "scores": scores, "feats": x}
        anchors, strides = self._anchors(x, boxes.dtype)
        lt, rb = self.dfl(boxes).chunk(2, 1)
        x1y1, x2y2 = anchors - lt, anchors + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides
        return torch.cat((dbox, scores.sigmoid()), 1), {"boxes": boxes, "scores": scores}

    def _anchors(self, feats, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell centres (2, N) in cells and each cell's stride (1, N) (ultralytics make_anchors)."""
        points, strides = [], []
        with warnings.catch_warnings():  # strides are constants of the model: baked in is right
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            level_strides = [float(s) for s in self.stride]
        for feat, stride in zip(feats, level_strides):
            h, w = feat.shape[-2:]
            # float32 ranges, then cast: ONNX Range has no float16.
            sy, sx = torch.meshgrid(
                torch.arange(h, dtype=torch.float32) + 0.5,
                torch.arange(w, dtype=torch.float32) + 0.5,
                indexing="ij",
            )
            points.append(torch.stack((sx, sy), -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), stride))
        return (
            torch.cat(points).transpose(0, 1).to(dtype),
            torch.cat(strides).transpose(0, 1).to(dtype),
        )

    def bias_init(self) -> None:
        for a, b, s in zip(self.cv2, self.cv3, self.stride):
            a[-1].bias.data[:] = 2.0
            b[-1].bias.data[: self.nc] = math.log(5 / self.nc / (640 / float(s)) ** 2)


class DetectionModel(nn.Module):
    """`model` is an nn.Sequential whose layers carry `f` (inputs) and `i`; `save` lists the
    layer outputs kept for later layers (ultralytics BaseModel._predict_once)."""

    def __init__(self, model: nn.Sequential, save: list[int], yaml: dict, names: dict):
        super().__init__()
        self.yaml = yaml
        self.model, self.save = model, save
        self.names = names
        self.inplace = True
        self.end2end = False
        self.stride = model[-1].stride

    def forward(self, x):
        y: list[Any] = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def _apply(self, fn, *args, **kwargs):
        """Also move/cast the head's plain-tensor stride (not a buffer), as ultralytics does."""
        self = super()._apply(fn, *args, **kwargs)
        head = self.model[-1]
        if isinstance(head, Detect) and isinstance(head.stride, torch.Tensor):
            head.stride = fn(head.stride)
        return self


# --------------------------------------------------------------------------------------------
# The names an ultralytics pickle uses, and writing checkpoints the way ultralytics does.

ULTRALYTICS_MODULES = {
    "ultralytics.nn.modules.conv": ("Conv", "DWConv", "Concat"),
    "ultralytics.nn.modules.block": ("DFL", "Bottleneck", "C2f", "C3", "C3k", "C3k2", "SPPF",
                                     "Attention", "PSABlock", "C2PSA"),
    "ultralytics.nn.modules.head": ("Detect",),
    "ultralytics.nn.tasks": ("DetectionModel",),
    "ultralytics.utils": ("IterableSimpleNamespace",),
}  # fmt: skip


class IterableSimpleNamespace(types.SimpleNamespace):
    """The trainer's settings, which ultralytics pickles as `model.args`; data only."""


ULTRALYTICS_CLASSES: dict[tuple[str, str], type] = {
    (module, name): globals()[name]
    for module, names in ULTRALYTICS_MODULES.items()
    for name in names
}


class Inert:
    """Stands in for a training-side object a checkpoint may carry (a loss, its assigner):
    keeps its pickled state, is never run."""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


# Pickled next to the model by some releases (model.args, model.criterion); never called.
ULTRALYTICS_CLASSES[("ultralytics.cfg", "IterableSimpleNamespace")] = IterableSimpleNamespace
for _name in ("v8DetectionLoss", "BboxLoss", "DFLoss"):
    ULTRALYTICS_CLASSES[("ultralytics.utils.loss", _name)] = Inert
ULTRALYTICS_CLASSES[("ultralytics.utils.tal", "TaskAlignedAssigner")] = Inert
