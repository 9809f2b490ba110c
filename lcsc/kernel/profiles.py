"""Baselines as coefficient vectors over one checkpoint trail: last, uniform, LAWA, EMA and EDM2
power-function EMA profiles, and the greedy soup, which builds its vector from the scores of others.

Greedy soup as in model soups (Wortsman et al. 2022): order the checkpoints by their own FID,
then try each in that order in a uniform soup, keep it when the soup's FID does not get worse and
skip it otherwise, through the whole trail (2K - 1 scores)."""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def profile_names(bcfg: dict) -> list[str]:
    """Names of the closed-form profiles `trail_profiles` computes (without last)."""
    return [
        "uniform",
        *[f"lawa_{n}" for n in bcfg["lawa_last"]],
        *[ema_profile_name(d) for d in bcfg["ema_decays"]],
        *[f"power_{s}" for s in bcfg["power_sigma_rels"]],
    ]


def ema_profile_name(decay: float) -> str:
    return f"ema_{decay}_profile"


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


# Up to this many training iterates, a profile sums their weights one by one; beyond it (a trail
# whose steps count images, or a long run), in closed form. Steps are never a length past it.
EXACT_ITERATES = 2**22


def _lumped(steps, weight_of_iterate) -> np.ndarray:
    """Give each saved checkpoint the weight of the iterates in (previous step, its step]."""
    steps = np.asarray(steps, dtype=np.int64)
    w = weight_of_iterate(np.arange(1, steps[-1] + 1, dtype=np.float64))
    # Prefix sums once over all iterates: each checkpoint's mass is then one difference, whatever
    # the gaps between saved steps.
    cum = np.concatenate([[0.0], np.cumsum(w)])
    mass = cum[steps] - cum[np.concatenate([[0], steps[:-1]])]
    return mass / mass.sum()


def _power_mass(steps, gamma: float) -> np.ndarray:
    """sum_{t=a+1}^{b} (t/T)^gamma over each interval (a, b] of the steps, in closed form: the
    integral with the Euler-Maclaurin corrections f/2 and f'/12 (relative error about T^-3)."""
    total = float(steps[-1])
    u = np.asarray(steps, dtype=np.float64) / total
    a, b = np.concatenate([[0.0], u[:-1]]), u
    integral = total * (b ** (gamma + 1) - a ** (gamma + 1)) / (gamma + 1)
    ends = (b**gamma - a**gamma) / 2
    # The slope term at a = 0 is left out (f' is infinite there for gamma < 1, and 0 for gamma > 1);
    # a is set to 1 before the power so no inf * 0 = nan appears before the mask zeroes it.
    slopes = gamma * (b ** (gamma - 1) - np.where(a > 0, a, 1.0) ** (gamma - 1) * (a > 0)) / (12 * total)
    return integral + ends + slopes


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
    s2 = sigma_rel**2
    # s2 (gamma + 2)^2 (gamma + 3) - (gamma + 1) = 0 multiplied out; its largest real root is the
    # gamma EDM2's own code takes.
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    real = roots[np.isreal(roots)].real
    return float(real.max())


def power_profile(steps: list[int], sigma_rel: float) -> np.ndarray:
    """EDM2's power-function EMA at the end of training: iterate t weighs t^gamma."""
    gamma = power_gamma(sigma_rel)
    total = float(np.asarray(steps)[-1])
    if steps[-1] > EXACT_ITERATES:
        mass = _power_mass(steps, gamma)
        return mass / mass.sum()
    return _lumped(steps, lambda t: (t / total) ** gamma)


def trail_profiles(steps: list[int], bcfg: dict) -> dict[str, np.ndarray]:
    """All closed-form baselines of the `baselines` config, plus `last`, by name."""
    k = len(steps)
    out = {"last": last(k), "uniform": uniform(k)}
    out |= {f"lawa_{n}": lawa(k, n) for n in bcfg["lawa_last"]}
    out |= {ema_profile_name(d): ema_profile(steps, d) for d in bcfg["ema_decays"]}
    out |= {f"power_{s}": power_profile(steps, s) for s in bcfg["power_sigma_rels"]}
    return out


def greedy_soup(k: int, score, bar=None) -> tuple[np.ndarray, float, list[dict]]:
    """Greedy soup over k checkpoints with `score(c) -> fitness`; returns (c, fitness, steps
    taken). Every checkpoint is tried once, in order of its own fitness: kept in the uniform soup
    when the soup's fitness does not get worse, skipped when it does."""
    own = []
    for i in range(k):
        c = np.zeros(k)
        c[i] = 1.0
        own.append(score(c))
        if bar is not None:
            bar.update(1)
    # Stable: checkpoints of equal fitness keep their trail order, so ties break the same way every run.
    order = np.argsort(own, kind="stable")
    members = [int(order[0])]
    best = own[order[0]]
    log = [{"added": members[0], "fitness": best}]
    for i in order[1:]:
        c = np.zeros(k)
        c[members + [int(i)]] = 1.0 / (len(members) + 1)
        fitness = score(c)
        if bar is not None:
            bar.update(1)
        if fitness <= best:
            members.append(int(i))
            best = fitness
            log.append({"added": int(i), "fitness": fitness})
        else:
            log.append({"skipped": int(i), "fitness": fitness})
    c = np.zeros(k)
    c[members] = 1.0 / len(members)
    return c, best, log
