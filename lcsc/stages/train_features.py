"""Stage train_features: the FID feature space of `features.kind: classifier`, the penultimate
layer of a small CNN trained on the dataset's labels (the offline default for digits)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..kernel.data import load_split
from ..kernel.errors import ConfigError, DataError
from ..kernel.features import METADATA_KEY
from ..kernel.nets import DigitClassifier
from ..kernel.paths import dataset_name
from ..kernel.progress import progress
from ..kernel.tensors import save_tensors

NAME = "train_features"


@dataclass(frozen=True)
class Paths:
    net: Path  # the classifier's safetensors file


def check(cfg: dict) -> None:
    """The config asks for this stage (the CLI calls it before the job's MLflow run starts)."""
    if cfg["features"]["kind"] != "classifier":
        raise ConfigError(f"features.kind: {cfg['features']['kind']!r}, so there is no "
                          "classifier to train (run inception-features)")


def run(cfg: dict, paths: Paths, device: torch.device, stage_run=None) -> dict:
    check(cfg)
    meta = train_classifier(cfg, paths.net, device, stage_run)
    if stage_run is not None:
        stage_run.log_metrics({"final_test_accuracy": meta["test_accuracy"]}, step=0)
    return meta


def train_classifier(cfg: dict, out: Path, device: torch.device, stage_run=None) -> dict:
    """Train the classifier on the train split, testing it on the test split after each epoch;
    save it with its metadata (architecture, dataset, test accuracy)."""
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
        if stage_run is not None:
            stage_run.log_metrics({"train_loss": loss.item(), "test_accuracy": acc}, step=epoch + 1)
    bar.close()
    meta = {"channels": train.images.shape[1], "num_classes": train.num_classes,
            "width": fcfg["width"], "dim": fcfg["dim"], "dataset": dataset_name(cfg["data"]),
            "test_accuracy": acc}
    save_tensors(out, net.state_dict(), metadata={METADATA_KEY: json.dumps(meta)})
    return meta
