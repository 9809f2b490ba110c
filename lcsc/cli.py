"""Command line: `python -m lcsc <stage> ...`, the same in a terminal, a rule, a conda env or a
SLURM job. It parses arguments into a stage's `Paths` record and calls the stage's `run`; paths
default to the results layout, so `lcsc search --config my.yaml` works alone.

Each command imports its stage inside its function: the report's env has no torch, and
`lcsc tabulate` must not import the stages that need it."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import signal
import sys
from pathlib import Path

import yaml

from .kernel import jobtime, variants
from .kernel.config import (
    apply_overrides,
    config_warnings,
    load_config,
    validate,
    with_runtime,
)
from .kernel.errors import ConfigError, LcscError, StoreError, UsageError
from .kernel.interrupts import install
from .kernel.lock import check_writer
from .kernel.models import IMPORTED, base_model, check_model, for_model, models, nfe_tag, search_nfe, search_repeat
from .kernel.paths import (
    Layout,
    dataset_name,
    feature_tag,
    reference_source,
    search_files,
)
from .kernel.tracking import (
    StageRun,
    experiment_name,
    records_dir,
    serve,
    sync,
    tracking_uri,
)
from .stages import job_tags, stage_config


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
        if getattr(args, "runtime_json", None):
            cfg = with_runtime(cfg, _json_object(args.runtime_json, "--runtime-json"))
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

    from .kernel.devices import resolve_device

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
    from .kernel import distributed

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
    from .stages import train_dm

    with _training(args, train_dm.NAME) as (cfg, layout, device, run, ranks):
        paths = train_dm.Paths(trail=Path(args.out_dir or layout.trail_dir("dm")))
        train_dm.run(cfg, paths, device, run, ranks)


def cmd_train_cm(args) -> None:
    from .stages import train_cm

    model = f"cm_{args.mode}"
    with _training(args, train_cm.NAME, model) as (cfg, layout, device, run, ranks):
        paths = train_cm.Paths(
            trail=Path(args.out_dir or layout.trail_dir(model)),
            teacher=Path(args.teacher or layout.manifest("dm")) if args.mode == "cd" else None,
        )
        train_cm.run(cfg, paths, args.mode, device, run, ranks)


def cmd_truncate_trail(args) -> None:
    from .stages import truncate_trail

    cfg = _config(args)
    check_writer(cfg)
    layout = Layout.of(cfg)
    paths = truncate_trail.Paths(
        manifest=Path(args.manifest or layout.manifest(base_model(args.model))),
        out=Path(args.out or layout.manifest(args.model)),
    )
    truncate_trail.run({}, paths, args.model)


def cmd_import_trail(args) -> None:
    from .stages import import_trail

    cfg, layout, device, run = _setup(args, import_trail.NAME)
    paths = import_trail.Paths(manifest=Path(args.out or layout.manifest(IMPORTED)))
    with run:
        import_trail.run(cfg, paths, device, run)


def cmd_export(args) -> None:
    from .stages import export

    cfg, layout, device, run = _setup(args, export.NAME, args.model)
    evaluations = args.evaluations or [layout.eval_json(args.model, v) for v in (args.variant, variants.LAST)]
    paths = export.Paths(
        manifest=Path(args.manifest or layout.manifest(args.model)),
        evaluations=tuple(map(Path, evaluations)),
        out=Path(args.out_dir or layout.export_dir(args.model, args.variant)),
        coefficients=Path(args.coefficients or layout.coefficients(args.model, nfe_tag(cfg["search"]["nfe"]))),
        baselines=_baselines(layout, args),
        real=Path(args.real or layout.real_grid(*reference_source(cfg))),
    )
    with run:
        export.run(cfg, paths, args.model, args.variant, device, run)


def cmd_train_features(args) -> None:
    from .stages import train_features

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
    from .stages import inception_features

    _descriptor_stage(args, inception_features)


def cmd_dinov2_features(args) -> None:
    from .stages import dinov2_features

    _descriptor_stage(args, dinov2_features)


def cmd_reference_stats(args) -> None:
    from .stages import reference_stats

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
    from .stages import baselines

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
    from .stages import search

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
    from .stages import evaluate

    cfg, layout, device, run = _setup(args, evaluate.NAME, args.model)
    paths = evaluate.Paths(
        manifest=Path(args.manifest or layout.manifest(args.model)),
        features=_features(cfg, layout, args),
        stats=_stats(cfg, layout, args),
        result=Path(args.out or layout.eval_json(args.model, args.variant)),
        grid=Path(args.grid or layout.eval_grid(args.model, args.variant)),
        coefficients=tuple(map(Path, args.coefficients or _search_results(cfg, layout, args.model))),
        baselines=_baselines(layout, args),
    )
    with run:
        evaluate.run(cfg, paths, args.model, args.variant, device, run)


def _search_results(cfg: dict, layout: Layout, model: str) -> list[Path]:
    """The coefficients.json of each of the model's searches (search.repeats)."""
    return [layout.coefficients(model, nfe_tag(cfg["search"]["nfe"]), r) for r in range(cfg["search"]["repeats"])]


def cmd_tabulate(args) -> None:
    from .stages import tabulate

    cfg = _config(args)
    check_writer(cfg)
    layout = Layout.of(cfg)
    names = args.models or models(cfg)
    for model in names:
        check_model(model)
    shown = [(m, v) for m in names for v in variants.names(cfg, m) if not args.variants or v in args.variants]
    paths = tabulate.Paths(
        models=tuple(names),
        manifests=tuple(map(Path, args.manifests or [layout.manifest(m) for m in names])),
        searches=tuple(map(Path, args.searches or [layout.coefficients(m, search_nfe(cfg, m)) for m in names])),
        histories=tuple(map(Path, args.histories or [layout.history(m, search_nfe(cfg, m)) for m in names])),
        evaluations=tuple(map(Path, args.evaluations or [layout.eval_json(m, v) for m, v in shown])),
        grids=tuple(map(Path, args.grids or [layout.eval_grid(m, v) for m, v in shown])),
        report=Path(args.out_dir or layout.report_dir()),
        real=Path(args.real or layout.real_grid(*reference_source(cfg))),
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


class _ArgumentError(Exception):
    """A command-line argument argparse refuses; main prints it as one line."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors one line (`lcsc <stage>: --flag: what is wrong; see --help`) and
    no usage block, like every other expected failure. Its subparsers are _Parsers too."""

    def error(self, message: str):
        message = message.removeprefix("argument ")
        raise _ArgumentError(self.prog, f"{message}; see {self.prog} --help")


def _count(minimum: int):
    """An argparse type: an int of at least `minimum`."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return count


_COMMON = [
    ("--config", {"help": "YAML config file (default: all schema defaults)"}),
    ("--config-json", {"help": "validated config as JSON (what the workflow passes)"}),
    (
        "--runtime-json",
        {
            "help": "with --config-json: the run-time keys (MLflow, devices, folders) as JSON, "
            "which the workflow passes apart so that they never rerun a job"
        },
    ),
    ("--set", {"action": "append", "metavar": "KEY=VALUE", "help": "override a config key"}),
    ("--threads", {"type": _count(0), "default": 0, "help": "torch CPU threads (0: torch's default)"}),
    ("--wildcards", {"help": "k=v,... naming this job in MLflow"}),
]
_MODEL = ("--model", {"default": "dm", "help": f"dm, cm_cd, cm_ct, <model>_first<percent> or {IMPORTED}"})
_INPUTS = [(name, {}) for name in ("--manifest", "--features", "--stats")]
_MANY = {"nargs": "+"}
# (command, function, help, its own arguments)
COMMANDS = [
    (
        "train-dm",
        cmd_train_dm,
        "train the diffusion model, writing its checkpoint trail",
        [("--out-dir", {"help": "the trail's folder"})],
    ),
    (
        "train-cm",
        cmd_train_cm,
        "train a consistency model (cd: distilled from the diffusion model's trail; "
        "ct: from data), writing its checkpoint trail",
        [
            ("--mode", {"required": True, "choices": ["cd", "ct"]}),
            ("--teacher", {"help": "cd: the diffusion trail's manifest (default: the layout's dm trail)"}),
            ("--out-dir", {"help": "the trail's folder"}),
        ],
    ),
    (
        "truncate-trail",
        cmd_truncate_trail,
        "the training-cost experiment's trail: the first part of a model's trail (no files copied)",
        [
            ("--model", {"required": True, "help": "<model>_first<percent>, e.g. cm_ct_first25"}),
            ("--manifest", {"help": "the full trail's manifest (default: the layout's)"}),
            ("--out", {}),
        ],
    ),
    (
        "import-trail",
        cmd_import_trail,
        "import another trainer's checkpoints (trail.source diffusers or "
        "state_dict) as a trail manifest; the files stay where they are",
        [("--out", {"help": "the manifest (default: the layout's imported trail)"})],
    ),
    ("train-features", cmd_train_features, "train the FID feature classifier or autoencoder", [("--out", {})]),
    (
        "inception-features",
        cmd_inception_features,
        "find (or download) and check the Inception weights; write their descriptor",
        [("--out", {})],
    ),
    (
        "dinov2-features",
        cmd_dinov2_features,
        "find (or download) and check the DINOv2 weights (FD_DINOv2); write their descriptor",
        [("--out", {})],
    ),
    (
        "reference-stats",
        cmd_reference_stats,
        "reference feature mean/covariance of a split or of features.reference_folder",
        [
            ("--split", {"default": "train", "choices": ["train", "test", "folder"]}),
            ("--features", {}),
            ("--out", {}),
            ("--grid", dict(help="a PNG grid of the first reference images (default: beside the stats)")),
        ],
    ),
    (
        "baselines",
        cmd_baselines,
        "baseline profiles and greedy soup, scored like the search",
        [_MODEL, *_INPUTS, ("--out", {})],
    ),
    (
        "search",
        cmd_search,
        "search LCSC coefficients with nevergrad",
        [
            _MODEL,
            *_INPUTS,
            ("--baselines", {}),
            (
                "--repeat",
                {
                    "type": int,
                    "default": 0,
                    "help": "which of the search.repeats searches (0: the first, with search.seed)",
                },
            ),
            ("--out-dir", {"help": "the search's folder: coefficients.json, history.csv, best.safetensors, state/"}),
            *[(f"--{name}", {"help": "instead of the one in --out-dir"}) for name in search_files(".")],
        ],
    ),
    (
        "evaluate",
        cmd_evaluate,
        "FID of one variant over the NFE sweep",
        [
            _MODEL,
            ("--variant", {"required": True}),
            *_INPUTS,
            (
                "--coefficients",
                dict(_MANY, help="lcsc: each search's coefficients.json (search.repeats), the first first"),
            ),
            ("--baselines", {}),
            ("--out", {}),
            ("--grid", {}),
        ],
    ),
    (
        "export",
        cmd_export,
        "a variant's merged weights in the trail's own format, with a model card",
        [
            _MODEL,
            ("--variant", {"default": variants.LCSC}),
            ("--manifest", {}),
            ("--coefficients", {}),
            ("--baselines", {}),
            (
                "--evaluations",
                dict(_MANY, help="the evaluation JSONs the model card shows (default: the variant's and last's)"),
            ),
            ("--real", dict(help="a grid of reference images (reference_stats writes it), the picture's first panel")),
            ("--out-dir", {"help": "the export folder"}),
        ],
    ),
    (
        "tabulate",
        cmd_tabulate,
        "tables and plots of every evaluation",
        [
            ("--models", dict(_MANY, help="default: every model the config runs")),
            ("--variants", dict(_MANY, help="default: each model's own variants")),
            ("--manifests", dict(_MANY, help="each model's trail manifest, in the order of --models")),
            ("--searches", dict(_MANY, help="each model's coefficients.json, in the order of --models")),
            ("--histories", dict(_MANY, help="each model's history.csv, in the order of --models")),
            ("--evaluations", dict(_MANY, help="every evaluation JSON to show")),
            ("--grids", dict(_MANY, help="the sample grid of each evaluation, in the same order")),
            ("--real", dict(help="a grid of reference images (reference_stats writes it), shown beside the samples")),
            ("--out-dir", {"help": "the report's folder"}),
        ],
    ),
    (
        "mlflow-server",
        cmd_mlflow_server,
        "run an MLflow tracking server over the results' store (foreground; Ctrl-C stops it)",
        [
            ("--host", {"default": "127.0.0.1", "help": "address to bind (default: loopback only)"}),
            ("--port", {"type": _count(0), "default": 5000}),
            ("--workers", {"type": _count(1), "default": 1}),
            (
                "--allowed-hosts",
                {"help": "Host headers the server answers (default for a non-loopback --host: this machine's names)"},
            ),
        ],
    ),
    (
        "mlflow-sync",
        cmd_mlflow_sync,
        "log to MLflow every recorded run it lacks or holds in part (idempotent)",
        [
            (
                "--any-store",
                {"action": "store_true", "help": "also log records made for another tracking URI or experiment name"},
            )
        ],
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lcsc", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, func, help_text, arguments in COMMANDS:
        p = sub.add_parser(name, help=help_text, allow_abbrev=False)  # a new flag never changes what an old one means
        for flag, kwargs in (*_COMMON, *arguments):
            p.add_argument(flag, **kwargs)
        p.set_defaults(func=func)
    return parser


# what to do about an OSError, by errno (when its message does not say already)
_OS_HINTS = {
    errno.ENOENT: "check the path, or run the stage that writes it first",
    errno.EACCES: "check its permissions",
    errno.EPERM: "check its permissions",
    errno.ENOTDIR: "a part of that path is a file, not a folder: move it away or choose another path",
    errno.EEXIST: "something is in the way there: move it away or choose another path",
    errno.EISDIR: "that is a folder: give the file",
    errno.ENOSPC: "free some space and rerun",
    errno.EDQUOT: "free some space and rerun",
    errno.EROFS: "the file system is read-only: choose another folder",
}


def _one_line(exc: BaseException) -> str:
    """The message of an expected failure on one line. A ConfigError that lists several bad keys
    keeps one key per line under its header; with a single key it is just that line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) == 2 and lines[0].endswith(":"):  # "invalid configuration:" and one key
        return lines[1]
    if isinstance(exc, ConfigError) and len(lines) > 2 and lines[0].endswith(":"):
        return str(exc).strip()
    return " ".join(lines) or type(exc).__name__


def _os_message(exc: OSError) -> str:
    """`<file>: <what is wrong>; <what to do>` for an OSError that names its file."""
    if exc.filename is None:
        return _one_line(exc)
    name = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
    what = " ".join((exc.strerror or str(exc)).split())
    hint = _OS_HINTS.get(exc.errno)
    return f"{name}: {what}" + (f"; {hint}" if hint and ";" not in what else "")


def _yaml_message(exc) -> str:
    """`<file>:<line>:<column>: <problem>; fix the YAML` for a YAML syntax error."""
    mark = getattr(exc, "problem_mark", None)
    where = (
        f"{mark.name}:{mark.line + 1}:{mark.column + 1}"
        if mark is not None
        else getattr(exc, "name", None) or "the config"
    )  # a ReaderError (not text) has no mark
    problem = " ".join(filter(None, (getattr(exc, "context", None), getattr(exc, "problem", None)))) or _one_line(exc)
    return f"{where}: not valid YAML ({problem}); fix the file"


def main(argv: list[str] | None = None) -> int:
    """Run one stage. Every expected failure (a bad config value, argument or file) is one line on
    stderr, `lcsc <stage>: <file or key>: <what is wrong>; <what to do>`, and exit code 2; an
    interrupt (Ctrl-C, SIGTERM) exits with 130 and the stage resumes when run again. Any other
    exception is a bug and keeps its traceback."""
    jobtime.begin()
    saved = [(sig, signal.getsignal(sig)) for sig in (signal.SIGINT, signal.SIGTERM)]
    install()  # SIGTERM, as Ctrl-C, raises KeyboardInterrupt in the stage: it unwinds, closing its files and run
    code = 2
    try:
        code = _run(argv)
        return code
    finally:  # an in-process caller (a test, a notebook) gets its own handlers back
        jobtime.write(next((a for a in (argv or sys.argv[1:]) if not a.startswith("-")), "lcsc"), code)
        for sig, handler in saved:
            if handler is not None:
                signal.signal(sig, handler)


def _parse(argv: list[str] | None):
    """The parsed arguments, or the exit code 2 after one line on stderr."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise _ArgumentError(
                f"lcsc {args.stage}", f"unrecognized arguments: {' '.join(extra)}; see lcsc {args.stage} --help"
            )
    except _ArgumentError as exc:
        print(f"{exc.prog}: {exc}", file=sys.stderr)
        return 2
    return args


def _end_progress() -> None:
    """Close the progress bars a failed stage left open, so that its error starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ()) or ()):
        with contextlib.suppress(Exception):
            bar.close()


def _guarded(prog: str, work) -> int:
    """Run `work()`: 0; an expected failure is one line on stderr and 2, an interrupt 130."""
    try:
        work()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (lcsc.kernel.interrupts)
        _end_progress()
        with contextlib.suppress(OSError):  # after a Ctrl-C the rule's `tee` may be gone: a broken pipe
            print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except LcscError as exc:
        message = _one_line(exc)
    except OSError as exc:
        message = _os_message(exc)
    except yaml.YAMLError as exc:  # the --config file
        message = _yaml_message(exc)
    else:
        return 0
    _end_progress()
    print(f"{prog}: {message}", file=sys.stderr)
    return 2


def _run(argv: list[str] | None) -> int:
    args = _parse(argv)
    if isinstance(args, int):
        return args
    return _guarded(f"lcsc {args.stage}", lambda: args.func(args))


def preflight(argv: list[str]) -> tuple[dict | None, int]:
    """What lcsc.launch checks once before it starts N copies of a stage: the arguments and the
    config (printed as one line on failure, as `main` would, but once). (config, 0) or (None, code)."""
    args = _parse(argv)
    if isinstance(args, int):
        return None, args
    found: dict = {}

    def check() -> None:
        found["cfg"] = _config(args, warn=False)  # each process prints the warnings once more
        check_writer(found["cfg"])

    code = _guarded(f"lcsc {args.stage}", check)
    return (found["cfg"] if code == 0 else None), code
