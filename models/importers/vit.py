"""DINOv2-style ViT (timm `vit_*_patch14_dinov2`) in plain torch, with timm's parameter names.

DeepFaune's checkpoint is the state_dict of timm's `vit_large_patch14_dinov2.lvd142m` (38-class
head) under a `base_model.` prefix. timm cannot be installed usefully here (it hard-requires
torchvision, whose PyPI wheels for torch 2.13 are CUDA builds that fail to load next to the CPU
torch), and the import needs only the forward pass, so this module rebuilds it: same parameter
names and shapes (a strict `load_state_dict` proves the match), same maths (pre-norm blocks,
LayerNorm eps 1e-6, layer scale, exact GELU, class-token pooling, linear head).

Position embeddings: DINOv2 is trained at 518 px (37 x 37 patches). DeepFaune runs it at 182
(13 x 13) with timm's `dynamic_img_size`, which resamples the 37 x 37 table on every forward
(bicubic, antialiased: timm's `resample_abs_pos_embed` defaults). That path does not export to
ONNX, so the importer resamples once (`resample_pos_embed`, the same call) and builds the model at
182; `forward_dynamic` keeps the on-the-fly path as the parity reference.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

KEY_PREFIX = "base_model."


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x):
        return x * self.gamma


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, layer_scale: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.ls1 = _LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, hidden)
        self.ls2 = _LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2ViT(nn.Module):
    """timm VisionTransformer as configured for DINOv2 (class token, no registers)."""

    def __init__(
        self,
        img_size: int,
        patch: int = 14,
        dim: int = 1024,
        depth: int = 24,
        heads: int = 16,
        hidden: int = 4096,
        num_classes: int = 38,
        layer_scale: bool = True,
    ):
        super().__init__()
        grid = img_size // patch
        self.patch = patch
        self.grid = grid
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, dim) * 0.02)
        self.blocks = nn.Sequential(
            *(_Block(dim, heads, hidden, layer_scale) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def _tokens(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)

    def _head(self, x):
        return self.head(self.norm(self.blocks(x))[:, 0])

    def forward(self, x):
        return self._head(self._tokens(x) + self.pos_embed)

    def forward_dynamic(self, x):
        """timm's dynamic_img_size path: resample the stored table to this input's grid."""
        grid = (x.shape[-2] // self.patch, x.shape[-1] // self.patch)
        return self._head(self._tokens(x) + resample_pos_embed(self.pos_embed, grid))


def resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1 + g*g, C) -> (1, 1 + grid[0]*grid[1], C); the class token's entry is kept as is."""
    old = int(math.isqrt(pos_embed.shape[1] - 1))
    if (old, old) == tuple(grid):
        return pos_embed
    prefix, table = pos_embed[:, :1], pos_embed[:, 1:]
    table = table.float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=grid, mode="bicubic", antialias=True, align_corners=False)
    table = table.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos_embed.dtype)
    return torch.cat([prefix, table], dim=1)


def config_from_state_dict(state: dict[str, torch.Tensor], heads: int | None) -> dict:
    """Architecture from tensor shapes; heads cannot be seen in weights (DINOv2: 64 per head)."""
    proj = state["patch_embed.proj.weight"]
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    return {
        "patch": patch,
        "dim": dim,
        "depth": len(blocks),
        "heads": heads or max(1, dim // 64),
        "hidden": int(state["blocks.0.mlp.fc1.weight"].shape[0]),
        "num_classes": int(state["head.weight"].shape[0]),
        "layer_scale": "blocks.0.ls1.gamma" in state,
        "trained_grid": int(math.isqrt(state["pos_embed"].shape[1] - 1)),
    }
