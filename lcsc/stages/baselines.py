"""Stage baselines: every baseline profile over the trail, scored with the search's own fitness
(same NFE, samples and noise), plus the greedy soup, which needs those scores to exist."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..kernel import variants
from ..kernel.io import write_json
from ..kernel.profiles import greedy_soup, trail_profiles
from ..kernel.progress import progress
from ..kernel.scoring import Evaluator, Objective, Scorer, fitness_settings

NAME = "baselines"


@dataclass(frozen=True)
class Paths:
    manifest: Path
    features: Path
    stats: Path
    baselines: Path  # the scored profiles (JSON)


def run(cfg: dict, paths: Paths, model: str, device: torch.device, stage_run=None) -> dict:
    scfg, bcfg = cfg["search"], cfg["baselines"]
    scorer = Scorer.open(cfg, paths.manifest, paths.features, paths.stats, device, scfg["batch_size"], model=model)
    trail = scorer.trail
    objective = Objective.of(scfg)
    # The search's own fixed noise, so a baseline's fitness and a candidate's compare directly
    # (and the search reads these scores back instead of measuring them again).
    noises = Evaluator([scorer]).noises(scorer, objective, scfg["samples"], scfg["seed"])
    profiles = trail_profiles(trail.steps, bcfg)
    k = len(trail)
    fids: dict[str, dict] = {}  # the per-NFE FIDs of each vector scored, by its bytes

    def score(c: np.ndarray) -> float:
        fitness, fids[c.tobytes()] = scorer.measure(c, objective, noises)
        return fitness

    # The greedy soup scores every checkpoint alone (k), then k - 1 soups.
    bar = progress(total=len(profiles) + (2 * k - 1 if bcfg["greedy_soup"] else 0), desc="baselines")
    result = {
        **fitness_settings(scfg, scorer),
        "trail_steps": trail.steps,
        "trail_sha256": trail.fingerprint,
        "profiles": {},
    }
    for name, c in profiles.items():
        t0 = time.perf_counter()
        fitness = score(c)
        result["profiles"][name] = {
            "coefficients": c.tolist(),
            "fitness": fitness,
            "fids": {str(n): f for n, f in fids[c.tobytes()].items()},
            "seconds": round(time.perf_counter() - t0, 3),
        }
        bar.update(1)
        bar.set_postfix(name=name, fitness=f"{fitness:.2f}")
    if bcfg["greedy_soup"]:
        c, fitness, log = greedy_soup(k, score, bar)
        result["profiles"][variants.GREEDY_SOUP] = {
            "coefficients": c.tolist(),
            "fitness": fitness,
            "fids": {str(n): f for n, f in fids[c.tobytes()].items()},
            "steps": log,
        }
    bar.close()
    write_json(paths.baselines, result)
    if stage_run is not None:
        for name, p in result["profiles"].items():
            stage_run.log_metrics({f"fitness.{name}": p["fitness"]}, step=0)
        stage_run.log_artifact(paths.baselines)
    return result
