"""Datasets as tensors in [-1, 1]: scikit-learn's digits (offline), a folder of PNG/JPEG images,
or CIFAR-10 through torchvision (its own train/test split)."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import importlib.util
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass
class Split:
    images: torch.Tensor  # [N, C, H, W] float32 in [-1, 1]
    labels: torch.Tensor  # [N] int64 (class index; 0 everywhere for an unlabelled folder)
    num_classes: int
    name: str


def _digits_rows() -> np.ndarray:
    """scikit-learn's digits file, [1797, 65] (64 pixels, then the class), read as its load_digits
    reads it, without importing scikit-learn: that import alone is 2 to 4 s of every job that
    loads the digits (the evaluations each load them for the noise floor). Where the file is not
    where scikit-learn keeps it, its load_digits."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        flat, target = load_digits(return_X_y=True)
        return np.concatenate([flat, target[:, None]], axis=1)
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        return np.loadtxt(f, delimiter=",")


def _digits() -> tuple[np.ndarray, np.ndarray]:
    rows = _digits_rows()
    images = rows[:, :-1].reshape(-1, 8, 8).astype(np.float32) / 16.0  # values 0..16 -> 0..1
    return images[:, None], rows[:, -1].astype(np.int64)


RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def _trainer_resize(im: Image.Image, size: int, resize: str) -> Image.Image:
    """The short side to `size` with the trainer's interpolation, then a centre crop: what
    torchvision's Resize(size) + CenterCrop(size) do to a PIL image."""
    scale = size / min(im.size)
    w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
    im = im.resize((w, h), RESAMPLE[resize])
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def _folder(folder: Path, channels: int, size: int, resize: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every image, centre-cropped to a square and resized to `size`: folders of mixed sizes
    work as long as no image is smaller than `size`. With `resize` (data.resize), the trainer's
    own resize instead, upsampling included."""
    if not folder.is_dir():
        raise DataError(f"data.folder: {folder} is not a folder")
    everything = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    others = [p for p in everything if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise DataError(
            f"data.folder: {others[0]} is not a PNG or JPEG image ({len(others)} such files); "
            "move non-image files out of the data folder"
        )
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
                if min(im.size) < size and resize is None:
                    raise DataError(
                        f"{path}: {im.width}x{im.height} is smaller than data.image_size {size}; "
                        "upsampling would invent detail. Lower data.image_size, remove the image, "
                        "or set data.resize to the interpolation your trainer upsampled with"
                    )
                im = im.convert(mode)
                if resize is not None:
                    im = _trainer_resize(im, size, resize)
                else:
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


CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"


def _unpack(archive: Path, root: Path) -> None:
    """Unpack the archive into a temporary folder, then rename it into place: another job never
    sees a half-unpacked folder. No member may be a link or leave the folder."""
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                name = Path(member.name)
                if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                    raise DataError(
                        f"{archive}: refused member {member.name!r} (a link or a path outside the archive's folder)"
                    )
            tar.extractall(tmp)
        if not (root / CIFAR_FOLDER).exists():
            (tmp / CIFAR_FOLDER).rename(root / CIFAR_FOLDER)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"data.root: cannot unpack {archive} ({exc}); fetch {CIFAR_ARCHIVE} again") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cifar10(root: Path, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 through torchvision's loader, which checks every batch file's MD5. An archive
    copied into `root` by hand (offline clusters) is unpacked here first. Jobs that start at once
    (train_dm and reference_stats on a cluster) take turns through a lock file in `root`, so one
    downloads or unpacks and the others find the result."""
    from torchvision.datasets import (
        CIFAR10,  # only for CIFAR-10: torchvision takes seconds to import
    )

    root = root.expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / ".lcsc-cifar10.lock", "w")
    except OSError as exc:
        raise DataError(f"data.root: cannot use {root} ({exc})") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        archive = root / CIFAR_ARCHIVE
        if not (root / CIFAR_FOLDER).is_dir() and archive.is_file():
            _unpack(archive, root)
        if not (root / CIFAR_FOLDER).is_dir() and not download:
            raise DataError(
                f"data.root: no {CIFAR_FOLDER}/ or {CIFAR_ARCHIVE} in {root}, and data.download "
                f"is false; copy {CIFAR_ARCHIVE} (https://www.cs.toronto.edu/~kriz/) there or set "
                "data.download: true"
            )
        try:
            ds = CIFAR10(str(root), train=train, download=download)
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted" (an MD5 mismatch)
            raise DataError(
                f"data.root: CIFAR-10 in {root} is missing or corrupted ({exc}); delete "
                f"{root / CIFAR_FOLDER} and fetch {CIFAR_ARCHIVE} again"
            ) from exc
        except Exception as exc:  # URLError, timeouts, incomplete reads
            raise DataError(
                f"data.root: downloading CIFAR-10 into {root} failed ({exc!r}); offline, copy "
                f"{CIFAR_ARCHIVE} there by hand"
            ) from exc
    images = np.asarray(ds.data, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0  # uint8 NHWC -> NCHW
    return images, np.asarray(ds.targets, dtype=np.int64)


def _to_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """Digits are 8x8. Growing them by an even margin pads with background, which keeps every
    original pixel exact (no interpolation blur) and gives a U-Net room for two 2x downsamplings
    (12 -> 6 -> 3), at about half the cost of 16x16. Other sizes are resampled bilinearly."""
    margin = size - x.shape[-1]
    if margin > 0 and margin % 2 == 0:
        return F.pad(x, (margin // 2,) * 4, value=0.0)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def content_digest(images: torch.Tensor) -> str:
    """sha256 of a stack of images' shape and exact values, in order: a cache key by content."""
    content = hashlib.sha256(str(tuple(images.shape)).encode())
    content.update(images.float().contiguous().numpy().tobytes())
    return content.hexdigest()


def load_split(data_cfg: dict, split: str) -> Split:
    """The deterministic `train` or `test` split of the configured dataset."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"unknown split {split!r}; use train, test or all")
    size = data_cfg["image_size"]
    if data_cfg["dataset"] == "cifar10":  # CIFAR-10's own split: train 50k, test 10k
        if split == "all":
            parts = [_cifar10(Path(data_cfg["root"]), t, data_cfg["download"]) for t in (True, False)]
            images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        else:
            images, labels = _cifar10(Path(data_cfg["root"]), split == "train", data_cfg["download"])
        x = torch.from_numpy(images)  # 32x32: the config check allows no other size
        y = torch.from_numpy(labels)
        return Split(images=(x.clamp(0, 1) * 2 - 1).contiguous(), labels=y, num_classes=10, name=split)
    if data_cfg["dataset"] == "digits":
        images, labels = _digits()
    else:
        images, labels = _folder(Path(data_cfg["folder"]), data_cfg["channels"], size, data_cfg.get("resize"))
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
