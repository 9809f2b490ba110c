"""A stand-in for clean-fid's TorchScript Inception, small enough for CPU tests: the same
interface (a `layers` module fed (x - 128) / 128 at 299x299, and `forward(x, return_features)`
that resizes inside, as NVIDIA's inception-2015-12-05.pt has), random fixed weights, 16-d output."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

DIM = 16


class Layers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=3, stride=2)
        self.conv2 = nn.Conv2d(8, DIM, kernel_size=5, stride=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(4 * self.conv1(x))  # 299 -> 149, sensitive to pixel-level detail
        h = torch.tanh(self.conv2(h))  # -> 49
        return 10 * h.mean(dim=(2, 3)).reshape(h.shape[0], h.shape[1], 1, 1)


class StandIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = Layers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128) / 128).reshape(x.shape[0], -1)


def build(path: str | Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    torch.jit.script(StandIn().eval()).save(str(path))
    return Path(path)
