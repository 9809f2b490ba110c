"""Stage evaluate: the FID of one variant at every NFE of the sweep, on seeds the search never
saw, with precision, recall and KID in the same feature space where the reference statistics
hold reference features, and a grid of its samples at the search NFE (the first, with several).

With `evaluate.repeats` every number is measured on each evaluation seed, and for lcsc with
`search.repeats` on each search's coefficients too; the result holds every run and the mean and
standard deviation over them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..kernel import variants
from ..kernel.devices import peak_memory
from ..kernel.features import cache_dir
from ..kernel.floor import data_floor
from ..kernel.images import by_class, save_grid
from ..kernel.io import write_json
from ..kernel.metrics import names as metric_names
from ..kernel.models import headline_nfe, repeat_seeds
from ..kernel.progress import progress
from ..kernel.scoring import Latents, Scorer, labels_drawn

NAME = "evaluate"


@dataclass(frozen=True)
class Paths:
    manifest: Path
    features: Path
    stats: Path
    result: Path  # the FIDs (JSON)
    grid: Path  # the sample grid (PNG)
    # For lcsc: each search's (search.repeats), the first first.
    coefficients: tuple[Path, ...] = ()
    # The baselines stage's, for a profile (else computed from the config).
    baselines: Path | None = None


def _sources(scorer: Scorer, variant: str, paths: Paths, bcfg: dict) -> list[tuple]:
    """(weights, coefficients) of each set of weights the variant stands for: one, or for lcsc
    one per search."""
    files = list(paths.coefficients) if variants.source(variant) == variants.COEFFICIENTS else [None]
    return [variants.weights(scorer, variant, f, paths.baselines, bcfg) for f in files]


def summarise(runs: list[dict], nfes: list[int]) -> dict:
    """Mean (and, over two or more runs, the sample standard deviation) of each metric at each NFE."""
    out: dict = {}
    for metric in metric_names():
        values = {n: [r[metric][str(n)] for r in runs if str(n) in r.get(metric, {})] for n in nfes}
        # A metric missing at some NFE (stats without reference features: FID only) is left out
        # rather than averaged over nothing.
        if not all(values.values()):
            continue
        out[metric] = {str(n): float(np.mean(v)) for n, v in values.items()}
        if len(runs) > 1:
            out[f"{metric}_std"] = {str(n): float(np.std(v, ddof=1)) for n, v in values.items()}
    return out


def run(cfg: dict, paths: Paths, model: str, variant: str, device: torch.device, stage_run=None) -> dict:
    ecfg = cfg["evaluate"]
    scorer = Scorer.open(cfg, paths.manifest, paths.features, paths.stats, device, ecfg["batch_size"], model=model)
    sources = _sources(scorer, variant, paths, cfg["baselines"])
    seeds = repeat_seeds(ecfg["seed"], ecfg.get("repeats", 1))
    nfes = sorted(ecfg["nfe"])
    if scorer.reference_features is None:
        print(
            f"[evaluate] {paths.stats} holds no reference features (written by an older lcsc): FID only; "
            "rerun reference_stats for precision, recall and KID",
            flush=True,
        )
    grid_nfe = headline_nfe(cfg["search"]["nfe"])
    runs, seconds = _measure(scorer, sources, seeds, nfes, grid_nfe, ecfg, paths, f"{model}/{variant}")
    print(f"[evaluate] {model}/{variant}: {peak_memory([scorer.device])}", flush=True)
    summary = summarise(runs, nfes)
    result = {
        "model": model,
        "variant": variant,
        "samples": ecfg["samples"],
        "seed": ecfg["seed"],
        **summary,
        "runs": runs,
        "repeats": {"searches": len(sources), "seeds": len(seeds), "n": len(runs)},
        "seconds": {str(k): round(v / len(runs), 3) for k, v in seconds.items()},
        **_about(cfg, scorer, sources),
    }
    write_json(paths.result, result)
    if stage_run is not None:
        _log(stage_run, result, summary, nfes, paths)
    return result


def _about(cfg: dict, scorer: Scorer, sources: list[tuple]) -> dict:
    """What the result records besides the metrics: the weights, the sampler, the data-vs-data floor
    and, for a class-conditional model, how the samples' classes were drawn (for the report)."""
    samples = cfg["evaluate"]["samples"]
    floor = data_floor(cfg["data"], scorer.features, samples, cache_dir(cfg))
    print(
        f"[evaluate] the data-vs-data floor: FID {floor['fid']:.3f} between two disjoint sets of {floor['n']} "
        f"real images",
        flush=True,
    )
    out = {
        "coefficients": sources[0][1],
        "trail_steps": scorer.trail.steps,
        "sampler": scorer.sampler.settings(None),
        "floor": floor,
    }
    if scorer.num_classes is not None:
        out["conditioning"] = {"num_classes": scorer.num_classes, "labels": labels_drawn(samples, scorer.num_classes)}
    if len(sources) > 1:
        out["search_coefficients"] = [c for _, c in sources]
    return out


def _measure(
    scorer: Scorer,
    sources: list[tuple],
    seeds: list[int],
    nfes: list[int],
    grid_nfe: int,
    ecfg: dict,
    paths: Paths,
    name: str,
) -> tuple[list[dict], dict[int, float]]:
    """Every run (one per search and seed) with each metric at each NFE, and the seconds spent at each NFE."""
    runs, seconds = [], dict.fromkeys(nfes, 0.0)
    bar = progress(total=len(nfes) * len(seeds) * len(sources), desc=f"evaluate {name}")
    for s, (flat, _) in enumerate(sources):
        for seed in seeds:
            # One noise per seed, shared by every search's weights and every NFE, so the runs differ only
            # in what they are meant to.
            noise = scorer.make_noise(ecfg["samples"], seed)
            one = {"search": s, "seed": seed, **{m: {} for m in metric_names()}}
            for nfe in nfes:
                t0 = time.perf_counter()
                measured, images = scorer.quality(flat, nfe, noise)
                seconds[nfe] += time.perf_counter() - t0
                # (KID's spread over its subsets, kid_std, is left out: the runs give one)
                for metric in metric_names():
                    if metric in measured:
                        one[metric][str(nfe)] = measured[metric]
                # the grid shows the first run's samples only: the evaluation seed through the first search
                if nfe == grid_nfe and not runs:
                    _save_grid(scorer, images, noise, ecfg["grid"], paths.grid)
                bar.set_postfix(nfe=nfe, fid=f"{measured['fid']:.2f}")
                bar.update(1)
            runs.append({k: v for k, v in one.items() if v != {}})
    bar.close()
    return runs, seconds


def _save_grid(scorer: Scorer, images: torch.Tensor, noise: Latents, grid: int, path: Path) -> None:
    """The first `grid` samples, or for a class-conditional model a row per class."""
    if noise.labels is None:
        save_grid(images[:grid], path)
    else:
        rows, per_row = by_class(images, noise.labels, grid, scorer.num_classes)
        save_grid(rows, path, per_row)


def _log(stage_run, result: dict, summary: dict, nfes: list[int], paths: Paths) -> None:
    """Each metric at each NFE (as the step), the conditioning as tags, and the result and grid as artifacts."""
    for n in nfes:
        logged = {"fid": summary["fid"][str(n)], "seconds": result["seconds"][str(n)]}
        logged |= {f"{k}_nfe{n}": v[str(n)] for k, v in summary.items()}
        stage_run.log_metrics(logged, step=n)
    if "conditioning" in result:
        conditioning = result["conditioning"]
        stage_run.set_tags(
            {"lcsc.num_classes": str(conditioning["num_classes"]), "lcsc.labels": conditioning["labels"]}
        )
    stage_run.log_artifact(paths.result)
    stage_run.log_artifact(paths.grid)
