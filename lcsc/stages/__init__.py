"""The stages: one module per workflow rule, each with a `Paths` record of exactly that rule's
inputs and outputs and a `run(cfg, paths, ...)`. Stages import the kernel, never each other
(an import-linter contract in pyproject.toml holds them to it).

This file says what each stage reads of the config: its job's slice, which is also its rerun
trigger in the workflow (a job reruns only when its own slice changes), and the MLflow tags that
describe its job. It imports no torch: the workflow and the report's env read it.
"""

from __future__ import annotations

import copy

from ..kernel.config import RUNTIME_KEYS
from ..kernel.models import IMPORTED, base_model, for_model, imported, nfe_list

# The environment variable through which the workflow hands every job the run-time keys (RUNTIME_KEYS:
# MLflow, devices, folders) as JSON: apart from the job's slice, so that they never rerun a job.
RUNTIME_ENV = "LCSC_RUNTIME_JSON"
# The config sections each stage reads.
STAGE_SECTIONS = {
    "train_dm": ["seed", "data", "model", "diffusion", "train"],
    "train_cm": ["seed", "data", "model", "diffusion", "train", "consistency"],
    "truncate_trail": [],  # the fraction is in the model's name
    "train_features": ["seed", "data", "features"],
    "inception_features": ["data", "features"],  # the data: the sanity gate's splits
    "dinov2_features": ["data", "features"],
    "reference_stats": ["data", "features"],
    "baselines": ["data", "model", "diffusion", "consistency", "search", "baselines", "features"],
    "search": ["data", "model", "diffusion", "consistency", "search", "baselines", "features"],
    "evaluate": ["data", "model", "diffusion", "consistency", "search", "evaluate", "baselines", "features"],
    "tabulate": ["data", "search", "evaluate", "train", "consistency", "cost", "baselines", "features"],
    "import_trail": ["data", "diffusion", "consistency", "trail", "baselines"],
    "export": ["data", "model", "diffusion", "consistency", "search", "evaluate", "baselines", "export", "features"],
}
# Stages that read only part of `model`: the export builds the family, which checks the trail's
# classes against the config's (absent for an unconditional model: its slice has no `model` then).
STAGE_MODEL_KEYS = {"export": ("num_classes",)}
# Stages that read `trail` only for an imported trail: with `trail.source: lcsc` their slices (and
# so their rerun triggers) are those of the trained models alone.
TRAIL_STAGES = ("baselines", "search", "evaluate", "tabulate", "export")
# Stages that read only part of `search`: baselines score with the search's fitness settings,
# evaluate saves the sample grid at the search NFE. A new budget or optimizer reruns neither.
STAGE_SEARCH_KEYS = {
    "baselines": (
        "nfe",
        "nfe_weights",
        "fitness_mean",
        "penalty",
        "penalty_weight",
        "max_norm",
        "samples",
        "seed",
        "batch_size",
    ),
    "evaluate": ("nfe",),
}
# The keys of `consistency` that a consistency model's sampling stages read (the training keys
# reach them through the trail they read).
_SAMPLING = ("sigma_min", "sigma_max", "sigma_data", "rho", "sampling_sigmas", "search_nfe", "search_nfe_weights")
CONSISTENCY_KEYS = {
    "baselines": _SAMPLING,
    "search": _SAMPLING,
    "evaluate": (*_SAMPLING, "evaluate_nfe"),
    "export": (*_SAMPLING, "evaluate_nfe"),
}
# Training reads only these keys of `diffusion` (the DM its noise schedule; CD how its teacher
# clips), so a new sampler reruns the sampling stages alone.
STAGE_DIFFUSION_KEYS = {"train_dm": ("schedule", "timesteps"), "train_cm": ("clip_denoised",)}
# Stages whose jobs are per model.
MODEL_STAGES = ("train_cm", "baselines", "search", "evaluate", "export")
# The keys of `features` that only one kind reads: the other kind's stages do not rerun on them.
FEATURE_KIND_KEYS = {
    "classifier": ("dim", "width", "epochs", "batch_size", "lr"),
    "autoencoder": ("dim", "width", "epochs", "batch_size", "lr"),
    "inception": ("mode", "weights", "reference_folder"),
    "dinov2": ("weights", "reference_folder"),
}


def stage_config(cfg: dict, stage: str, model: str | None = None) -> dict:
    """The slice of a validated config that `stage` reads (for `model`, as `for_model` gives it)."""
    if model is None and stage in MODEL_STAGES:
        if stage == "train_cm":
            raise ValueError("stage_config: train_cm needs the model (cm_cd or cm_ct)")
        model = "dm"
    if model is not None:
        cfg = for_model(cfg, model)
    sections = STAGE_SECTIONS[stage] + (["trail"] if stage in TRAIL_STAGES and imported(cfg) else [])
    out = {k: copy.deepcopy(cfg[k]) for k in sections if k in cfg}
    if stage in STAGE_MODEL_KEYS and "model" in out:
        out["model"] = {k: v for k, v in out["model"].items() if k in STAGE_MODEL_KEYS[stage]}
        if not out["model"]:
            del out["model"]
    if stage in STAGE_SEARCH_KEYS:  # only the search keys the stage's results depend on
        out["search"] = {k: v for k, v in out["search"].items() if k in STAGE_SEARCH_KEYS[stage]}
    elif stage == "search":  # each search is one of search.repeats: more of them leaves the others be
        out["search"].pop("repeats", None)
    if model is not None and "consistency" in out and model != IMPORTED:
        _consistency_slice(out, stage, base_model(model)[3:])
    if stage == "import_trail":  # the import checks the LAWA windows against the checkpoints it keeps
        out["baselines"] = {"lawa_last": out["baselines"]["lawa_last"]}
    if stage in STAGE_DIFFUSION_KEYS and "diffusion" in out:
        out["diffusion"] = {k: v for k, v in out["diffusion"].items() if k in STAGE_DIFFUSION_KEYS[stage]}
    if "features" in out:
        own = FEATURE_KIND_KEYS[out["features"]["kind"]]
        for keys in FEATURE_KIND_KEYS.values():
            for key in set(keys) - set(own):
                out["features"].pop(key, None)
    for path in RUNTIME_KEYS:
        node = out
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return out


def _consistency_slice(out: dict, stage: str, mode: str) -> None:
    """A consistency model's keys: training those of its own mode, sampling those of the NFEs it samples at."""
    keep = CONSISTENCY_KEYS.get(stage)
    if keep is None:  # train_cm: the training keys of its own mode
        keep = set(out["consistency"]) - {
            "modes",
            "search_nfe",
            "search_nfe_weights",
            "search_budget",
            "search_samples",
            "evaluate_nfe",
            "sampling_sigmas",
            "cd" if mode == "ct" else "ct",
        }
    out["consistency"] = {k: v for k, v in out["consistency"].items() if k in keep}
    if stage in ("baselines", "search"):  # they sample at the search NFE only
        c = out["consistency"]
        c["sampling_sigmas"] = c["sampling_sigmas"][: max(nfe_list(c["search_nfe"])) - 1]
    if stage != "train_cm" or mode == "ct":
        out.pop("diffusion", None)  # only distillation reads it


def job_tags(cfg: dict, stage: str) -> dict[str, str]:
    """MLflow tags a stage's job adds to the common ones: the NFEs it samples at."""
    if stage == "evaluate":
        return {"lcsc.nfe": ",".join(str(n) for n in sorted(cfg["evaluate"]["nfe"]))}
    if stage in ("search", "baselines"):
        return {"lcsc.nfe": ",".join(str(n) for n in nfe_list(cfg["search"]["nfe"]))}
    return {}
