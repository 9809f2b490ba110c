"""Datasets as tensors in [-1, 1]: scikit-learn's digits (offline) or a folder of PNG/JPEG images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass
class Split:
    images: torch.Tensor  # [N, C, H, W] float32 in [-1, 1]
    labels: torch.Tensor  # [N] int64 (class index; 0 everywhere for an unlabelled folder)
    num_classes: int
    name: str


class DataError(ValueError):
    """A dataset cannot be read; the message names the file or folder."""


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # values 0..16 -> 0..1
    return images[:, None], bunch.target.astype(np.int64)


def _folder(folder: Path, channels: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every image, centre-cropped to a square and resized to `size`: folders of mixed sizes
    work as long as no image is smaller than `size`."""
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise DataError(f"data.folder: {folder} is not a folder")
    everything = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    others = [p for p in everything if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise DataError(f"data.folder: {others[0]} is not a PNG or JPEG image ({len(others)} such files); "
                        "move non-image files out of the data folder")
    files = everything
    if not files:
        raise DataError(f"data.folder: {folder} holds no PNG or JPEG images")
    classes = sorted({p.parent.relative_to(folder).as_posix() for p in files})
    index = {c: i for i, c in enumerate(classes)}
    images, labels = [], []
    mode = "L" if channels == 1 else "RGB"
    for path in files:
        try:
            with Image.open(path) as im:
                if min(im.size) < size:
                    raise DataError(f"{path}: {im.width}x{im.height} is smaller than data.image_size {size}; "
                                    "upsampling would invent detail. Lower data.image_size or remove the image")
                im = im.convert(mode)
                side = min(im.size)  # centre crop to a square, then resize
                left, top = (im.width - side) // 2, (im.height - side) // 2
                im = im.crop((left, top, left + side, top + side))
                im = im.resize((size, size), Image.BICUBIC)
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from exc
        images.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
        labels.append(index[path.parent.relative_to(folder).as_posix()])
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _to_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """Digits are 8x8. Growing them by an even margin pads with background, which keeps every
    original pixel exact (no interpolation blur) and gives a U-Net room for two 2x downsamplings
    (12 -> 6 -> 3), at about half the cost of 16x16. Other sizes are resampled bilinearly."""
    margin = size - x.shape[-1]
    if margin > 0 and margin % 2 == 0:
        return F.pad(x, (margin // 2,) * 4, value=0.0)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def load_split(data_cfg: dict, split: str) -> Split:
    """The deterministic `train` or `test` split of the configured dataset."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"unknown split {split!r}; use train, test or all")
    size = data_cfg["image_size"]
    if data_cfg["dataset"] == "digits":
        images, labels = _digits()
    else:
        images, labels = _folder(Path(data_cfg["folder"]), data_cfg["channels"], size)
    x = torch.from_numpy(images)
    if x.shape[-1] != size:
        x = _to_size(x, size)
    x = (x.clamp(0, 1) * 2 - 1).contiguous()
    y = torch.from_numpy(labels)
    num_classes = int(y.max()) + 1
    if split != "all":
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(data_cfg["split_seed"]))
        n_test = max(1, int(round(len(x) * data_cfg["test_fraction"])))
        idx = perm[:n_test] if split == "test" else perm[n_test:]
        idx = idx.sort().values
        x, y = x[idx], y[idx]
    return Split(images=x, labels=y, num_classes=num_classes, name=split)
