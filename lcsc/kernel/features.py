"""FID feature spaces, opened from the file their stage wrote.

Two kinds (`features.kind`): `classifier`, a small CNN trained on the dataset's labels whose
penultimate layer is the feature space (stage train_features; the offline default for digits),
and `inception`, clean-fid's Inception-v3 (lcsc/kernel/inception.py; stage inception_features
checks the weights and writes a small descriptor that the other stages read). `load_features`
opens either; each extractor has a `hash` that reference statistics record.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import FeatureError, InputError
from .inception import InceptionFeatures
from .io import first_line, read_json, reading, sha256
from .nets import DigitClassifier
from .tensors import load_tensors

METADATA_KEY = "lcsc"  # the safetensors metadata entry of a trained classifier: its architecture as JSON


class FeatureNet:
    """A loaded feature extractor: `__call__(images in [-1, 1]) -> [N, D]` features."""

    def __init__(self, path: str | Path, device: torch.device):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "no feature network here; the train_features stage writes it",
                                    str(path))
        rerun = "rerun train_features (or pass the right --features)"
        with reading(path, "a feature network written by train_features", rerun):
            with safe_open(str(path), "pt") as fh:
                meta = json.loads((fh.metadata() or {})[METADATA_KEY])
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


def load_features(path: str | Path, device: torch.device):
    """The feature extractor a features file names: a trained classifier (.safetensors) or an
    Inception descriptor (.json) whose weights file must still hold the same bytes."""
    path = Path(path)
    if path.suffix != ".json":
        return FeatureNet(path, device)
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
