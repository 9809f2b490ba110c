"""Stage train_dm: train the diffusion model, writing its checkpoint trail."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..kernel.data import load_split
from ..kernel.distributed import Ranks
from ..kernel.families.diffusion import VPDiffusion
from ..kernel.nets import build_unet
from ..kernel.training import train, training_labels

NAME = "train_dm"


@dataclass(frozen=True)
class Paths:
    trail: Path  # the folder of the trail; its manifest.json is the rule's output


def run(cfg: dict, paths: Paths, device: torch.device, stage_run=None, ranks: Ranks = Ranks()) -> Path:
    with ranks.main_first():  # one process downloads the data, if it must
        data = load_split(cfg["data"], "train")
    labels = training_labels(cfg["model"], data)
    # Seeded right before the network is built, so its initial weights depend on the seed alone,
    # not on whatever loading the data drew.
    torch.manual_seed(cfg["seed"])
    model = build_unet(cfg["model"], cfg["data"]["channels"])
    if ranks.main:
        print(
            f"[train_dm] {sum(p.numel() for p in model.parameters())} parameters, "
            f"{len(data.images)} training images, device {device}" + ranks.describe(),
            flush=True,
        )
    diffusion = VPDiffusion.from_config(cfg["diffusion"])
    manifest = train(
        model,
        diffusion.loss,
        data.images,
        cfg["train"],
        paths.trail,
        seed=cfg["seed"],
        device=device,
        run=stage_run,
        desc="train_dm",
        ranks=ranks,
        labels=labels,
        manifest_extra={
            "kind": "dm",
            "model_config": cfg["model"],
            # Only what the network is trained for: the sampler and clipping are sampling settings, free
            # to change after training (DiffusionFamily checks these two).
            "diffusion": {k: cfg["diffusion"][k] for k in ("schedule", "timesteps")},
            "data": cfg["data"],
        },
    )
    if stage_run is not None and ranks.main:
        stage_run.log_artifact(manifest)
    return manifest
