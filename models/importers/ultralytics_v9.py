"""The YOLOv9 (GELAN) blocks of ultralytics, in plain torch: YOLOv9-c/-m checkpoints.

Same approach as `ultralytics_arch.py` (attribute names and forward passes only; unpickling
restores the rest). Read from ultralytics/ultralytics `ultralytics/nn/modules/block.py`
(RepNCSPELAN4, RepCSP, RepBottleneck, ADown, SPPELAN) and `conv.py` @007216d4 (RepConv).
YOLOv9-e's extra CBLinear / CBFuse / Silence and YOLOv9-t/s's AConv / ELAN1 are not here: a
checkpoint using them is refused by name.

Quirk: `RepConv.bn` is `None` (a plain attribute, not a module) unless built with bn=True, and a
fused RepConv has `conv` instead of `conv1`/`conv2`; both are handled in `forward`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trapline.models.importers.ultralytics_arch import C3, Bottleneck, Conv


class RepConv(nn.Module):
    """3x3 conv+BN plus 1x1 conv+BN (plus identity BN when set), summed, then SiLU."""

    default_act = nn.SiLU()

    def __init__(self, c1, c2, k=3, s=1, p=1, g=1, d=1, act=True, bn=False):
        super().__init__()
        self.g, self.c1, self.c2 = g, c1, c2
        self.act = (
            self.default_act
            if act is True
            else act
            if isinstance(act, nn.Module)
            else nn.Identity()
        )
        self.bn = nn.BatchNorm2d(c1) if bn and c2 == c1 and s == 1 else None
        self.conv1 = Conv(c1, c2, k, s, p=p, g=g, act=False)
        self.conv2 = Conv(c1, c2, 1, s, p=(p - k // 2), g=g, act=False)

    def forward(self, x):
        if hasattr(self, "conv") and not hasattr(self, "conv1"):  # saved after fuse_convs()
            return self.act(self.conv(x))
        bn = getattr(self, "bn", None)
        identity = 0 if bn is None else bn(x)
        return self.act(self.conv1(x) + self.conv2(x) + identity)


class RepBottleneck(Bottleneck):
    def __init__(self, c1, c2, shortcut=True, g=1, k=(3, 3), e=0.5):
        super().__init__(c1, c2, shortcut, g, k, e)
        self.cv1 = RepConv(c1, int(c2 * e), k[0], 1)


class RepCSP(C3):
    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(RepBottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))


class RepNCSPELAN4(nn.Module):
    """GELAN block: cv1 splits in two halves; cv2 and cv3 (RepCSP + Conv) each extend the last;
    cv4 fuses the four."""

    def __init__(self, c1, c2, c3, c4, n=1):
        super().__init__()
        self.c = c3 // 2
        self.cv1 = Conv(c1, c3, 1, 1)
        self.cv2 = nn.Sequential(RepCSP(c3 // 2, c4, n), Conv(c4, c4, 3, 1))
        self.cv3 = nn.Sequential(RepCSP(c4, c4, n), Conv(c4, c4, 3, 1))
        self.cv4 = Conv(c3 + (2 * c4), c2, 1, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in (self.cv2, self.cv3))
        return self.cv4(torch.cat(y, 1))


class ADown(nn.Module):
    """Stride-2 downsampling: half the channels by a 3x3/2 conv, half by max-pool + 1x1 conv."""

    def __init__(self, c1, c2):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1 // 2, self.c, 3, 2, 1)
        self.cv2 = Conv(c1 // 2, self.c, 1, 1, 0)

    def forward(self, x):
        x = F.avg_pool2d(x, 2, 1, 0, False, True)
        x1, x2 = x.chunk(2, 1)
        return torch.cat((self.cv1(x1), self.cv2(F.max_pool2d(x2, 3, 2, 1))), 1)


class SPPELAN(nn.Module):
    def __init__(self, c1, c2, c3, k=5):
        super().__init__()
        self.c = c3
        self.cv1 = Conv(c1, c3, 1, 1)
        self.cv2 = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.cv3 = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.cv4 = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.cv5 = Conv(4 * c3, c2, 1, 1)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(m(y[-1]) for m in (self.cv2, self.cv3, self.cv4))
        return self.cv5(torch.cat(y, 1))


YOLOV9_MODULES = {
    "ultralytics.nn.modules.conv": ("RepConv",),
    "ultralytics.nn.modules.block": ("RepBottleneck", "RepCSP", "RepNCSPELAN4", "ADown",
                                     "SPPELAN"),
}  # fmt: skip
YOLOV9_CLASSES: dict[tuple[str, str], type] = {
    (module, name): globals()[name] for module, names in YOLOV9_MODULES.items() for name in names
}
