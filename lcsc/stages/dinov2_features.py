"""Stage dinov2_features: the feature space of `features.kind: dinov2` (FD_DINOv2). It finds the
weights (a local file, or torch.hub's checkpoint folder, downloading there where the config says
so), checks that they load and run, measures their sanity gate on the data (lcsc/kernel/gate.py)
and writes the small descriptor the other stages read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..kernel import gate
from ..kernel.dinov2 import DINOv2Features, resolve_weights
from ..kernel.errors import ConfigError
from ..kernel.io import write_json

NAME = "dinov2_features"


@dataclass(frozen=True)
class Paths:
    descriptor: Path  # dinov2.json


def check(cfg: dict) -> None:
    """The config asks for this stage (the CLI calls it before the job's MLflow run starts)."""
    if cfg["features"]["kind"] != "dinov2":
        raise ConfigError(
            f"features.kind: {cfg['features']['kind']!r}, not 'dinov2'; set features.kind: "
            "dinov2 (or run the stage of that kind)"
        )


def run(cfg: dict, paths: Paths, device: torch.device, stage_run=None) -> dict:
    check(cfg)
    path = resolve_weights(cfg["features"])
    net = DINOv2Features(path, device)
    dim = net(torch.zeros(2, 3, 16, 16)).shape[1]  # it loads and runs; its feature width
    info = {"kind": "dinov2", "weights": str(path), "sha256": net.sha256, "dim": int(dim), "hash": net.hash}
    info["gate"] = gate.on_data(cfg["data"], net, device)
    write_json(paths.descriptor, info)
    print(f"[features] dinov2: {path} sha256 {info['sha256'][:16]}..., {dim}-d", flush=True)
    gate.announce("dinov2", info["gate"], paths.descriptor, stage_run)
    if stage_run is not None:
        stage_run.set_tags({"lcsc.feature_hash": info["hash"]})
    return info
