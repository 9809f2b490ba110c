"""Checks of the consistency models' keys: their NFEs and noise levels, their training, and the
training-cost experiment's truncated trails."""

from __future__ import annotations

from .. import variants
from ..models import cost_fractions, for_model, models
from .search_keys import search_nfe_checks


def consistency_checks(cfg: dict, sigmas: bool = True) -> list[str]:
    """With `sigmas` false (a model its own pipeline samples, at its own noise levels), the NFEs
    are not bounded by consistency.sampling_sigmas."""
    return _sampling_checks(cfg["consistency"], sigmas) + _training_checks(cfg) + _cost_checks(cfg)


def _sampling_checks(c: dict, sigmas: bool) -> list[str]:
    """The search and evaluation NFEs, and the noise levels the sampler steps through."""
    errors = search_nfe_checks(
        "consistency.search_nfe",
        c["search_nfe"],
        "consistency.search_nfe_weights",
        c["search_nfe_weights"],
        "consistency.evaluate_nfe",
        c["evaluate_nfe"],
    )
    if sigmas and max(c["evaluate_nfe"]) > 1 + len(c["sampling_sigmas"]):
        errors.append(
            f"consistency.evaluate_nfe: {max(c['evaluate_nfe'])} steps need "
            f"{max(c['evaluate_nfe']) - 1} consistency.sampling_sigmas, there are {len(c['sampling_sigmas'])}"
        )
    if not c["sigma_min"] < c["sigma_max"]:
        errors.append(f"consistency.sigma_min: {c['sigma_min']} must be below sigma_max {c['sigma_max']}")
    sig = c["sampling_sigmas"]
    if any(not c["sigma_min"] < s < c["sigma_max"] for s in sig) or any(a <= b for a, b in zip(sig, sig[1:])):
        errors.append(
            f"consistency.sampling_sigmas: {sig} must decrease and lie strictly between "
            f"sigma_min {c['sigma_min']} and sigma_max {c['sigma_max']}"
        )
    return errors


def _training_checks(cfg: dict) -> list[str]:
    """The CT schedule, the CD teacher, and the checkpoints the consistency models' trails hold."""
    c, errors = cfg["consistency"], []
    if c["ct"]["s1"] < c["ct"]["s0"]:
        errors.append(f"consistency.ct.s1: {c['ct']['s1']} is below ct.s0 {c['ct']['s0']}")
    teacher = c["cd"]["teacher"]
    if "cd" in c["modes"] and teacher != variants.LAST:
        if variants.kept_ema_decay(teacher) not in cfg["train"]["ema_decays"]:
            errors.append(
                f"consistency.cd.teacher: {teacher!r} is not an EMA the diffusion model keeps "
                f"(train.ema_decays {cfg['train']['ema_decays']}); use last or one of those"
            )
    cm = for_model(cfg, "cm_ct")["train"]
    if c["modes"] and cm["checkpoint_every"] > cm["iterations"]:
        errors.append(
            f"consistency.train.checkpoint_every: {cm['checkpoint_every']} exceeds the consistency "
            f"models' {cm['iterations']} iterations"
        )
    elif c["modes"]:
        n_checkpoints = -(-cm["iterations"] // cm["checkpoint_every"])
        for n in cfg["baselines"]["lawa_last"]:
            if n > n_checkpoints:
                errors.append(
                    f"baselines.lawa_last: {n} exceeds the {n_checkpoints} checkpoints the consistency "
                    "models' trails will hold"
                )
    return errors


def _cost_checks(cfg: dict) -> list[str]:
    """The training-cost experiment truncates models that run, each keeping at least 2 checkpoints."""
    errors = []
    # the models run whole: cost.models names which of them the experiment truncates
    running = models(dict(cfg, cost={"fractions": [], "fraction": None, "models": []}))
    fractions = cost_fractions(cfg)
    if not fractions:
        return errors
    missing = [m for m in cfg["cost"]["models"] if m not in running]
    if missing:
        errors.append(f"cost.models: {missing} do not run (the models are {running}; see consistency.modes)")
    for m in cfg["cost"]["models"]:
        if m not in running:
            continue
        t = for_model(cfg, m)["train"]
        for fraction in fractions:
            kept = int(fraction * t["iterations"]) // t["checkpoint_every"]
            if kept < 2:
                errors.append(
                    f"cost.fractions: the first {fraction:g} of {m}'s {t['iterations']} iterations "
                    f"holds {kept} checkpoints (one every {t['checkpoint_every']}); LCSC needs at "
                    "least 2"
                )
                break
    return errors
