"""What every command does before it runs its stage: the config (a file with --set overrides, or
the workflow's slice with the run-time keys), the check that no other invocation writes to the
results folder, the device, the job's MLflow run, and the default paths of the inputs that most
stages share."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import yaml

from ..kernel.config import (
    apply_overrides,
    config_warnings,
    load_config,
    validate,
    with_runtime,
)
from ..kernel.errors import ConfigError, UsageError
from ..kernel.lock import check_writer
from ..kernel.models import check_model, for_model
from ..kernel.paths import Layout, feature_tag, reference_source
from ..kernel.tracking import StageRun
from ..stages import RUNTIME_ENV, job_tags, stage_config


def _parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UsageError(
            f"--set: the value {text!r} is not YAML ({problem}); quote strings, e.g. --set 'search.init=\"last\"'"
        ) from None


def _config(args, warn: bool = True) -> dict:
    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.iterations=100")
        overrides[key] = _parse_value(value)
    if args.config_json:  # a rule's call: its stage's slice, and where and how it runs
        cfg = _json_object(args.config_json, "--config-json")
        # where and how it runs: --runtime-json, else what the workflow sets in the environment
        given = getattr(args, "runtime_json", None)
        source, text = ("--runtime-json", given) if given else (RUNTIME_ENV, os.environ.get(RUNTIME_ENV))
        if text:
            cfg = with_runtime(cfg, _json_object(text, source), source)
        return validate(apply_overrides(cfg, overrides), cross_checks=False)
    if getattr(args, "runtime_json", None):
        raise ConfigError("--runtime-json: only together with --config-json (the workflow passes both)")
    cfg = load_config(args.config, overrides)
    for warning in config_warnings(cfg) if warn else []:
        print(f"lcsc: warning: {warning}", file=sys.stderr)
    return cfg


def _json_object(text: str, flag: str) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{flag}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _wildcards(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if item and (not sep or not key):
            raise UsageError(f"--wildcards: {item!r} is not KEY=VALUE; pass k=v,..., e.g. --wildcards model=dm,nfe=4")
        if item:
            out[key] = value
    return out


def _model_config(args, model: str | None) -> dict:
    """The config as `model`'s stages read it (see lcsc.kernel.models.for_model); a stage that
    writes to a results folder another invocation holds refuses (lcsc.kernel.lock)."""
    cfg = _config(args)
    check_writer(cfg)
    if model is not None:
        check_model(model)  # an unknown model name is an error here, not deep inside a stage
        cfg = for_model(cfg, model)
    return cfg


def _setup(args, stage: str, model: str | None = None):
    """The config (as `model`'s stages read it), layout, device and the job's MLflow run."""
    cfg = _model_config(args, model)
    device = _device(cfg, args.threads)
    run = StageRun(cfg, stage, _wildcards(args.wildcards), stage_config(cfg, stage, model), job_tags(cfg, stage))
    return cfg, Layout.of(cfg), device, run


def _device(cfg: dict, threads: int):
    """The config's device, with `threads` torch CPU threads (0: torch's default)."""
    import torch

    from ..kernel.devices import resolve_device

    if threads:
        torch.set_num_threads(threads)
    return resolve_device(cfg)


def _features(cfg: dict, layout: Layout, args) -> Path:
    return Path(args.features or layout.feature_net(feature_tag(cfg["features"])))


def _stats(cfg: dict, layout: Layout, args) -> Path:
    return Path(args.stats or layout.stats(*reference_source(cfg), feature_tag(cfg["features"])))


def _baselines(layout: Layout, args) -> Path | None:
    """The baselines stage's file: as given, else where the layout puts it if it exists."""
    if args.baselines:
        return Path(args.baselines)
    default = layout.baselines(args.model)
    return default if default.exists() else None


@contextlib.contextmanager
def _training(args, stage: str, model: str | None = None):
    """_setup for a training stage, which may be one of several processes (lcsc.launch, train.gpus):
    it joins their group, takes its share of --threads, and only rank 0 logs to MLflow."""
    from ..kernel import distributed

    cfg = _model_config(args, model)
    ranks, device = distributed.start(cfg)
    try:
        if args.threads:
            import torch

            torch.set_num_threads(max(1, args.threads // ranks.world))
        tracked = cfg if ranks.main else dict(cfg, mlflow=dict(cfg["mlflow"], enabled=False))
        run = StageRun(
            tracked, stage, _wildcards(args.wildcards), stage_config(cfg, stage, model), job_tags(cfg, stage)
        )
        with run:
            yield cfg, Layout.of(cfg), device, run, ranks
    finally:
        distributed.stop()
