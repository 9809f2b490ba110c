"""The sanity gate of a feature space: does it see broken samples?

A search minimises FID in one feature space, so a space that scores noise close to data lets the
search trade real images for noise and the report call it a win. The gate measures, in the space,
the Frechet distance from the train split's features to five broken sets made from the held-out
(test) split, and divides each by the floor, the distance from the train split to the held-out
split itself:

- `gaussian`: N(0, 1) noise, clipped to the image range;
- `colour_noise`: the held-out images with colour noise added (Gaussian noise per channel, less
  its mean over the channels, so brightness is kept: what a grey data set never shows); uniform
  noise on one-channel data, which has no colour;
- `blank`: every pixel at the data's mean value;
- `half_noise`: the held-out images, half of them replaced by Gaussian noise;
- `shuffled`: each held-out image with its pixels in a random order (its colours kept).

A space passes when every ratio is at least `RATIO` ("far": an order of magnitude above real
against real). The table goes to the features stage's log and MLflow, and into the feature
file's record (the trained file's metadata, or a fixed space's descriptor); a space that fails is
refused for search. A fixed space (Inception, DINOv2) is gated on at most `CAPS` images of each
split: those networks are slow on a CPU.
"""

from __future__ import annotations

import math

import torch

from .fid import Reference, feature_stats
from .progress import progress

RATIO = 10.0
BROKEN = ("gaussian", "colour_noise", "blank", "half_noise", "shuffled")
CHROMA = 0.5  # the deviation of the colour noise added to each held-out image, before its channel mean is taken off
SEED = 0  # the broken sets' noise: fixed, so the gate's table is the same on every rerun
CAPS = (2000, 500)  # a fixed space's gate: at most this many train and held-out images


def broken_sets(held_out: torch.Tensor, train: torch.Tensor, seed: int = SEED) -> dict[str, torch.Tensor]:
    """The five broken versions of `held_out` ([N, C, H, W] in [-1, 1]), each N images."""
    gen = torch.Generator().manual_seed(seed)
    n = len(held_out)
    gaussian = torch.randn(held_out.shape, generator=gen).clamp(-1, 1)
    if held_out.shape[1] > 1:  # colour on grey: noise in each channel less its mean over the channels
        chroma = torch.randn(held_out.shape, generator=gen) * CHROMA
        colour = (held_out + chroma - chroma.mean(1, keepdim=True)).clamp(-1, 1)
    else:  # one channel has no colour: uniform noise
        colour = torch.rand(held_out.shape, generator=gen) * 2 - 1
    blank = train.mean((0, 2, 3), keepdim=True).expand_as(held_out).clone()
    half = held_out.clone()
    noisy = torch.randperm(n, generator=gen)[: n // 2]
    half[noisy] = torch.randn(half[noisy].shape, generator=gen).clamp(-1, 1)
    flat = held_out.flatten(2)
    order = torch.stack([torch.randperm(flat.shape[-1], generator=gen) for _ in range(n)])
    shuffled = torch.gather(flat, 2, order[:, None].expand_as(flat)).view_as(held_out)
    return {"gaussian": gaussian, "colour_noise": colour, "blank": blank, "half_noise": half, "shuffled": shuffled}


def run_gate(extract, train: torch.Tensor, held_out: torch.Tensor, device="cpu") -> dict:
    """The gate's table for the feature extractor `extract` (images -> [N, D] features): the floor,
    each broken set's distance and its ratio to the floor, and the verdict."""
    bar = progress(total=(len(train) + len(held_out) * (1 + len(BROKEN))), desc="sanity gate")

    def features(images):  # in chunks, so that a slow network shows its progress
        out = []
        for i in range(0, len(images), 250):
            out.append(extract(images[i : i + 250]))
            bar.update(len(out[-1]))
        return torch.cat(out)

    reference = Reference(*feature_stats(features(train)), device)
    floor = reference.fid(features(held_out))
    rows = {}
    for name, images in broken_sets(held_out, train).items():
        distance = reference.fid(features(images))
        rows[name] = {"fid": distance, "ratio": distance / floor if floor > 0 else math.inf}
    bar.close()
    failed = [name for name, row in rows.items() if not row["ratio"] >= RATIO]
    return {
        "floor": floor,
        "broken": rows,
        "ratio_needed": RATIO,
        "passed": not failed,
        "failed": failed,
        "train": len(train),
        "held_out": len(held_out),
    }


def on_data(data_cfg: dict, extract, device="cpu", caps: tuple[int, int] = CAPS) -> dict:
    """The gate of a fixed space on the configured data: its train and held-out splits, each cut
    to a fixed random subset of at most `caps` images."""
    from .data import load_split

    gen = torch.Generator().manual_seed(SEED)
    splits = []
    for split, cap in zip(("train", "test"), caps):
        images = load_split(data_cfg, split).images
        splits.append(images[torch.randperm(len(images), generator=gen)[:cap]] if len(images) > cap else images)
    return run_gate(extract, *splits, device)


def announce(kind: str, gate: dict, path, stage_run=None, tag: str = "features") -> None:
    """Print the gate's table (and the refusal where it failed) to the stage's log; log its figures."""
    print(
        f"[{tag}] the sanity gate of features.kind {kind} ({', '.join(BROKEN)} against the held-out "
        f"split):\n{table(gate)}",
        flush=True,
    )
    if not gate["passed"]:
        print(f"[{tag}] {refusal(kind, gate, path)}", flush=True)
    if stage_run is not None:
        stage_run.log_metrics(metrics(gate), step=0)


def table(gate: dict) -> str:
    """The gate as a markdown table with its verdict below."""
    lines = [
        f"| set | FID vs train ({gate['train']} images) | x floor |",
        "| --- | ---: | ---: |",
        f"| held-out split ({gate['held_out']}, the floor) | {gate['floor']:.3f} | 1 |",
    ]
    for name, row in gate["broken"].items():
        lines.append(f"| {name} | {row['fid']:.3f} | {row['ratio']:.1f} |")
    verdict = (
        "passed: every broken set is at least "
        if gate["passed"]
        else f"FAILED ({', '.join(gate['failed'])}): a broken set must be at least "
    )
    lines.append("")
    lines.append(f"Sanity gate {verdict}{gate['ratio_needed']:g}x the floor.")
    return "\n".join(lines)


def refusal(kind: str, gate: dict, path) -> str:
    """The one line that refuses a space which failed its gate, naming a space to use instead."""
    try:  # the record comes from a file, so its shape is not trusted
        worst = (
            ", ".join(f"{name} {float(gate['broken'][name]['ratio']):.1f}x" for name in gate["failed"])
            + " the real-vs-real floor"
        )
        needed = float(gate["ratio_needed"])
    except (KeyError, TypeError, ValueError):
        worst, needed = "its record is unreadable", RATIO
    instead = (
        "features.kind: autoencoder (label-free) or inception on RGB images with a GPU"
        if kind == "classifier"
        else "features.kind: inception (RGB images, best on a GPU) or classifier "
        "(a folder with one sub-folder per class)"
    )
    return (
        f"{path}: features.kind {kind} failed its sanity gate ({worst}; a broken set "
        f"must be {needed:g}x), so its FID cannot tell broken samples from real ones and is "
        f"refused for search; use {instead}, or more features.epochs"
    )


def metrics(gate: dict) -> dict[str, float]:
    """The gate's figures as MLflow metrics."""
    out = {"gate_floor": gate["floor"], "gate_passed": float(gate["passed"])}
    for name, row in gate["broken"].items():
        out[f"gate_{name}_ratio"] = row["ratio"]
    return out
