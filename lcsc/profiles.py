"""Baselines as coefficient vectors over one checkpoint trail."""

from __future__ import annotations

import numpy as np


def variant_names(train_cfg: dict) -> list[str]:
    """Every variant the evaluation compares: last, each EMA kept in training, uniform, lcsc."""
    return ["last", *[f"ema_{d}" for d in train_cfg["ema_decays"]], "uniform", "lcsc"]


def last(k: int) -> np.ndarray:
    c = np.zeros(k)
    c[-1] = 1.0
    return c


def uniform(k: int) -> np.ndarray:
    return np.full(k, 1.0 / k)


def ema_profile(steps: list[int], decay: float) -> np.ndarray:
    """Weights an EMA with `decay` gives the training iterates, lumped onto the saved checkpoint
    that closes each interval and renormalised over the trail (the initial weights are not in
    it). Iterate s of T gets (1 - decay) * decay^(T - s)."""
    steps = np.asarray(steps)
    total = steps[-1]
    bounds = np.concatenate([[0], steps])
    # sum_{s=a+1}^{b} (1-d) d^(T-s) = d^(T-b) - d^(T-a)
    mass = decay ** (total - bounds[1:]) - decay ** (total - bounds[:-1])
    return mass / mass.sum()
