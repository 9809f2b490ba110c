"""The commands: one per stage, each parsing its arguments into the stage's `Paths` record and
calling its `run`; paths default to the results layout, so `lcsc search --config my.yaml` works
alone. Each command imports its stage inside its function: the report's env has no torch, and
`lcsc tabulate` must not import the stages that need it."""

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
from ..kernel.errors import ConfigError, StoreError, UsageError
from ..kernel.inputs import card_variants, report_inputs, search_results
from ..kernel.lock import check_writer
from ..kernel.models import IMPORTED, base_model, check_model, for_model, models, nfe_tag, search_repeat
from ..kernel.paths import (
    Layout,
    dataset_name,
    feature_tag,
    reference_source,
    search_files,
)
from ..kernel.tracking import (
    StageRun,
    experiment_name,
    records_dir,
    serve,
    sync,
    tracking_uri,
)
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
        if getattr(args, "runtime_json", None):
            cfg = with_runtime(cfg, _json_object(args.runtime_json, "--runtime-json"))
        elif os.environ.get(RUNTIME_ENV):
            cfg = with_runtime(cfg, _json_object(os.environ[RUNTIME_ENV], RUNTIME_ENV))
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


def cmd_train_dm(args) -> None:
    from ..stages import train_dm

    with _training(args, train_dm.NAME) as (cfg, layout, device, run, ranks):
        paths = train_dm.Paths(trail=Path(args.out_dir or layout.trail_dir("dm")))
        train_dm.run(cfg, paths, device, run, ranks)


def cmd_train_cm(args) -> None:
    from ..stages import train_cm

    model = f"cm_{args.mode}"
    with _training(args, train_cm.NAME, model) as (cfg, layout, device, run, ranks):
        paths = train_cm.Paths(
            trail=Path(args.out_dir or layout.trail_dir(model)),
            teacher=Path(args.teacher or layout.manifest("dm")) if args.mode == "cd" else None,
        )
        train_cm.run(cfg, paths, args.mode, device, run, ranks)


def cmd_truncate_trail(args) -> None:
    from ..stages import truncate_trail

    cfg = _config(args)
    check_writer(cfg)
    layout = Layout.of(cfg)
    paths = truncate_trail.Paths(
        manifest=Path(args.manifest or layout.manifest(base_model(args.model))),
        out=Path(args.out or layout.manifest(args.model)),
    )
    truncate_trail.run({}, paths, args.model)


def cmd_import_trail(args) -> None:
    from ..stages import import_trail

    cfg, layout, device, run = _setup(args, import_trail.NAME)
    paths = import_trail.Paths(manifest=Path(args.out or layout.manifest(IMPORTED)))
    with run:
        import_trail.run(cfg, paths, device, run)


def cmd_export(args) -> None:
    from ..stages import export

    cfg, layout, device, run = _setup(args, export.NAME, args.model)
    evaluations = args.evaluations or [
        layout.eval_json(args.model, v) for v in card_variants(cfg, args.model, args.variant)
    ]
    paths = export.Paths(
        manifest=Path(args.manifest or layout.manifest(args.model)),
        evaluations=tuple(map(Path, evaluations)),
        out=Path(args.out_dir or layout.export_dir(args.model, args.variant)),
        coefficients=Path(args.coefficients or search_results(cfg, layout, args.model)[0]),
        baselines=_baselines(layout, args),
        real=Path(args.real or layout.real_grid(*reference_source(cfg))),
    )
    with run:
        export.run(cfg, paths, args.model, args.variant, device, run)


def cmd_train_features(args) -> None:
    from ..stages import train_features

    cfg, layout, device, run = _setup(args, train_features.NAME)
    train_features.check(cfg)
    with run:
        train_features.run(
            cfg,
            train_features.Paths(net=Path(args.out or layout.feature_net(feature_tag(cfg["features"])))),
            device,
            run,
        )


def _descriptor_stage(args, stage) -> None:
    """A fixed-weights feature stage (inception_features, dinov2_features): check, then write the descriptor."""
    cfg, layout, device, run = _setup(args, stage.NAME)
    paths = stage.Paths(descriptor=Path(args.out or layout.feature_net(feature_tag(cfg["features"]))))
    stage.check(cfg)
    with run:
        stage.run(cfg, paths, device, run)


def cmd_inception_features(args) -> None:
    from ..stages import inception_features

    _descriptor_stage(args, inception_features)


def cmd_dinov2_features(args) -> None:
    from ..stages import dinov2_features

    _descriptor_stage(args, dinov2_features)


def cmd_reference_stats(args) -> None:
    from ..stages import reference_stats

    cfg, layout, device, run = _setup(args, reference_stats.NAME)
    name = reference_source(cfg)[0] if args.split == "folder" else dataset_name(cfg["data"])
    paths = reference_stats.Paths(
        features=_features(cfg, layout, args),
        stats=Path(args.out or layout.stats(name, args.split, feature_tag(cfg["features"]))),
        grid=Path(args.grid or layout.real_grid(name, args.split)),
    )
    with run:
        reference_stats.run(cfg, paths, args.split, device, run)


def cmd_baselines(args) -> None:
    from ..stages import baselines

    cfg, layout, device, run = _setup(args, baselines.NAME, args.model)
    paths = baselines.Paths(
        manifest=Path(args.manifest or layout.manifest(args.model)),
        features=_features(cfg, layout, args),
        stats=_stats(cfg, layout, args),
        baselines=Path(args.out or layout.baselines(args.model)),
    )
    with run:
        baselines.run(cfg, paths, args.model, device, run)


def cmd_search(args) -> None:
    from ..stages import search

    cfg, layout, device, run = _setup(args, search.NAME, args.model)
    cfg = search_repeat(cfg, args.repeat)
    files = search_files(args.out_dir or layout.search_dir(args.model, nfe_tag(cfg["search"]["nfe"]), args.repeat))
    given = {name: getattr(args, name) for name in files}
    paths = search.Paths(
        manifest=Path(args.manifest or layout.manifest(args.model)),
        features=_features(cfg, layout, args),
        stats=_stats(cfg, layout, args),
        baselines=_baselines(layout, args),
        **{name: Path(given[name] or default) for name, default in files.items()},
    )
    with run:
        search.run(cfg, paths, args.model, device, run)


def cmd_evaluate(args) -> None:
    from ..stages import evaluate

    cfg, layout, device, run = _setup(args, evaluate.NAME, args.model)
    paths = evaluate.Paths(
        manifest=Path(args.manifest or layout.manifest(args.model)),
        features=_features(cfg, layout, args),
        stats=_stats(cfg, layout, args),
        result=Path(args.out or layout.eval_json(args.model, args.variant)),
        grid=Path(args.grid or layout.eval_grid(args.model, args.variant)),
        coefficients=tuple(map(Path, args.coefficients or search_results(cfg, layout, args.model))),
        baselines=_baselines(layout, args),
    )
    with run:
        evaluate.run(cfg, paths, args.model, args.variant, device, run)


def cmd_tabulate(args) -> None:
    from ..stages import tabulate

    cfg = _config(args)
    check_writer(cfg)
    layout = Layout.of(cfg)
    names = args.models or models(cfg)
    for model in names:
        check_model(model)
    given = {k: getattr(args, k) for k in ("manifests", "searches", "histories", "evaluations", "grids", "real")}
    files = {k: given[k] or default for k, default in report_inputs(cfg, layout, names, args.variants).items()}
    paths = tabulate.Paths(
        models=tuple(names),
        **{k: tuple(map(Path, v)) for k, v in files.items() if k != "real"},
        report=Path(args.out_dir or layout.report_dir()),
        real=Path(files["real"]),
    )
    with StageRun(cfg, tabulate.NAME, _wildcards(args.wildcards), stage_config(cfg, tabulate.NAME)) as run:
        summary = tabulate.run(cfg, paths, args.variants, run)
    print(summary.read_text())


def cmd_mlflow_server(args) -> None:
    serve(_config(args), args.host, args.port, args.workers, args.allowed_hosts)


def cmd_mlflow_sync(args) -> None:
    cfg = _config(args)
    try:
        counts = sync(cfg, args.any_store)
    except Exception as exc:  # the store is down or refuses: nothing was lost, try again later
        raise StoreError(
            f"{tracking_uri(cfg)}: {' '.join(str(exc).split())}; the records in "
            f"{records_dir(cfg)} are kept, run it again when the store is back"
        ) from None
    print(
        f"[lcsc] {counts['records']} run records in {records_dir(cfg)}: {counts['created']} runs created, "
        f"{counts['replaced']} logged in part replaced, {counts['completed']} parents completed, "
        f"{counts['complete']} already complete, {counts['skipped']} for another store skipped, "
        f"{counts['killed']} runs of killed jobs marked KILLED, {counts['registered']} models registered "
        f"({tracking_uri(cfg)}, experiment {experiment_name(cfg)})"
    )
    if counts["failed"]:
        raise StoreError(f"{counts['failed']} records failed (see above); run it again")
