"""What weights a variant name denotes, decided here and nowhere else.

- `last`, `uniform`, `lawa_<k>`, `ema_<decay>_profile`, `power_<sigma_rel>`, `greedy_soup`: a
  baseline profile, a coefficient vector over the trail (the baselines stage's file holds them
  with their scores);
- `ema_<decay>`: the EMA kept during training, a weights file of the trail;
- `lcsc`: the search's coefficients.

Kept free of torch at import: the workflow and the report ask it for names.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import profiles
from .errors import ConfigError, InputError, TrailError
from .io import read_json
from .models import IMPORTED, for_model, truncation

LAST = "last"
LCSC = "lcsc"
KEPT_EMA = "ema_"
GREEDY_SOUP = "greedy_soup"
# where a variant's weights come from: the evaluate rule's input for each
COEFFICIENTS, BASELINES, TRAIL = "coefficients", "baselines", "trail"


def names(cfg: dict, model: str = "dm") -> list[str]:
    """Every variant the evaluation compares for `model`, baselines first and lcsc last. A
    truncated trail (the training-cost experiment) is compared through its last and lcsc only."""
    if truncation(model) is not None:
        return [LAST, LCSC]
    cfg = for_model(cfg, model)
    return [LAST, *[kept_ema(d) for d in kept_decays(cfg, model)], *scored_profiles(cfg["baselines"])[1:], LCSC]


def kept_decays(cfg: dict, model: str) -> list[float]:
    """The decays of the EMAs the model's training kept: `train.ema_decays` (as `for_model` gives
    it), or for an imported trail the one EMA `trail.ema` names."""
    if model == IMPORTED:
        trail = cfg["trail"]
        return [trail["ema_decay"]] if trail["ema"] else []
    return list(cfg["train"]["ema_decays"])


def scored_profiles(bcfg: dict) -> list[str]:
    """The variants the baselines stage scores and writes: last, the closed-form profiles and the soup."""
    return [LAST, *profiles.profile_names(bcfg), *([GREEDY_SOUP] if bcfg["greedy_soup"] else [])]


def kept_ema(decay: float) -> str:
    """The name of the EMA with `decay` kept during training."""
    return f"{KEPT_EMA}{decay}"


def kept_ema_decay(name: str) -> float | None:
    """The decay of a kept EMA's name (`ema_0.999` -> 0.999); None for any other name."""
    if not name.startswith(KEPT_EMA):
        return None
    try:
        return float(name.removeprefix(KEPT_EMA))
    except ValueError:
        return None


def kept_ema_profile(name: str) -> str:
    """The baseline profile that recomputes a kept EMA from the sparse trail."""
    return profiles.ema_profile_name(kept_ema_decay(name))


def source(variant: str) -> str:
    """Where the weights of `variant` come from: COEFFICIENTS (the search), TRAIL (a file the
    training kept) or BASELINES (a profile the baselines stage scored)."""
    if variant == LCSC:
        return COEFFICIENTS
    if kept_ema_decay(variant) is not None:
        return TRAIL
    return BASELINES


def checkpoint_file(trail, name: str) -> Path:
    """The file of `last` or of `ema_<decay>`, an EMA kept during training."""
    if name == LAST:
        return trail.checkpoint_path(len(trail) - 1)
    paths = trail.ema_paths()
    decay = kept_ema_decay(name)
    if decay not in paths:
        raise TrailError(
            f"{trail.root / 'manifest.json'}: no weights {name!r}; it has last and the EMAs "
            f"{', '.join(kept_ema(d) for d in sorted(paths)) or '(none)'}"
        )
    return paths[decay]


def coefficients_of(
    trail,
    variant: str,
    coefficients: str | Path | None = None,
    baselines: str | Path | None = None,
    bcfg: dict | None = None,
) -> list[float] | None:
    """The coefficients over `trail` of a named variant; None for a kept EMA (a file of its own).

    `lcsc` comes from the search's coefficients file, profiles from the baselines stage's file
    (or, without one, computed from `bcfg`)."""
    kind = source(variant)
    if kind == TRAIL:
        return None
    if kind == COEFFICIENTS:
        if coefficients is None:
            raise ConfigError(f"variant {LCSC!r} needs the search's coefficients file")
        found = read_json(
            coefficients, "rerun the search (or pass the right --coefficients)", keys=("coefficients", "trail_sha256")
        )
        # Coefficients of another trail of the same length would load without complaint: the file
        # must have been computed from this very trail.
        trail.check_fingerprint(found.get("trail_sha256"), coefficients)
        return checked_coefficients(found["coefficients"], len(trail), coefficients)
    if baselines is not None:
        scored = read_json(
            baselines, "rerun the baselines stage (or pass the right --baselines)", keys=("profiles", "trail_sha256")
        )
        trail.check_fingerprint(scored.get("trail_sha256"), baselines)
        known = {n: p["coefficients"] for n, p in scored["profiles"].items()}
    elif bcfg is not None:
        known = {n: c.tolist() for n, c in profiles.trail_profiles(trail.steps, bcfg).items()}
    else:
        raise ConfigError(f"variant {variant!r} needs the baselines file or the baselines config")
    if variant not in known:
        where = f"in {baselines}" if baselines else "without the baselines stage's file"
        raise ConfigError(
            f"unknown variant {variant!r} ({where} the variants are: "
            f"{LCSC}, {KEPT_EMA}<decay> kept in training, {', '.join(known)})"
        )
    return checked_coefficients(known[variant], len(trail), baselines or "baselines")


def checked_coefficients(values, k: int, where) -> list[float]:
    """`k` finite coefficients, one per checkpoint; anything else is an InputError naming `where`."""
    ok = (
        isinstance(values, list)
        and len(values) == k
        # bool is a subclass of int in Python: `true` in the file must not pass as a coefficient.
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    )
    if not ok:
        shown = f"{len(values)} values" if isinstance(values, list) else f"a JSON {type(values).__name__}"
        raise InputError(
            f"{where}: its coefficients are not {k} finite numbers, one per checkpoint ({shown}); "
            "the file was damaged or belongs to another trail: rerun the stage that wrote it"
        )
    return [float(c) for c in values]


def weights(
    scorer,
    variant: str,
    coefficients: str | Path | None = None,
    baselines: str | Path | None = None,
    bcfg: dict | None = None,
):
    """Flat weights of a named variant for `scorer`'s network, and its coefficients where it has them."""
    c = coefficients_of(scorer.trail, variant, coefficients, baselines, bcfg)
    if c is None:
        return scorer.weights_from_file(checkpoint_file(scorer.trail, variant)), None
    return scorer.weights_of(c), c
