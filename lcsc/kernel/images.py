"""Sample grids: what a person looks at to judge a variant's images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .io import atomic_path


def by_class(images: torch.Tensor, labels: torch.Tensor, shown: int, num_classes: int) -> tuple[torch.Tensor, int]:
    """A class-conditional model's samples for a grid with one row per class (class 0 first):
    `shown // num_classes` (at least 1) samples of each class, in sample order; and the row length."""
    per = max(1, shown // num_classes)
    rows = []
    for c in range(num_classes):
        picked = images[(labels == c).nonzero().flatten()[:per].to(images.device)]
        if len(picked) < per:  # fewer samples of the class than a row holds: the row ends blank (white)
            picked = torch.cat(
                [picked, torch.ones((per - len(picked), *images.shape[1:]), dtype=images.dtype, device=images.device)]
            )
        rows.append(picked)
    return torch.cat(rows), per


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> None:
    """Images in [-1, 1] as one PNG grid."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    n, c, h, w = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    grid = torch.full((c, ncol * (h + 1) + 1, nrow * (w + 1) + 1), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = x[i]
    arr = grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr).resize((arr.shape[1] * 4, arr.shape[0] * 4), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
