"""Stage reference_stats: the mean and covariance of the reference images' features, from a split
of the dataset or from an image folder, cached by content. The key hashes the split's image
values (or the folder's file names and bytes) and the feature extractor (weights and mode), so
another experiment over the same data reuses them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..kernel.data import content_digest, load_split
from ..kernel.errors import ConfigError, DataError
from ..kernel.features import cache_dir, load_features
from ..kernel.fid import feature_stats, save_stats
from ..kernel.images import save_grid
from ..kernel.io import copy_file
from ..kernel.paths import dataset_name
from ..kernel.progress import progress

NAME = "reference_stats"


@dataclass(frozen=True)
class Paths:
    features: Path  # the feature network (or Inception descriptor)
    stats: Path  # the .npz of mu and sigma
    grid: Path | None = None  # a grid of the first reference images, for the report's side-by-side picture


# clean-fid's image types (PIL reads them all), hidden files skipped as data.folder does
FOLDER_SUFFIXES = {".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
# Bump when the preparation of images for features changes (quantisation, resize): cached
# reference stats made by the old code then stop matching.
FEATURE_PIPELINE_VERSION = 1
# Reference features kept beside mu and sigma for precision, recall and KID: at most this many,
# a seeded random subset of a larger set (the cache key carries the number, so older files
# without features are made again).
KEPT_FEATURES = 10000
REAL_GRID = 64  # reference images in the grid the report shows beside the samples


def _folder_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"features.reference_folder: {folder} is not a folder")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in FOLDER_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if len(files) < 2:
        raise DataError(
            f"features.reference_folder: {folder} holds {len(files)} images "
            f"({', '.join(sorted(FOLDER_SUFFIXES))}); need 2 or more"
        )
    return files


def _folder_batches(folder: Path, files: list[Path], batch_size: int):
    """The images as clean-fid reads them (8-bit RGB at their own size), streamed in batches of
    equal-sized images, as [-1, 1] tensors that map back to the same 8-bit values."""
    batch: list = []
    for path in files:
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"features.reference_folder: cannot read image {path}: {exc}") from exc
        if batch and (len(batch) == batch_size or batch[0].shape != arr.shape):
            yield _to_tensor(batch)
            batch = []
        batch.append(arr)
    yield _to_tensor(batch)


def _to_tensor(batch) -> torch.Tensor:
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 127.5 - 1


@dataclass
class _Images:
    """The reference images: their name in file names, their count, a digest of their content, and
    a way to stream them as [-1, 1] batches."""

    name: str
    n: int
    content: str
    batches: Callable[[], Iterable[torch.Tensor]]


def _folder_images(fcfg: dict) -> _Images:
    """features.reference_folder, streamed twice: the file bytes for the key, the images on a miss."""
    if not fcfg["reference_folder"]:
        raise ConfigError("reference-stats --split folder needs features.reference_folder")
    folder = Path(fcfg["reference_folder"]).expanduser()
    files = _folder_files(folder)
    content = hashlib.sha256()
    for path in files:
        content.update(path.relative_to(folder).as_posix().encode() + b"\0")
        content.update(hashlib.sha256(path.read_bytes()).digest())
    return _Images(folder.name, len(files), content.hexdigest(), lambda: _folder_batches(folder, files, 256))


def _split_images(data_cfg: dict, split: str) -> _Images:
    """A split of the dataset, keyed by the exact values of every image, in order."""
    images = load_split(data_cfg, split).images
    return _Images(dataset_name(data_cfg), len(images), content_digest(images), lambda: images.split(256))


def run(cfg: dict, paths: Paths, split: str, device: torch.device, stage_run=None) -> dict:
    """Mean and covariance of the reference images' features; `split` is train or test of the
    dataset, or `folder` (features.reference_folder). Reused from the content-keyed cache."""
    net = load_features(paths.features, device, cfg)
    fcfg = cfg["features"]
    images = _folder_images(fcfg) if split == "folder" else _split_images(cfg["data"], split)
    key = hashlib.sha256(
        f"{images.content} {net.hash} v{FEATURE_PIPELINE_VERSION} kept{KEPT_FEATURES}".encode()
    ).hexdigest()[:24]
    # keyed by content alone: the same images under another folder name hit the same file
    cached = next(
        iter(sorted((cache_dir(cfg) / "stats").glob(f"*-{key}.npz"))),
        cache_dir(cfg) / "stats" / f"{images.name}-{split}-{key}.npz",
    )
    info = {
        "dataset": images.name,
        "split": split,
        "features": fcfg["kind"],
        "feature_hash": net.hash,
        "n": images.n,
        "content_key": key,
    }
    if cached.exists():
        print(f"[reference_stats] {images.n} images, same content and features as {cached}: reused", flush=True)
    else:
        bar, feats = progress(total=images.n, desc=f"reference_stats {images.name}/{split}"), []
        for b in images.batches():
            feats.append(net(b))
            bar.update(len(b))
        bar.close()
        feats = torch.cat(feats)
        mu, sigma = feature_stats(feats)
        if len(feats) > KEPT_FEATURES:
            feats = feats[torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))[:KEPT_FEATURES]]
        save_stats(cached, mu, sigma, reference_features=feats.cpu().float().numpy(), **info)
    copy_file(cached, paths.stats)
    if paths.grid is not None:
        save_grid(next(iter(images.batches()))[:REAL_GRID], paths.grid)
    if stage_run is not None:
        stage_run.set_tags({"lcsc.feature_hash": info["feature_hash"]})
        stage_run.log_metrics({"images": info["n"]}, step=0)
    return info
