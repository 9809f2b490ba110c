"""FID feature spaces and reference statistics.

Two kinds (`features.kind`): `classifier`, a small CNN trained on the dataset's labels whose
penultimate layer is the feature space (stage train_features; the offline default for digits),
and `inception`, clean-fid's Inception-v3 (lcsc/inception.py; stage inception_features checks the
weights and writes a small descriptor that the other stages read). `load_features` opens either.

Reference statistics (stage reference_stats) are made from a split of the dataset or from an
image folder, and cached by content: the key hashes the split's image values (or the folder's
file names and bytes) and the feature extractor (weights and mode), so another experiment over
the same data reuses them.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import load_split
from .errors import DataError, InputError
from .paths import dataset_name
from .fid import feature_stats, save_stats
from .io import copy_file, first_line, load_tensors, read_json, reading, save_tensors, sha256, write_json
from .nets import DigitClassifier
from .progress import progress


class FeatureNet:
    """A loaded feature extractor: `__call__(images in [-1, 1]) -> [N, D]` features."""

    def __init__(self, path: str | Path, device: torch.device):
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "no feature network here; the train_features stage writes it",
                                    str(path))
        rerun = "rerun train_features (or pass the right --features)"
        with reading(path, "a feature network written by train_features", rerun):
            with safe_open(str(path), "pt") as fh:
                meta = json.loads((fh.metadata() or {})["lcsc"])
            self.net = DigitClassifier(meta["channels"], meta["num_classes"], meta["width"], meta["dim"])
        try:
            self.net.load_state_dict(load_tensors(path))
        except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
            raise InputError(f"{path}: its tensors do not fit the network its metadata describes "
                             f"({first_line(exc)}); {rerun}") from exc
        self.net.to(device).eval()
        self.device = device
        self.hash = sha256(path)[:16]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        out = [self.net.features(images[i:i + batch_size].to(self.device).clamp(-1, 1))
               for i in range(0, len(images), batch_size)]
        return torch.cat(out).double()


def run_train_features(cfg: dict, out: str | Path, device: torch.device, run=None) -> dict:
    fcfg = cfg["features"]
    train, test = load_split(cfg["data"], "train"), load_split(cfg["data"], "test")
    if train.num_classes < 2:
        raise DataError("features.kind: 'classifier' needs labelled data (one sub-folder per class "
                         "in data.folder, at least two classes)")
    torch.manual_seed(cfg["seed"])
    net = DigitClassifier(train.images.shape[1], train.num_classes, fcfg["width"], fcfg["dim"]).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=fcfg["lr"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    steps_per_epoch = -(-len(train.images) // fcfg["batch_size"])
    bar = progress(total=fcfg["epochs"] * steps_per_epoch, desc="train_features")
    for epoch in range(fcfg["epochs"]):
        perm = torch.randperm(len(train.images), generator=gen)
        # Small random shifts make the features robust to the jitter of generated digits.
        for i in range(0, len(perm), fcfg["batch_size"]):
            idx = perm[i:i + fcfg["batch_size"]]
            x = train.images[idx]
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(net(x.to(device)), train.labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
        net.eval()
        with torch.no_grad():
            acc = (net(test.images.to(device)).argmax(1).cpu() == test.labels).float().mean().item()
        net.train()
        bar.set_postfix(loss=f"{loss.item():.3f}", test_acc=f"{acc:.3f}")
        if run is not None:
            run.log_metrics({"train_loss": loss.item(), "test_accuracy": acc}, step=epoch + 1)
    bar.close()
    meta = {"channels": train.images.shape[1], "num_classes": train.num_classes,
            "width": fcfg["width"], "dim": fcfg["dim"], "dataset": dataset_name(cfg["data"]),
            "test_accuracy": acc}
    save_tensors(out, net.state_dict(), metadata={"lcsc": json.dumps(meta)})
    return meta


def run_inception_features(cfg: dict, out: str | Path, device: torch.device) -> dict:
    """Find (or download, where the config says so) the Inception weights, check that they load
    and give 2048-d features, and write the descriptor the other stages read."""
    from .inception import InceptionFeatures, resolve_weights

    fcfg = cfg["features"]
    path = resolve_weights(fcfg, cache_dir(cfg))
    net = InceptionFeatures(path, fcfg["mode"], device)
    dim = net(torch.zeros(2, 3, 32, 32)).shape[1]  # it loads and runs; its feature width
    if dim != 2048:
        print(f"[features] note: {path} gives {dim}-d features (Inception-v3 gives 2048)", flush=True)
    info = {"kind": "inception", "mode": fcfg["mode"], "weights": str(path), "sha256": net.sha256,
            "dim": int(dim), "hash": net.hash}
    write_json(out, info)
    print(f"[features] inception ({fcfg['mode']}): {path} sha256 {info['sha256'][:16]}..., {dim}-d", flush=True)
    return info


def load_features(path: str | Path, device: torch.device):
    """The feature extractor a features file names: a trained classifier (.safetensors) or an
    Inception descriptor (.json) whose weights file must still hold the same bytes."""
    path = Path(path)
    if path.suffix != ".json":
        return FeatureNet(path, device)
    from .inception import FeatureError, InceptionFeatures

    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no feature descriptor here; the inception_features stage writes it",
                                str(path))
    info = read_json(path, fix="rerun inception_features (or pass the right --features)")
    missing = [k for k in ("weights", "mode", "hash") if not isinstance(info, dict) or k not in info]
    if missing:
        raise InputError(f"{path}: not a feature descriptor written by inception_features (no "
                         f"{', '.join(missing)}); rerun inception_features (or pass the right --features)")
    weights = Path(info["weights"])
    if not weights.is_file():
        raise FeatureError(f"{path}: its Inception weights {weights} are gone (features.weights); "
                           "restore the file or rerun inception_features")
    net = InceptionFeatures(weights, info["mode"], device)
    if net.hash != info["hash"]:
        raise FeatureError(f"{path}: the weights file {weights} changed since inception_features "
                           "checked it; rerun it (snakemake -R inception_features)")
    return net


def cache_dir(cfg: dict) -> Path:
    """Where downloaded weights and content-keyed reference stats are kept (never site-packages)."""
    return Path(cfg["features"]["cache_dir"] or Path(cfg["results_dir"]) / "cache").expanduser()


# clean-fid's image types (PIL reads them all), hidden files skipped as data.folder does
FOLDER_SUFFIXES = {".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
# Bump when the preparation of images for features changes (quantisation, resize): cached
# reference stats made by the old code then stop matching.
FEATURE_PIPELINE_VERSION = 1


def _folder_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"features.reference_folder: {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if len(files) < 2:
        raise DataError(f"features.reference_folder: {folder} holds {len(files)} images "
                        f"({', '.join(sorted(FOLDER_SUFFIXES))}); need 2 or more")
    return files


def _folder_batches(folder: Path, files: list[Path], batch_size: int):
    """The images as clean-fid reads them (8-bit RGB at their own size), streamed in batches of
    equal-sized images, as [-1, 1] tensors that map back to the same 8-bit values."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError



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
    import numpy as np

    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 127.5 - 1


def run_reference_stats(cfg: dict, features: str | Path, split: str, out: str | Path,
                        device: torch.device) -> dict:
    """Mean and covariance of the reference images' features; `split` is train or test of the
    dataset, or `folder` (features.reference_folder). Reused from the content-keyed cache."""
    import hashlib

    from .config import ConfigError

    net = load_features(features, device)
    fcfg = cfg["features"]
    content = hashlib.sha256()
    if split == "folder":  # streamed twice: the file bytes for the key, the images on a miss
        if not fcfg["reference_folder"]:
            raise ConfigError("reference-stats --split folder needs features.reference_folder")
        folder = Path(fcfg["reference_folder"]).expanduser()
        files = _folder_files(folder)
        for path in files:
            content.update(path.relative_to(folder).as_posix().encode() + b"\0")
            content.update(hashlib.sha256(path.read_bytes()).digest())
        n, name = len(files), folder.name
        batches = lambda: _folder_batches(folder, files, 256)  # noqa: E731
    else:
        images = load_split(cfg["data"], split).images
        content.update(str(tuple(images.shape)).encode())  # the exact values of every image, in order
        content.update(images.float().contiguous().numpy().tobytes())
        n, name = len(images), dataset_name(cfg["data"])
        batches = lambda: images.split(256)  # noqa: E731
    key = hashlib.sha256(f"{content.hexdigest()} {net.hash} v{FEATURE_PIPELINE_VERSION}".encode()).hexdigest()[:24]
    # keyed by content alone: the same images under another folder name hit the same file
    cached = next(iter(sorted((cache_dir(cfg) / "stats").glob(f"*-{key}.npz"))),
                  cache_dir(cfg) / "stats" / f"{name}-{split}-{key}.npz")
    info = {"dataset": name, "split": split, "features": fcfg["kind"], "feature_hash": net.hash, "n": n,
            "content_key": key}
    if cached.exists():
        print(f"[reference_stats] {n} images, same content and features as {cached}: reused", flush=True)
    else:
        bar, feats = progress(total=n, desc=f"reference_stats {name}/{split}"), []
        for b in batches():
            feats.append(net(b))
            bar.update(len(b))
        bar.close()
        mu, sigma = feature_stats(torch.cat(feats))
        save_stats(cached, mu, sigma, **info)
    copy_file(cached, out)
    return info
