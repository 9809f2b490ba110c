"""Stage train_features: the FID feature spaces that are trained on the dataset.
`features.kind: classifier`: the penultimate layer of a small CNN trained on the dataset's labels
(the offline default for digits). `features.kind: autoencoder`: the bottleneck of a small
convolutional autoencoder trained to rebuild the images, with no labels (unlabelled folders)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..kernel import gate
from ..kernel.data import load_split
from ..kernel.errors import ConfigError, DataError
from ..kernel.features import METADATA_KEY, FeatureNet
from ..kernel.nets import ConvAutoencoder, DigitClassifier
from ..kernel.paths import TRAINED_FEATURES, dataset_name
from ..kernel.progress import progress
from ..kernel.tensors import save_tensors

NAME = "train_features"


@dataclass(frozen=True)
class Paths:
    net: Path  # the trained network's safetensors file


def check(cfg: dict) -> None:
    """The config asks for this stage (the CLI calls it before the job's MLflow run starts)."""
    if cfg["features"]["kind"] not in TRAINED_FEATURES:
        raise ConfigError(
            f"features.kind: {cfg['features']['kind']!r}, so there is no "
            "feature network to train (run inception-features)"
        )


def run(cfg: dict, paths: Paths, device: torch.device, stage_run=None) -> dict:
    check(cfg)
    if cfg["features"]["kind"] == "autoencoder":
        meta = train_autoencoder(cfg, paths.net, device, stage_run)
        final = {"final_test_mse": meta["test_mse"]}
    else:
        meta = train_classifier(cfg, paths.net, device, stage_run)
        final = {"final_test_accuracy": meta["test_accuracy"]}
    gate.announce(cfg["features"]["kind"], meta["gate"], paths.net, stage_run, tag="train_features")
    if stage_run is not None:
        stage_run.log_metrics(final, step=0)
    return meta


def _save(net: torch.nn.Module, out: Path, meta: dict, train, test, device: torch.device) -> dict:
    """Measure the trained network's sanity gate on the splits it trained and tested on, then save
    it with its metadata and gate record."""
    net.eval()
    meta["gate"] = gate.run_gate(FeatureNet.of(net, device), train.images, test.images, device)
    save_tensors(out, net.state_dict(), metadata={METADATA_KEY: json.dumps(meta)})
    return meta


def train_classifier(cfg: dict, out: Path, device: torch.device, stage_run=None) -> dict:
    """Train the classifier on the train split, testing it on the test split after each epoch;
    save it with its metadata (architecture, dataset, test accuracy)."""
    fcfg = cfg["features"]
    train, test = load_split(cfg["data"], "train"), load_split(cfg["data"], "test")
    if train.num_classes < 2:
        raise DataError(
            "features.kind: 'classifier' needs labelled data (one sub-folder per class "
            "in data.folder, at least two classes); features.kind: autoencoder needs none"
        )
    torch.manual_seed(cfg["seed"])
    net = DigitClassifier(train.images.shape[1], train.num_classes, fcfg["width"], fcfg["dim"]).to(device)

    def loss(x, idx):
        return F.cross_entropy(net(x), train.labels[idx].to(device))

    def score():
        return "test_accuracy", (net(test.images.to(device)).argmax(1).cpu() == test.labels).float().mean().item()

    acc = _fit(cfg, net, train.images, loss, score, device, stage_run)
    meta = {
        "arch": "classifier",
        "channels": train.images.shape[1],
        "num_classes": train.num_classes,
        "width": fcfg["width"],
        "dim": fcfg["dim"],
        "dataset": dataset_name(cfg["data"]),
        "test_accuracy": acc,
    }
    return _save(net, out, meta, train, test, device)


def train_autoencoder(cfg: dict, out: Path, device: torch.device, stage_run=None) -> dict:
    """Train the autoencoder to rebuild the train split's images (mean squared error in [-1, 1]),
    testing it on the test split after each epoch; save it with its metadata."""
    fcfg = cfg["features"]
    train, test = load_split(cfg["data"], "train"), load_split(cfg["data"], "test")
    channels, size = train.images.shape[1], train.images.shape[-1]
    torch.manual_seed(cfg["seed"])
    net = ConvAutoencoder(channels, size, fcfg["width"], fcfg["dim"]).to(device)

    def loss(x, idx):
        return F.mse_loss(net(x), x)

    def score():
        x = test.images.to(device)
        return "test_mse", sum(
            F.mse_loss(net(x[i : i + 500]), x[i : i + 500], reduction="sum").item() for i in range(0, len(x), 500)
        ) / x.numel()

    mse = _fit(cfg, net, train.images, loss, score, device, stage_run)
    net.eval()
    with torch.no_grad():
        z = torch.cat([net.encoder(train.images[i : i + 500].to(device)) for i in range(0, len(train.images), 500)])
        err = torch.cat(
            [net.log_error(train.images[i : i + 500].to(device)) for i in range(0, len(train.images), 500)]
        )
    net.shift.copy_(z.mean(0))
    net.scale.copy_(z.std(0).clamp_min(1e-6))
    net.error_shift.copy_(err.mean(0))
    net.error_scale.copy_(err.std(0).clamp_min(1e-6))
    meta = {
        "arch": "autoencoder",
        "channels": channels,
        "image_size": size,
        "width": fcfg["width"],
        "dim": fcfg["dim"],
        "dataset": dataset_name(cfg["data"]),
        "test_mse": mse,
    }
    return _save(net, out, meta, train, test, device)


def _fit(
    cfg: dict, net: torch.nn.Module, images: torch.Tensor, loss_fn, score_fn, device: torch.device, stage_run
) -> float:
    """Adam over `features.epochs` epochs of shuffled batches, each shifted by up to one pixel (so
    the features are robust to the jitter of generated images); `score_fn` after every epoch gives
    the test metric logged and returned."""
    fcfg = cfg["features"]
    opt = torch.optim.Adam(net.parameters(), lr=fcfg["lr"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    steps_per_epoch = -(-len(images) // fcfg["batch_size"])
    bar = progress(total=fcfg["epochs"] * steps_per_epoch, desc="train_features")
    for epoch in range(fcfg["epochs"]):
        perm = torch.randperm(len(images), generator=gen)
        for i in range(0, len(perm), fcfg["batch_size"]):
            idx = perm[i : i + fcfg["batch_size"]]
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            x = torch.roll(images[idx], shifts=(dy, dx), dims=(2, 3)).to(device)
            loss = loss_fn(x, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
        net.eval()
        with torch.no_grad():
            key, value = score_fn()
        net.train()
        bar.set_postfix(loss=f"{loss.item():.3f}", **{key: f"{value:.4f}"})
        if stage_run is not None:
            stage_run.log_metrics({"train_loss": loss.item(), key: value}, step=epoch + 1)
    bar.close()
    return value
