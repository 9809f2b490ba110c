"""The commands: one per stage, each parsing its arguments into the stage's `Paths` record and
calling its `run`; paths default to the results layout, so `lcsc search --config my.yaml` works
alone. Each command imports its stage inside its function: the report's env has no torch, and
`lcsc tabulate` must not import the stages that need it."""

from __future__ import annotations

from pathlib import Path

from ..kernel.errors import StoreError
from ..kernel.inputs import card_variants, report_inputs, search_results
from ..kernel.lock import check_writer
from ..kernel.models import IMPORTED, base_model, check_model, models, nfe_tag, search_repeat
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
from ..stages import stage_config
from .context import (
    _baselines,
    _config,
    _features,
    _setup,
    _stats,
    _training,
    _wildcards,
)


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
