"""The baselines stage: every baseline profile over the trail, scored with the search's own
fitness (same NFE, samples and noise), plus the greedy soup, which needs those scores to exist.

Greedy soup (after Wortsman et al. 2022, with an early stop): order the checkpoints by their own
FID, then add them one by one to a uniform soup and stop at the first one that does not improve
the soup's FID (Wortsman et al. skip it and go on; stopping keeps the cost at most 2K scores).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .evaluate import Scorer
from .io import write_json
from .profiles import trail_profiles
from .progress import progress
from .trail import Trail


def fitness_settings(cfg: dict, scorer: Scorer) -> dict:
    """Everything a search fitness depends on besides the trail: scores made under other
    settings must not be compared with the search's own."""
    scfg = cfg["search"]
    return {"nfe": scfg["nfe"], "samples": scfg["samples"], "seed": scfg["seed"],
            "feature_hash": scorer.features.hash, "stats_hash": scorer.stats_hash,
            **scorer.sampler.settings(scfg["nfe"]), "batch_size": scfg["batch_size"]}


def greedy_soup(k: int, score, bar=None) -> tuple[np.ndarray, float, list[dict]]:
    """Greedy soup over k checkpoints with `score(c) -> fitness`; returns (c, fitness, steps taken)."""
    own = []
    for i in range(k):
        c = np.zeros(k)
        c[i] = 1.0
        own.append(score(c))
        if bar is not None:
            bar.update(1)
    order = np.argsort(own, kind="stable")
    members = [int(order[0])]
    best = own[order[0]]
    log = [{"added": members[0], "fitness": best}]
    for i in order[1:]:
        c = np.zeros(k)
        c[members + [int(i)]] = 1.0 / (len(members) + 1)
        fitness = score(c)
        if bar is not None:
            bar.total += 1
            bar.update(1)
        log.append({"tried": int(i), "fitness": fitness})
        if fitness >= best:
            break
        members.append(int(i))
        best = fitness
    c = np.zeros(k)
    c[members] = 1.0 / len(members)
    return c, best, log


def run_baselines(cfg: dict, manifest: str | Path, features: str | Path, stats: str | Path,
                  out: str | Path, device: torch.device, run=None) -> dict:
    scfg, bcfg = cfg["search"], cfg["baselines"]
    trail = Trail.open(manifest)
    scorer = Scorer(cfg, trail, features, stats, device, scfg["batch_size"])
    noise = scorer.make_noise(scfg["samples"], scfg["seed"])
    profiles = trail_profiles(trail.steps, bcfg)
    k = len(trail)

    def score(c: np.ndarray) -> float:
        return scorer.fid(scorer.weights_of(c), scfg["nfe"], noise)[0]

    bar = progress(total=len(profiles) + (k if bcfg["greedy_soup"] else 0), desc="baselines")
    result = {**fitness_settings(cfg, scorer), "trail_steps": trail.steps, "trail_sha256": trail.fingerprint,
              "profiles": {}}
    for name, c in profiles.items():
        t0 = time.perf_counter()
        fitness = score(c)
        result["profiles"][name] = {"coefficients": c.tolist(), "fitness": fitness,
                                    "seconds": round(time.perf_counter() - t0, 3)}
        bar.update(1)
        bar.set_postfix(name=name, fitness=f"{fitness:.2f}")
    if bcfg["greedy_soup"]:
        c, fitness, log = greedy_soup(k, score, bar)
        result["profiles"]["greedy_soup"] = {"coefficients": c.tolist(), "fitness": fitness, "steps": log}
    bar.close()
    if run is not None:
        for name, p in result["profiles"].items():
            run.log_metrics({f"fitness.{name}": p["fitness"]}, step=0)
    write_json(out, result)
    return result
