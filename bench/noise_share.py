"""How many of a variant's samples are noise, at each NFE: a check that needs no feature space.

A sample counts as noise when its mean absolute difference between neighbouring pixels (its
roughness) is larger than that of every real image in the data set: real images, however
detailed, are smoother than the roughest of them, and noise is far rougher. The samples are the
evaluation's own (its seed, sample count and sampler), drawn again from the finished results.

    .venv/bin/python bench/noise_share.py --config config/diffusers-run.yaml --variants last ema_0.998 lcsc
"""

from __future__ import annotations

import argparse

import torch

from lcsc.kernel import variants
from lcsc.kernel.config import load_config
from lcsc.kernel.data import load_split
from lcsc.kernel.models import models, nfe_tag
from lcsc.kernel.paths import Layout, dataset_name, feature_tag
from lcsc.kernel.scoring import Scorer


def roughness(x: torch.Tensor) -> torch.Tensor:
    """Each image's mean absolute difference between horizontal and vertical neighbours, [N]."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return (dx + dy) / 2


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--variants", nargs="+", required=True)
    p.add_argument("--model", default=None, help="default: the config's first model")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    model = args.model or models(cfg)[0]
    layout, ecfg = Layout.of(cfg), cfg["evaluate"]
    real = load_split(cfg["data"], "all").images
    limit = roughness(real).max().item()
    scorer = Scorer.open(
        cfg,
        layout.manifest(model),
        layout.feature_net(feature_tag(cfg["features"])),
        layout.stats(dataset_name(cfg["data"]), "train", feature_tag(cfg["features"])),
        torch.device("cpu"),
        ecfg["batch_size"],
        model=model,
    )
    noise = scorer.make_noise(ecfg["samples"], ecfg["seed"])
    nfes = sorted(ecfg["nfe"])
    print(f"{len(real)} real images, roughest {limit:.4f}; {ecfg['samples']} samples of seed {ecfg['seed']} per cell")
    print("| variant | " + " | ".join(f"NFE {n}: noise share (FID)" for n in nfes) + " |")
    print("| --- | " + " | ".join("---:" for _ in nfes) + " |")
    for variant in args.variants:
        coefficients = layout.coefficients(model, nfe_tag(cfg["search"]["nfe"])) if variant == variants.LCSC else None
        flat, _ = variants.weights(scorer, variant, coefficients, layout.baselines(model), cfg["baselines"])
        cells = []
        for nfe in nfes:
            fid, images = scorer.fid(flat, nfe, noise)
            share = (roughness(images.float().clamp(-1, 1)) > limit).float().mean().item()
            cells.append(f"{share:.1%} ({fid:.2f})")
        print(f"| {variant} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
