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
from .baselines import fitness_settings
from .evaluate import Scorer, make_noise
from .io import atomic_path, read_json, save_tensors, write_json
from .progress import progress
from .trail import Trail


def make_parametrization(init: np.ndarray, scfg: dict):
    import nevergrad as ng

    lo, hi = scfg["bounds"]
    if not (lo <= init.min() and init.max() <= hi):
        raise ValueError(f"search.bounds {scfg['bounds']} exclude the starting point {np.round(init, 3).tolist()}")
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


def _write_history(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def run_search(cfg: dict, manifest: str | Path, features: str | Path, stats: str | Path,
               out_dir: str | Path, device: torch.device, run=None,
               baselines: str | Path | None = None) -> dict:
    """Three phases, all in history.csv: `start` lists the baseline profiles with their fitness
    (read from the baselines stage's file, or scored here when there is none) and the optimizer
    starts at the best; `search` asks and tells the optimizer for `budget` evaluations; `rescore`
    scores the top candidates again on more samples with another seed and keeps the best of
    those, which removes most of the luck of the screening noise."""
    import nevergrad as ng

    scfg = cfg["search"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trail = Trail.open(manifest)
    scorer = Scorer(cfg, trail, features, stats, device, scfg["batch_size"])
    try:
        opt_cls = ng.optimizers.registry[scfg["optimizer"]]
    except KeyError:
        raise ValueError(f"search.optimizer: {scfg['optimizer']!r} is not a nevergrad optimizer; "
                         f"try CMA, NGOpt, TwoPointsDE, DE or OnePlusOne") from None
    noise = make_noise(scfg["samples"], scorer.shape, scfg["seed"], device)
    known: dict[str, float] = {}
    if baselines is not None:
        scored = read_json(baselines)
        trail.check_fingerprint(scored.get("trail_sha256"), baselines)
        settings = fitness_settings(cfg, scorer)
        if {k: scored.get(k) for k in settings} != settings:
            raise ValueError(f"{baselines}: scored with other fitness settings (NFE, samples, seed, features or "
                             "sampler) than this search; rerun the baselines stage")
        starts = {n: np.asarray(p["coefficients"]) for n, p in scored["profiles"].items()}
        known = {n: p["fitness"] for n, p in scored["profiles"].items()}
    else:
        starts = profiles.trail_profiles(trail.steps, cfg["baselines"])
    if scfg["init"] != "best_profile":
        starts = {scfg["init"]: starts[scfg["init"]]}
    print(f"[search] {len(trail)} checkpoints, {scorer.loader.numel} parameters, {scfg['optimizer']} "
          f"budget {scfg['budget']}, {scfg['samples']} samples at NFE {scfg['nfe']}", flush=True)

    rows: list[dict] = []
    best = float("inf")  # best screening fitness so far
    bar = progress(total=len(starts) + scfg["budget"] + scfg["rescore_top"], desc="search")

    def record(phase: str, c: np.ndarray, fitness: float, seconds: float, name: str = "") -> None:
        nonlocal best
        if phase != "rescore":
            best = min(best, fitness)
        rows.append({"evaluation": len(rows), "phase": phase, "name": name, "fitness": fitness,
                     "best_so_far": best, "seconds": round(seconds, 4),
                     **{f"c{i:03d}": v for i, v in enumerate(c)}})
        bar.update(1)
        bar.set_postfix(best=f"{best:.2f}", last=f"{fitness:.2f}")
        if run is not None:
            key = "rescore_fitness" if phase == "rescore" else "fitness"
            run.log_metrics({key: fitness, "best_fitness": best, "seconds": seconds}, step=len(rows) - 1)

    def score(c: np.ndarray, nfe_noise: torch.Tensor) -> tuple[float, float]:
        t0 = time.perf_counter()
        fitness, _ = scorer.fid(scorer.weights_of(c), scfg["nfe"], nfe_noise)
        return fitness, time.perf_counter() - t0

    for name, c in starts.items():
        record("start", c, *((known[name], 0.0) if name in known else score(c, noise)), name=name)
    start_row = min(rows, key=lambda r: r["fitness"])
    init = np.array([start_row[f"c{i:03d}"] for i in range(len(trail))])
    opt = opt_cls(parametrization=make_parametrization(init, scfg), budget=scfg["budget"],
                  num_workers=scfg["num_workers"])
    end = len(rows) + scfg["budget"]
    while len(rows) < end:
        batch = [opt.ask() for _ in range(min(scfg["num_workers"], end - len(rows)))]
        for cand in batch:
            c = to_coefficients(cand.value, scfg["parametrization"])
            fitness, seconds = score(c, noise)
            opt.tell(cand, fitness)
            record("search", c, fitness, seconds)

    chosen = min(rows, key=lambda r: r["fitness"])
    rescored = None
    if scfg["rescore_top"] > 0:
        rescore_noise = make_noise(scfg["rescore_samples"], scorer.shape, scfg["rescore_seed"], device)
        top = sorted(rows, key=lambda r: r["fitness"])[:scfg["rescore_top"]]
        results = []
        for row in top:
            c = np.array([row[f"c{i:03d}"] for i in range(len(trail))])
            fitness, seconds = score(c, rescore_noise)
            record("rescore", c, fitness, seconds, name=f"of evaluation {row['evaluation']}")
            results.append((fitness, row))
        rescored, chosen = min(results, key=lambda x: x[0])
    bar.close()
    _write_history(out_dir / "history.csv", rows)

    c = np.array([chosen[f"c{i:03d}"] for i in range(len(trail))])
    scorer.loader.load(scorer.weights_of(c))
    save_tensors(out_dir / "best.safetensors", scorer.model.state_dict())
    result = {"coefficients": c.tolist(), "fitness": chosen["fitness"], "evaluation": chosen["evaluation"],
              "rescore_fitness": rescored, "trail_steps": trail.steps, "trail_sha256": trail.fingerprint,
              "nfe": scfg["nfe"],
              "samples": scfg["samples"], "seed": scfg["seed"], "optimizer": scfg["optimizer"],
              "budget": scfg["budget"], "parametrization": scfg["parametrization"],
              "start": {"name": start_row["name"], "fitness": start_row["fitness"]},
              "starts": {r["name"]: r["fitness"] for r in rows if r["phase"] == "start"}}
    write_json(out_dir / "coefficients.json", result)
    return result
