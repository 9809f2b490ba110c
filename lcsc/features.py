"""The FID feature network for datasets without Inception: a small classifier trained on the
dataset's labels, whose penultimate layer is the feature space (stages train_features and
reference_stats)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import load_split
from .paths import dataset_name
from .fid import feature_stats, save_stats
from .io import load_tensors, save_tensors, sha256
from .nets import DigitClassifier
from .progress import progress


class FeatureNet:
    """A loaded feature extractor: `__call__(images in [-1, 1]) -> [N, D]` features."""

    def __init__(self, path: str | Path, device: torch.device):
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"feature network not found: {path} (the train_features stage writes it)")
        try:
            with safe_open(str(path), "pt") as fh:
                meta = json.loads((fh.metadata() or {})["lcsc"])
        except Exception as exc:
            raise ValueError(f"{path}: not a feature network written by train_features ({exc!r})") from exc
        self.net = DigitClassifier(meta["channels"], meta["num_classes"], meta["width"], meta["dim"])
        self.net.load_state_dict(load_tensors(path))
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
        raise ValueError("features.kind 'classifier' needs labelled data (one sub-folder per class "
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


def run_reference_stats(cfg: dict, features: str | Path, split: str, out: str | Path,
                        device: torch.device) -> dict:
    net = FeatureNet(features, device)
    data = load_split(cfg["data"], split)
    mu, sigma = feature_stats(net(data.images))
    info = {"dataset": dataset_name(cfg["data"]), "split": split, "features": cfg["features"]["kind"],
            "feature_hash": net.hash, "n": len(data.images)}
    save_stats(out, mu, sigma, **info)
    return info
