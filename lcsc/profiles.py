"""Baselines as coefficient vectors over one checkpoint trail: last, uniform, LAWA, EMA and EDM2
power-function EMA profiles. The greedy soup needs FIDs and lives in lcsc.baselines."""

from __future__ import annotations

import numpy as np

from .config import ConfigError


def variant_names(cfg: dict, model: str = "dm") -> list[str]:
    """Every variant the evaluation compares for `model`, baselines first and lcsc last. A
    truncated trail (the training-cost experiment) is compared through its last and lcsc only."""
    from .config import for_model, truncation

    if truncation(model) is not None:
        return ["last", "lcsc"]
    cfg = for_model(cfg, model)
    b = cfg["baselines"]
    return ["last", *[f"ema_{d}" for d in cfg["train"]["ema_decays"]], *profile_names(b),
            *(["greedy_soup"] if b["greedy_soup"] else []), "lcsc"]


def profile_names(bcfg: dict) -> list[str]:
    """Names of the closed-form profiles `trail_profiles` computes (without last)."""
    return ["uniform", *[f"lawa_{n}" for n in bcfg["lawa_last"]],
            *[f"ema_{d}_profile" for d in bcfg["ema_decays"]],
            *[f"power_{s}" for s in bcfg["power_sigma_rels"]]]


def last(k: int) -> np.ndarray:
    c = np.zeros(k)
    c[-1] = 1.0
    return c


def uniform(k: int) -> np.ndarray:
    return np.full(k, 1.0 / k)


def lawa(k: int, n: int) -> np.ndarray:
    """Uniform over the last n checkpoints (LAWA, Kaddour 2022; Sanyal et al. 2023)."""
    if not 1 <= n <= k:
        raise ConfigError(f"baselines.lawa_last: {n} checkpoints asked for, the trail has {k}; use at most {k}")
    c = np.zeros(k)
    c[-n:] = 1.0 / n
    return c


def _lumped(steps, weight_of_iterate) -> np.ndarray:
    """Give each saved checkpoint the weight of the iterates in (previous step, its step]."""
    steps = np.asarray(steps, dtype=np.int64)
    w = weight_of_iterate(np.arange(1, steps[-1] + 1, dtype=np.float64))
    cum = np.concatenate([[0.0], np.cumsum(w)])
    mass = cum[steps] - cum[np.concatenate([[0], steps[:-1]])]
    return mass / mass.sum()


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


def power_gamma(sigma_rel: float) -> float:
    """EDM2's exponent for a relative EMA width (Karras et al. 2024, eq. 3 solved for gamma):
    sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3))."""
    s2 = sigma_rel ** 2
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    real = roots[np.isreal(roots)].real
    return float(real.max())


def power_profile(steps: list[int], sigma_rel: float) -> np.ndarray:
    """EDM2's power-function EMA at the end of training: iterate t weighs t^gamma."""
    gamma = power_gamma(sigma_rel)
    total = float(np.asarray(steps)[-1])
    return _lumped(steps, lambda t: (t / total) ** gamma)


def trail_profiles(steps: list[int], bcfg: dict) -> dict[str, np.ndarray]:
    """All closed-form baselines of the `baselines` config, plus `last`, by name."""
    k = len(steps)
    out = {"last": last(k), "uniform": uniform(k)}
    out |= {f"lawa_{n}": lawa(k, n) for n in bcfg["lawa_last"]}
    out |= {f"ema_{d}_profile": ema_profile(steps, d) for d in bcfg["ema_decays"]}
    out |= {f"power_{s}": power_profile(steps, s) for s in bcfg["power_sigma_rels"]}
    return out
