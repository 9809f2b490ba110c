"""FID feature spaces, opened from the file their stage wrote.

Four kinds (`features.kind`): `classifier`, a small CNN trained on the dataset's labels whose
penultimate layer is the feature space (stage train_features; the offline default for digits);
`autoencoder`, the bottleneck of a small convolutional autoencoder trained on the images alone
(the same stage; label-free, for unlabelled folders on a CPU); `inception`, clean-fid's
Inception-v3 (lcsc/kernel/inception.py); and `dinov2`, DINOv2's ViT for FD_DINOv2
(lcsc/kernel/dinov2.py). For the last two a stage (inception_features, dinov2_features) checks
the weights and writes a small descriptor that the other stages read. `load_features` opens any;
each extractor has a `hash` that reference statistics record.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import torch
from safetensors import safe_open

from .dinov2 import DINOv2Features
from .dinov2 import resolve_weights as resolve_dinov2_weights
from .errors import FeatureError, InputError
from .gate import refusal
from .inception import InceptionFeatures, resolve_weights
from .io import first_line, read_json, reading, sha256
from .nets import ConvAutoencoder, DigitClassifier
from .tensors import load_tensors

# The safetensors metadata entry of a trained classifier: its architecture as JSON.
METADATA_KEY = "lcsc"


class FeatureNet:
    """A loaded feature extractor: `__call__(images in [-1, 1]) -> [N, D]` features."""

    @classmethod
    def of(cls, net: torch.nn.Module, device: torch.device) -> FeatureNet:
        """A network in memory, as the extractor its saved file will give (for the gate)."""
        self = cls.__new__(cls)
        self.net, self.device, self.hash, self.gate = net.to(device).eval(), device, "", None
        return self

    def __init__(self, path: str | Path, device: torch.device):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                errno.ENOENT, "no feature network here; the train_features stage writes it", str(path)
            )
        rerun = "rerun train_features (or pass the right --features)"
        with reading(path, "a feature network written by train_features", rerun):
            with safe_open(str(path), "pt") as fh:
                meta = json.loads((fh.metadata() or {})[METADATA_KEY])
            self.net = build_net(meta)
        # The sanity gate's record (None: a file older than the gate).
        self.gate = meta.get("gate")
        self.kind = meta.get("arch", "classifier")
        self.path = path
        try:
            self.net.load_state_dict(load_tensors(path))
        except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
            raise InputError(
                f"{path}: its tensors do not fit the network its metadata describes ({first_line(exc)}); {rerun}"
            ) from exc
        self.net.to(device).eval()
        self.device = device
        self.hash = sha256(path)[:16]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        out = [
            self.net.features(images[i : i + batch_size].to(self.device).clamp(-1, 1))
            for i in range(0, len(images), batch_size)
        ]
        # float64 from here on: the moments and the FID are computed in it.
        return torch.cat(out).double()


def build_net(meta: dict) -> torch.nn.Module:
    """The untrained network a trained feature file's metadata describes (files without an `arch`
    entry predate the autoencoder and hold a classifier)."""
    if meta.get("arch", "classifier") == "autoencoder":
        return ConvAutoencoder(meta["channels"], meta["image_size"], meta["width"], meta["dim"])
    return DigitClassifier(meta["channels"], meta["num_classes"], meta["width"], meta["dim"])


def load_features(path: str | Path, device: torch.device, cfg: dict | None = None):
    """The feature extractor a features file names: a trained network (.safetensors) or the
    descriptor (.json) of fixed weights (Inception, DINOv2) whose file must still hold the same
    bytes. With `cfg`, a TorchScript Inception (code, not only data) must be the file the config's
    `features` name: a descriptor in the results folder never chooses what runs."""
    path = Path(path)
    if path.suffix != ".json":
        return FeatureNet(path, device)
    stage = "dinov2_features" if path.stem == "dinov2" else "inception_features"
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"no feature descriptor here; the {stage} stage writes it", str(path))
    info = read_json(path, fix=f"rerun {stage} (or pass the right --features)")
    dinov2 = isinstance(info, dict) and info.get("kind") == "dinov2"
    needed = ("weights", "hash") if dinov2 else ("weights", "mode", "hash")
    missing = [k for k in needed if not isinstance(info, dict) or k not in info]
    if missing:
        raise InputError(
            f"{path}: not a feature descriptor written by {stage} (no "
            f"{', '.join(missing)}); rerun {stage} (or pass the right --features)"
        )
    stage, name = ("dinov2_features", "DINOv2") if dinov2 else ("inception_features", "Inception")
    weights = Path(info["weights"])
    # A TorchScript file runs code when loaded, so the config, never a descriptor in the results
    # folder, chooses it; legacy_pytorch weights are state dicts (data) and need no such check.
    if cfg is not None and not dinov2 and info["mode"] != "legacy_pytorch":
        if cfg["features"]["kind"] != "inception":
            raise FeatureError(
                f"{path}: an Inception descriptor, but the config's features.kind is "
                f"{cfg['features']['kind']!r}; pass the feature file of this config (--features)"
            )
        configured = weights_file(cfg["features"], download=False, cache=cache_dir(cfg))
        if weights.resolve() != configured.resolve():
            raise FeatureError(
                f"{path}: names the weights {weights}, but the config's features name {configured}; "
                f"a TorchScript file runs code, so only the config chooses it: rerun {stage}"
            )
    if not weights.is_file():
        raise FeatureError(
            f"{path}: its {name} weights {weights} are gone (features.weights); restore the file or rerun {stage}"
        )
    net = DINOv2Features(weights, device) if dinov2 else InceptionFeatures(weights, info["mode"], device)
    if net.hash != info["hash"]:
        raise FeatureError(
            f"{path}: the weights file {weights} changed since {stage} checked it; rerun it (snakemake -R {stage})"
        )
    # the sanity gate's record, as a trained file carries it (None: a descriptor older than the gate)
    net.gate, net.kind, net.path = info.get("gate"), "dinov2" if dinov2 else "inception", path
    return net


def check_gate(net) -> None:
    """Refuse a feature space for search unless its sanity gate passed: the record its stage wrote
    into the trained file or the fixed space's descriptor."""
    stage = "train_features" if isinstance(net, FeatureNet) else f"{net.kind}_features"
    if not isinstance(net.gate, dict) or "passed" not in net.gate:
        raise FeatureError(
            f"{net.path}: no sanity gate record (written before lcsc checked feature spaces); "
            f"rerun {stage} (snakemake -R {stage})"
        )
    if net.gate["passed"] is not True:
        raise FeatureError(refusal(net.kind, net.gate, net.path))


def weights_file(fcfg: dict, download: bool = True, cache: str | Path = "") -> Path:
    """The weights file of a fixed-weights space (`features.kind` inception or dinov2), as its
    stage resolves it (`download=False`: only find it)."""
    if fcfg["kind"] == "dinov2":
        return resolve_dinov2_weights(fcfg, download)
    return resolve_weights(fcfg, cache, download)


def cache_dir(cfg: dict) -> Path:
    """Where downloaded weights and content-keyed reference stats are kept (never site-packages)."""
    return Path(cfg["features"]["cache_dir"] or Path(cfg["results_dir"]) / "cache").expanduser()
