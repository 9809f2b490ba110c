"""LCSC's coefficient search: a nevergrad optimizer over one coefficient per checkpoint, with
fitness = FID of `samples` images at the target NFE, on noise that is the same for every
candidate (common random numbers)."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import torch

from . import profiles
from .evaluate import Scorer, make_noise
from .io import atomic_path, save_tensors, write_json
from .progress import progress
from .trail import Trail


def make_parametrization(k: int, scfg: dict):
    import nevergrad as ng

    lo, hi = scfg["bounds"]
    init = profiles.uniform(k) if scfg["init"] == "uniform" else profiles.last(k)
    if not (lo <= init.min() and init.max() <= hi):
        raise ValueError(f"search.bounds {scfg['bounds']} exclude the starting point search.init={scfg['init']}")
    param = ng.p.Array(init=init).set_bounds(lo, hi, full_range_sampling=False)
    param.set_mutation(sigma=scfg["sigma"])
    param.random_state = np.random.RandomState(scfg["seed"])
    return param


def to_coefficients(z: np.ndarray, parametrization: str) -> np.ndarray:
    """Map the optimizer's vector to coefficients; sum_to_one shifts it onto sum(c) = 1."""
    z = np.asarray(z, dtype=np.float64)
    if parametrization == "sum_to_one":
        return z + (1.0 - z.sum()) / len(z)
    return z


def run_search(cfg: dict, manifest: str | Path, features: str | Path, stats: str | Path,
               out_dir: str | Path, device: torch.device, run=None) -> dict:
    import nevergrad as ng

    scfg = cfg["search"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trail = Trail.open(manifest)
    scorer = Scorer(cfg, trail, features, stats, device, scfg["batch_size"])
    k = len(trail)
    param = make_parametrization(k, scfg)
    try:
        opt_cls = ng.optimizers.registry[scfg["optimizer"]]
    except KeyError:
        raise ValueError(f"search.optimizer: {scfg['optimizer']!r} is not a nevergrad optimizer; "
                         f"try CMA, NGOpt, TwoPointsDE, DE or OnePlusOne") from None
    opt = opt_cls(parametrization=param, budget=scfg["budget"], num_workers=scfg["num_workers"])
    opt.suggest(param.value)  # the starting point is scored exactly, so the search never ends worse
    noise = make_noise(scfg["samples"], scorer.shape, scfg["seed"], device)
    print(f"[search] {k} checkpoints, {scorer.loader.numel} parameters, {scfg['optimizer']} "
          f"budget {scfg['budget']}, {scfg['samples']} samples at NFE {scfg['nfe']}", flush=True)

    rows, best = [], (float("inf"), None, -1)
    bar = progress(total=scfg["budget"], desc="search")
    while len(rows) < scfg["budget"]:
        batch = [opt.ask() for _ in range(min(scfg["num_workers"], scfg["budget"] - len(rows)))]
        for cand in batch:
            t0 = time.perf_counter()
            c = to_coefficients(cand.value, scfg["parametrization"])
            fitness, _ = scorer.fid(scorer.weights_of(c), scfg["nfe"], noise)
            opt.tell(cand, fitness)
            seconds = time.perf_counter() - t0
            if fitness < best[0]:
                best = (fitness, c, len(rows))
            rows.append({"evaluation": len(rows), "fitness": fitness, "best_so_far": best[0],
                         "seconds": round(seconds, 4), **{f"c{i:03d}": v for i, v in enumerate(c)}})
            bar.update(1)
            bar.set_postfix(best=f"{best[0]:.2f}", last=f"{fitness:.2f}")
            if run is not None:
                run.log_metrics({"fitness": fitness, "best_fitness": best[0], "seconds": seconds},
                                step=len(rows) - 1)
    bar.close()

    with atomic_path(out_dir / "history.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    fitness, c, index = best
    scorer.loader.load(scorer.weights_of(c))
    save_tensors(out_dir / "best.safetensors", scorer.model.state_dict())
    result = {"coefficients": c.tolist(), "fitness": fitness, "evaluation": index,
              "trail_steps": trail.steps, "nfe": scfg["nfe"], "samples": scfg["samples"],
              "seed": scfg["seed"], "optimizer": scfg["optimizer"], "budget": scfg["budget"],
              "parametrization": scfg["parametrization"],
              "start_fitness": rows[0]["fitness"]}
    write_json(out_dir / "coefficients.json", result)
    return result
