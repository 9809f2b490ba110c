"""A small stand-in for DINOv2's released ViT weights: the same parameter names and layout
(patch 14, a 37x37 position grid as for 518-pixel training, layer scale), 2 blocks of width 128
(2 heads of 64), random values, saved as a plain state dict (.pth) as DINOv2 releases them."""

from __future__ import annotations

from pathlib import Path

import torch

from lcsc.kernel.dinov2 import DinoViT


def build(path: Path, seed: int = 0, dim: int = 128, depth: int = 2) -> Path:
    gen = torch.Generator().manual_seed(seed)
    net = DinoViT(dim, depth, patch=14, grid=37)
    state = {
        k: torch.randn(v.shape, generator=gen) * (0.3 if v.dim() > 1 else 0.1) for k, v in net.state_dict().items()
    }
    for k in state:
        if k.endswith("norm1.weight") or k.endswith("norm2.weight") or k == "norm.weight":
            state[k] = 1 + state[k]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
