"""Model names and the config each model's stages read: `dm`, the consistency models `cm_cd` and
`cm_ct`, for the training-cost experiment `<model>_first<percent>`, LCSC over the first part
of that model's trail, and `imported`, the one model of a trail brought from another trainer
(`trail.source` diffusers or state_dict)."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

from .errors import ConfigError

TRUNCATED = "_first"
MODEL_BASES = ("dm", "cm_cd", "cm_ct")
IMPORTED = "imported"
TRAINED_HERE = "lcsc"  # trail.source of the trails lcsc's own training writes
TRAINED_KINDS = ("dm", "cm")  # the manifest kinds of those trails; an imported trail's kind is its source


def imported_kind(kind) -> bool:
    """Whether a manifest's kind is an imported trail's (any kind but the trained ones)."""
    return kind not in TRAINED_KINDS


def imported(cfg: dict) -> bool:
    """Whether the config brings its trail from another trainer instead of training here."""
    return cfg.get("trail", {}).get("source", TRAINED_HERE) != TRAINED_HERE


def base_model(model: str) -> str:
    return model.split(TRUNCATED)[0]


def model_kind(model: str, cfg: dict | None = None) -> str:
    """`dm` or `cm`: how the model samples (for `imported`, as `cfg`'s trail says)."""
    if model == IMPORTED:
        trail = (cfg or {}).get("trail", {})
        return "cm" if trail.get("sampler") == "cm" else "dm"  # (only a family sampled as the config says takes cm)
    base = base_model(model)
    if base in MODEL_BASES:
        return "dm" if base == "dm" else "cm"
    raise ConfigError(
        f"unknown model {model!r}; the models are dm, cm_cd, cm_ct, <model>{TRUNCATED}<percent> and "
        f"{IMPORTED} (an imported trail)"
    )


def truncated_name(model: str, fraction: float) -> str:
    return f"{model}{TRUNCATED}{fraction * 100:g}"


def truncation(model: str) -> float | None:
    """The fraction of training a truncated model keeps (None for a full one)."""
    if TRUNCATED not in model:
        return None
    base, _, percent = model.partition(TRUNCATED)
    try:
        fraction = float(percent) / 100
    except ValueError:
        fraction = None
    if base not in MODEL_BASES or fraction is None or not 0 < fraction < 1:
        raise ConfigError(
            f"{model!r} does not name a truncated trail: <dm|cm_cd|cm_ct>{TRUNCATED}<percent>, "
            f"with 0 < percent < 100 (e.g. cm_ct{TRUNCATED}25)"
        )
    if truncated_name(base, fraction) != model:  # one name per fraction, so one folder
        raise ConfigError(
            f"{model!r} does not name a truncated trail the way the workflow does; use "
            f"{truncated_name(base, fraction)}"
        )
    return fraction


def check_model(model: str) -> None:
    """An unknown or malformed model name is a ConfigError naming it."""
    model_kind(model)
    truncation(model)


def models(cfg: dict) -> list[str]:
    """Every model the config runs: dm, the consistency modes, then the truncated trails; or,
    for an imported trail, `imported` alone."""
    if imported(cfg):
        return [IMPORTED]
    out = ["dm", *[f"cm_{m}" for m in cfg["consistency"]["modes"]]]
    full = list(out)
    for m in cfg["cost"]["models"]:  # each model's fractions together, smallest first
        if m in full:
            out += [truncated_name(m, f) for f in cost_fractions(cfg)]
    return out


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed of repeat `repeat` of a search or an evaluation: `seed` itself for the first, a
    32-bit seed derived from (seed, repeat) after, so repeats never walk into each other's seeds."""
    if repeat == 0:
        return int(seed)
    return int.from_bytes(hashlib.sha256(f"lcsc-repeat:{int(seed)}:{repeat}".encode()).digest()[:4], "little")


def repeat_seeds(seed: int, repeats: int) -> list[int]:
    return [repeat_seed(seed, r) for r in range(repeats)]


def search_repeat(cfg: dict, repeat: int) -> dict:
    """The config of search `repeat` (0 .. search.repeats - 1): its own screening and re-scoring
    seeds (repeat_seed), everything else the same."""
    if repeat == 0:
        return cfg
    if repeat < 0:
        raise ConfigError(f"--repeat: {repeat}; the searches are numbered 0, 1, ... (search.repeats)")
    out = copy.deepcopy(cfg)
    for key in ("seed", "rescore_seed"):
        out["search"][key] = repeat_seed(cfg["search"][key], repeat)
    return out


def cost_fractions(cfg: dict) -> list[float]:
    """The training-cost experiment's fractions (`cost.fractions` and `cost.fraction`), ascending."""
    c = cfg.get("cost", {})
    return sorted({float(f) for f in [*c.get("fractions", []), *([c["fraction"]] if c.get("fraction") else [])]})


def for_model(cfg: dict, model: str) -> dict:
    """The config as `model`'s stages read it. A consistency model trains with `train` updated by
    the non-null keys of `consistency.train`, searches at `consistency.search_nfe` (with
    `consistency.search_budget` and `search_samples` where set) and evaluates
    `consistency.evaluate_nfe`; the diffusion model's stages do not see `consistency` at all (so
    they do not rerun when it changes). Applying it twice changes nothing."""
    out = copy.deepcopy(cfg)
    if model_kind(model, cfg) == "dm":
        out.pop("consistency", None)
        _shorter_lawa(out, model)
        return out
    c = out.get("consistency")
    if c is None:
        return out
    if "train" in out:
        out["train"] = {
            k: (v if c.get("train", {}).get(k) is None else c["train"][k]) for k, v in out["train"].items()
        }
    if "search" in out:
        out["search"]["nfe"] = c["search_nfe"]
        out["search"]["nfe_weights"] = c.get("search_nfe_weights")
        for key in ("budget", "samples"):
            if c.get(f"search_{key}") is not None:
                out["search"][key] = c[f"search_{key}"]
    if "evaluate" in out:
        out["evaluate"]["nfe"] = list(c["evaluate_nfe"])
    _shorter_lawa(out, model)
    return out


def _shorter_lawa(cfg: dict, model: str) -> None:
    """A truncated trail's searches start from the LAWA windows that fit in it (its report shows
    last and lcsc only)."""
    fraction = truncation(model)
    if fraction is None or "baselines" not in cfg or "train" not in cfg:
        return
    t = cfg["train"]
    kept = int(fraction * t["iterations"]) // t["checkpoint_every"]
    cfg["baselines"]["lawa_last"] = [n for n in cfg["baselines"]["lawa_last"] if n <= kept]


def search_nfe(cfg: dict, model: str) -> str:
    """The tag of the NFEs the model's search targets (search.nfe, or consistency.search_nfe):
    `5` for one NFE, `3-5-8` for a fitness over several; it names the search's folder."""
    return nfe_tag(for_model(cfg, model)["search"]["nfe"])


def nfe_list(nfe: int | list[int]) -> list[int]:
    """`search.nfe` as a list: one NFE or several, in the order the config gives them."""
    return [int(nfe)] if isinstance(nfe, int) else [int(n) for n in nfe]


def nfe_tag(nfe: int | list[int]) -> str:
    return "-".join(str(n) for n in nfe_list(nfe))


def headline_nfe(nfe: int | list[int]) -> int:
    """The search NFE that the report's claims and the sample grids use: the first one listed."""
    return nfe_list(nfe)[0]


def nfe_weights(scfg: dict) -> dict[int, float]:
    """The weight of each search NFE in the fitness (`search.nfe_weights`, or equal), summing to 1."""
    nfes = nfe_list(scfg["nfe"])
    raw = scfg.get("nfe_weights") or [1.0] * len(nfes)
    total = float(sum(raw))
    return {n: float(w) / total for n, w in zip(nfes, raw)}


def trained_model(manifest: dict) -> str:
    """The model a trail manifest holds: `dm`, `cm_<mode>` or `imported`."""
    kind = manifest.get("kind", "dm")
    if imported_kind(kind):
        return IMPORTED
    return "dm" if kind == "dm" else f"cm_{manifest.get('mode')}"


def check_trail(model: str, manifest: dict, path: str | Path) -> None:
    """Sampling a consistency trail as a diffusion model, or the reverse, is an error, not a number."""
    trained = trained_model(manifest)
    if trained != base_model(model):
        raise ConfigError(
            f"--model {model}: {path} holds a {trained} trail; pass --model {trained} (or a truncated name of it)"
        )
