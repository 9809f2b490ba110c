"""Checks of the search's keys: its NFEs and their weights, its seeds, optimizer, bounds and penalty."""

from __future__ import annotations

from ..models import nfe_list, repeat_seeds

# Optimizers accepted without importing nevergrad at parse time (its import takes ~2 s); any other
# name is looked up in nevergrad's registry.
COMMON_OPTIMIZERS = ("CMA", "NGOpt", "TwoPointsDE", "DE", "OnePlusOne", "DiagonalCMA", "PSO", "RandomSearch")


def largest_nfe(cfg: dict) -> int:
    """The largest NFE any stage samples at (search.nfe and evaluate.nfe)."""
    nfe = cfg["search"]["nfe"]
    return max([*(nfe if isinstance(nfe, list) else [nfe]), *cfg["evaluate"]["nfe"]])


def search_nfe_checks(key: str, nfe, weights_key: str, weights, sweep_key: str, sweep: list[int]) -> list[str]:
    """Every search NFE among the evaluated ones, and one weight per search NFE."""
    nfes = nfe_list(nfe)
    errors = []
    outside = [n for n in nfes if n not in sweep]
    if outside:
        errors.append(
            f"{key}: {outside if len(nfes) > 1 else outside[0]} is not in {sweep_key} {sweep}; "
            "every search NFE must be one of the evaluated NFEs"
        )
    if weights is not None and len(weights) != len(nfes):
        errors.append(
            f"{weights_key}: {len(weights)} weights for the {len(nfes)} NFEs of {key} {nfes}; "
            "give one per NFE, in the same order"
        )
    return errors


def seed_checks(scfg: dict, ecfg: dict) -> list[str]:
    """The evaluation seeds (evaluate.seed and those its repeats derive) are none of the searches'
    (search.seed, search.rescore_seed and theirs), so every reported FID is on noise no search saw."""
    evaluation = repeat_seeds(ecfg["seed"], ecfg.get("repeats", 1))
    out = []
    for key in ("seed", "rescore_seed"):
        used = repeat_seeds(scfg[key], scfg.get("repeats", 1))
        shared = sorted(set(used) & set(evaluation))
        if shared:
            what = (
                f"equals search.{key}"
                if len(used) == len(evaluation) == 1
                else f"and its repeats (evaluate.repeats) share seed {shared[0]} with search.{key} and its repeats "
                "(search.repeats)"
            )
            out.append(f"evaluate.seed: {ecfg['seed']} {what}; the evaluation must use seeds the search never saw")
    return out


def search_checks(cfg: dict) -> list[str]:
    scfg, errors = cfg["search"], []
    if scfg["compile"] and isinstance(scfg["devices"], list) and len(scfg["devices"]) > 1:
        errors.append(
            f"search.compile: true with {len(scfg['devices'])} search.devices; torch.compile is "
            "not thread-safe and each device's worker is a thread: compile on one device, or "
            "set search.compile: false"
        )
    if scfg["max_norm"] is not None and scfg["max_norm"] < 1:
        errors.append(
            f"search.max_norm: {scfg['max_norm']} is below 1, the norm of the last checkpoint's "
            "coefficients; every baseline profile must be a valid start"
        )
    if scfg["penalty"] != "none" and scfg["penalty_weight"] == 0:
        errors.append(
            f"search.penalty: {scfg['penalty']!r} with search.penalty_weight 0 penalises nothing; "
            "set a weight (or penalty: none)"
        )
    errors += _optimizer_checks(scfg)
    lo, hi = scfg["bounds"]
    if lo < hi and not (lo <= 0 and hi >= 1):
        errors.append(
            f"search.bounds: {[lo, hi]} must contain [0, 1] (lower <= 0, upper >= 1), so that every "
            "baseline profile (the last checkpoint, averages, EMAs) is a valid start"
        )
    return errors


def _optimizer_checks(scfg: dict) -> list[str]:
    """A name in nevergrad's registry, where nevergrad is installed."""
    if scfg["optimizer"] in COMMON_OPTIMIZERS:
        return []
    try:
        import nevergrad as ng
    except ImportError:  # the report's env has no nevergrad; the search's env checks again
        return []
    if scfg["optimizer"] in ng.optimizers.registry:
        return []
    close = sorted(n for n in ng.optimizers.registry if n.lower() == scfg["optimizer"].lower())
    return [
        f"search.optimizer: {scfg['optimizer']!r} is not a nevergrad optimizer; "
        + (f"did you mean {close[0]}?" if close else "try CMA, NGOpt, TwoPointsDE, DE or OnePlusOne")
    ]
