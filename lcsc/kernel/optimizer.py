"""The search's optimizer: a nevergrad optimizer over one number per checkpoint, and the map from
its vectors to coefficients within `search.bounds` (`search.parametrization`).

Another optimizer from nevergrad's registry is a config value (`search.optimizer`); another kind
of optimizer needs only `ask()` returning candidates with a `.value` and `tell(candidate, loss)`.
"""

from __future__ import annotations

import nevergrad as ng
import numpy as np

from .errors import ConfigError


def optimizer_class(scfg: dict):
    """`search.optimizer`'s class in nevergrad's registry."""
    try:
        return ng.optimizers.registry[scfg["optimizer"]]
    except KeyError:
        raise ConfigError(
            f"search.optimizer: {scfg['optimizer']!r} is not a nevergrad optimizer; "
            f"try CMA, NGOpt, TwoPointsDE, DE or OnePlusOne"
        ) from None


def make_optimizer(init: np.ndarray, scfg: dict):
    """The configured nevergrad optimizer, starting at `init`, seeded by `search.seed`."""
    return optimizer_class(scfg)(
        parametrization=make_parametrization(init, scfg), budget=scfg["budget"], num_workers=scfg["num_workers"]
    )


def make_parametrization(init: np.ndarray, scfg: dict):
    lo, hi = scfg["bounds"]
    if not (lo <= init.min() and init.max() <= hi):
        raise ConfigError(f"search.bounds {scfg['bounds']} exclude the starting point {np.round(init, 3).tolist()}")
    # With both bounds set, nevergrad would otherwise draw its sampled candidates uniformly over
    # the whole box; the search is meant to start around `init`.
    param = ng.p.Array(init=init).set_bounds(lo, hi, full_range_sampling=False)
    param.set_mutation(sigma=scfg["sigma"])
    # nevergrad draws its randomness from the parametrization's random state: seeding it makes
    # the whole search repeat exactly for one search.seed.
    param.random_state = np.random.RandomState(scfg["seed"])
    return param


def to_coefficients(z: np.ndarray, parametrization: str, bounds) -> np.ndarray:
    """Map the optimizer's vector to coefficients within `bounds`: `free` keeps z (clipped); `sum_to_one`
    takes the nearest point with sum(c) = 1 inside the bounds, c = clip(z + t, lo, hi) for the one
    shift t that makes the sum 1 (the Euclidean projection onto that set; a plain shift when no
    coefficient reaches a bound)."""
    z = np.asarray(z, dtype=np.float64)
    lo, hi = bounds
    if parametrization != "sum_to_one":
        return np.clip(z, lo, hi)
    shifted = z + (1.0 - z.sum()) / len(z)
    if lo <= shifted.min() and shifted.max() <= hi:
        return shifted
    return np.clip(z + _shift_onto_sum(z, lo, hi, 1.0), lo, hi)


def _shift_onto_sum(z: np.ndarray, lo: float, hi: float, total: float) -> float:
    """The t with sum(clip(z + t, lo, hi)) = total. That sum grows piecewise linearly in t, with
    kinks where a coefficient meets a bound, so t lies between two neighbouring kinks, where a
    linear interpolation is exact."""
    if not len(z) * lo <= total <= len(z) * hi:
        raise ConfigError(f"search.bounds {[lo, hi]}: {len(z)} coefficients within them cannot sum to {total}")
    kinks = np.unique(np.concatenate([lo - z, hi - z]))
    excess = np.array([np.clip(z + t, lo, hi).sum() - total for t in kinks])
    # The first kink whose excess is >= 0 (excess is non-decreasing). It always exists: at the last
    # kink every coefficient is at hi, a sum the check above made >= total; at j = 0 all are at lo,
    # so an excess >= 0 there is exactly 0.
    j = int(np.searchsorted(excess, 0.0))
    if excess[j] == 0.0 or j == 0:
        return float(kinks[j])
    a, b = kinks[j - 1], kinks[j]
    return float(a + (b - a) * (0.0 - excess[j - 1]) / (excess[j] - excess[j - 1]))
