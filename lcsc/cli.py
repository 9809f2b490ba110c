"""Command line: `python -m lcsc <stage> ...`, the same in a terminal, a rule, a conda env or a
SLURM job. Paths default to the results layout, so `lcsc search --config my.yaml` works alone."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import sys
from pathlib import Path

from .config import ConfigError, apply_overrides, config_warnings, load_config, stage_config, validate, with_runtime
from .errors import LcscError, StoreError, UsageError  # no torch: tabulate runs without it
from .paths import Layout


def _parse_value(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UsageError(f"--set: the value {text!r} is not YAML ({problem}); quote strings, "
                         "e.g. --set 'search.init=\"last\"'") from None


def _config(args) -> dict:
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
    for warning in config_warnings(cfg):
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


def _setup(args, stage: str, model: str | None = None):
    """The config (as `model`'s stages read it, see lcsc.config.for_model), layout, device and run."""
    import torch

    from .config import for_model, model_kind, resolve_device, truncation
    from .tracking import StageRun

    cfg = _config(args)
    if model is not None:
        model_kind(model)  # an unknown model name is an error here, not deep inside a stage
        truncation(model)
        cfg = for_model(cfg, model)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(cfg)
    run = StageRun(cfg, stage, _wildcards(args.wildcards), stage_config(cfg, stage, model))
    return cfg, Layout.of(cfg), device, run


def cmd_train_dm(args) -> None:
    from .diffusion import VPDiffusion
    from .data import load_split
    from .nets import build_unet
    from .train import train

    cfg, layout, device, run = _setup(args, "train_dm")
    out_dir = Path(args.out_dir or layout.trail_dir("dm"))
    with run:
        data = load_split(cfg["data"], "train")
        import torch

        torch.manual_seed(cfg["seed"])
        model = build_unet(cfg["model"], cfg["data"]["channels"])
        print(f"[train_dm] {sum(p.numel() for p in model.parameters())} parameters, "
              f"{len(data.images)} training images, device {device}", flush=True)
        diffusion = VPDiffusion.from_config(cfg["diffusion"])
        manifest = train(model, diffusion.loss, data.images, cfg["train"], out_dir, seed=cfg["seed"],
                         device=device, run=run, desc="train_dm",
                         manifest_extra={"kind": "dm", "model_config": cfg["model"],
                                         "diffusion": {k: cfg["diffusion"][k] for k in ("schedule", "timesteps")},
                                         "data": cfg["data"]})
        run.log_artifact(manifest)


def cmd_train_cm(args) -> None:
    import torch

    from .consistency import ConsistencyLoss, Parameterization, VPTeacher
    from .data import load_split
    from .diffusion import VPDiffusion
    from .io import load_tensors, sha256
    from .nets import build_unet
    from .train import train
    from .trail import Trail

    model_name = f"cm_{args.mode}"
    cfg, layout, device, run = _setup(args, "train_cm", model_name)
    ccfg = cfg["consistency"]
    out_dir = Path(args.out_dir or layout.trail_dir(model_name))
    with run:
        data = load_split(cfg["data"], "train")
        extra = {"kind": "cm", "mode": args.mode, "model_config": cfg["model"], "data": cfg["data"],
                 "consistency": Parameterization.from_config(ccfg).settings(),
                 "training": {k: ccfg[k] for k in ("p_mean", "p_std", "loss", "huber_c")}}
        teacher = None
        if args.mode == "cd":
            teacher_manifest = Path(args.teacher or layout.manifest("dm"))
            trail = Trail.open(teacher_manifest)
            if trail.manifest.get("kind") != "dm":
                raise ConfigError(f"--teacher: {teacher_manifest} is not a diffusion trail; pass the dm trail's manifest")
            path = trail.weights_path(ccfg["cd"]["teacher"])
            net = build_unet(trail.model_config, cfg["data"]["channels"])
            net.load_state_dict(load_tensors(path))
            net.to(device).eval().requires_grad_(False)
            schedule = VPDiffusion(trail.manifest["diffusion"]["schedule"], trail.manifest["diffusion"]["timesteps"])
            teacher = VPTeacher(net, schedule.alpha_bar, cfg["diffusion"]["clip_denoised"])
            extra["training"] |= {"cd": ccfg["cd"], "teacher_clip": cfg["diffusion"]["clip_denoised"]}
            extra["teacher"] = {"manifest": str(teacher_manifest), "weights": ccfg["cd"]["teacher"],
                                "file": str(path), "sha256": sha256(path)}
        else:  # the curriculum spans the whole run: another length is another training
            extra["training"] |= {"ct": ccfg["ct"], "curriculum_iterations": cfg["train"]["iterations"]}
        loss = ConsistencyLoss(ccfg, args.mode, cfg["train"]["iterations"], teacher)
        torch.manual_seed(cfg["seed"])
        model = build_unet(cfg["model"], cfg["data"]["channels"])
        print(f"[train_cm] consistency {'distillation' if args.mode == 'cd' else 'training'}: "
              f"{sum(p.numel() for p in model.parameters())} parameters, {len(data.images)} training images, "
              f"{cfg['train']['iterations']} iterations, device {device}", flush=True)
        manifest = train(model, loss, data.images, cfg["train"], out_dir, seed=cfg["seed"], device=device,
                         run=run, desc=f"train_cm {args.mode}", manifest_extra=extra)
        run.log_artifact(manifest)


def cmd_truncate_trail(args) -> None:
    from .config import base_model, truncation
    from .trail import truncate

    layout = Layout.of(_config(args))
    fraction = truncation(args.model)
    if fraction is None:
        raise ConfigError(f"--model: {args.model!r} does not name a truncated trail; pass <model>_first<percent>, "
                          "e.g. cm_ct_first25")
    manifest = truncate(args.manifest or layout.manifest(base_model(args.model)), fraction,
                        args.out or layout.manifest(args.model))
    print(f"[truncate_trail] {args.model}: {len(manifest['checkpoints'])} checkpoints up to step "
          f"{manifest['iterations']} of {manifest['truncated_from']['iterations']}")


def cmd_train_features(args) -> None:
    from .features import run_train_features

    cfg, layout, device, run = _setup(args, "train_features")
    if cfg["features"]["kind"] != "classifier":
        raise ConfigError(f"features.kind: {cfg['features']['kind']!r}, so there is no "
                          "classifier to train (run inception-features)")
    with run:
        meta = run_train_features(cfg, args.out or layout.feature_net("classifier"), device, run)
        run.log_metrics({"final_test_accuracy": meta["test_accuracy"]}, step=0)


def cmd_inception_features(args) -> None:
    from .features import run_inception_features
    from .paths import feature_tag

    cfg, layout, device, run = _setup(args, "inception_features")
    if cfg["features"]["kind"] != "inception":
        raise ConfigError(f"features.kind: {cfg['features']['kind']!r}, not 'inception'; set features.kind: "
                          "inception (or run train-features)")
    with run:
        info = run_inception_features(cfg, args.out or layout.feature_net(feature_tag(cfg["features"])), device)
        run.set_tags({"lcsc.feature_hash": info["hash"]})


def cmd_reference_stats(args) -> None:
    from .features import run_reference_stats
    from .paths import dataset_name, feature_tag, reference_source

    cfg, layout, device, run = _setup(args, "reference_stats")
    name = reference_source(cfg)[0] if args.split == "folder" else dataset_name(cfg["data"])
    out = args.out or layout.stats(name, args.split, feature_tag(cfg["features"]))
    with run:
        info = run_reference_stats(cfg, _features_path(cfg, layout, args), args.split, out, device)
        run.set_tags({"lcsc.feature_hash": info["feature_hash"]})
        run.log_metrics({"images": info["n"]}, step=0)


def _features_path(cfg, layout, args) -> Path:
    from .paths import feature_tag

    return Path(args.features or layout.feature_net(feature_tag(cfg["features"])))


def _stats_path(cfg, layout, args) -> Path:
    from .paths import feature_tag, reference_source

    return Path(args.stats or layout.stats(*reference_source(cfg), feature_tag(cfg["features"])))


def _manifest(layout, args) -> Path:
    """The model's trail manifest (as given, or the layout's), checked to hold that kind of model:
    sampling a consistency trail as a diffusion model, or the reverse, is an error, not a number."""
    from .config import base_model, model_kind
    from .io import read_json

    path = Path(args.manifest or layout.manifest(args.model))
    if path.is_file():
        manifest = read_json(path, fix="rerun the stage that wrote the trail (or pass the right --manifest)")
        if not isinstance(manifest, dict):
            return path  # Trail.open says what is wrong with it
        kind = manifest.get("kind", "dm")
        mode = manifest.get("mode")
        if kind != model_kind(args.model) or (kind == "cm" and base_model(args.model) != f"cm_{mode}"):
            trained = "dm" if kind == "dm" else f"cm_{mode}"
            raise ConfigError(f"--model {args.model}: {path} holds a {trained} trail; pass --model {trained} "
                              f"(or a truncated name of it)")
    return path


def _baselines_path(layout, args) -> Path | None:
    """The baselines stage's file: as given, else where the layout puts it if it exists."""
    if args.baselines:
        return Path(args.baselines)
    default = layout.baselines(args.model)
    return default if default.exists() else None


def cmd_search(args) -> None:
    from .search import run_search

    cfg, layout, device, run = _setup(args, "search", args.model)
    nfe = cfg["search"]["nfe"]
    out_dir = Path(args.out_dir or layout.search_dir(args.model, nfe))
    with run:
        result = run_search(cfg, _manifest(layout, args),
                            _features_path(cfg, layout, args),
                            _stats_path(cfg, layout, args), out_dir, device, run,
                            baselines=_baselines_path(layout, args))
        run.log_metrics({"best_fitness_final": result["fitness"]}, step=0)
        run.log_artifact(out_dir / "coefficients.json")
        run.log_artifact(out_dir / "history.csv")


def cmd_baselines(args) -> None:
    from .baselines import run_baselines

    cfg, layout, device, run = _setup(args, "baselines", args.model)
    out = Path(args.out or layout.baselines(args.model))
    with run:
        run_baselines(cfg, _manifest(layout, args),
                      _features_path(cfg, layout, args),
                      _stats_path(cfg, layout, args), out, device, run)
        run.log_artifact(out)


def cmd_evaluate(args) -> None:
    from .evaluate import run_evaluate

    cfg, layout, device, run = _setup(args, "evaluate", args.model)
    out = Path(args.out or layout.eval_json(args.model, args.variant))
    grid = Path(args.grid or layout.eval_grid(args.model, args.variant))
    coefficients = args.coefficients
    if args.variant == "lcsc" and coefficients is None:
        coefficients = layout.coefficients(args.model, cfg["search"]["nfe"])
    with run:
        run_evaluate(cfg, args.model, args.variant, _manifest(layout, args),
                     _features_path(cfg, layout, args),
                     _stats_path(cfg, layout, args), out, grid, device, coefficients, run,
                     baselines=_baselines_path(layout, args))
        run.log_artifact(out)
        run.log_artifact(grid)


def cmd_tabulate(args) -> None:
    from .config import models
    from .report import run_tabulate
    from .tracking import StageRun

    cfg = _config(args)
    with StageRun(cfg, "tabulate", _wildcards(args.wildcards), stage_config(cfg, "tabulate")) as run:
        summary = run_tabulate(cfg, args.models or models(cfg), args.variants, run)
    print(summary.read_text())


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lcsc", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)

    def stage(name, func, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help="YAML config file (default: all schema defaults)")
        p.add_argument("--config-json", help="validated config as JSON (what the workflow passes)")
        p.add_argument("--runtime-json", help="with --config-json: the run-time keys (MLflow, devices, folders) "
                       "as JSON, which the workflow passes apart so that they never rerun a job")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
        p.add_argument("--threads", type=_count(0), default=0, help="torch CPU threads (0: torch's default)")
        p.add_argument("--wildcards", help="k=v,... naming this job in MLflow")
        p.set_defaults(func=func)
        return p

    stage("train-dm", cmd_train_dm, "train the diffusion model, writing its checkpoint trail") \
        .add_argument("--out-dir")
    p = stage("train-cm", cmd_train_cm, "train a consistency model (cd: distilled from the diffusion "
              "model's trail; ct: from data), writing its checkpoint trail")
    p.add_argument("--mode", required=True, choices=["cd", "ct"])
    p.add_argument("--teacher", help="cd: the diffusion trail's manifest (default: the layout's dm trail)")
    p.add_argument("--out-dir")
    p = stage("truncate-trail", cmd_truncate_trail,
              "the training-cost experiment's trail: the first part of a model's trail (no files copied)")
    p.add_argument("--model", required=True, help="<model>_first<percent>, e.g. cm_ct_first25")
    p.add_argument("--manifest", help="the full trail's manifest (default: the layout's)")
    p.add_argument("--out")
    stage("train-features", cmd_train_features, "train the FID feature classifier").add_argument("--out")
    stage("inception-features", cmd_inception_features,
          "find (or download) and check the Inception weights; write their descriptor").add_argument("--out")
    p = stage("reference-stats", cmd_reference_stats,
              "reference feature mean/covariance of a split or of features.reference_folder")
    p.add_argument("--split", default="train", choices=["train", "test", "folder"])
    p.add_argument("--features")
    p.add_argument("--out")
    p = stage("baselines", cmd_baselines, "baseline profiles and greedy soup, scored like the search")
    p.add_argument("--model", default="dm")
    for name in ("--manifest", "--features", "--stats", "--out"):
        p.add_argument(name)
    p = stage("search", cmd_search, "search LCSC coefficients with nevergrad")
    p.add_argument("--model", default="dm")
    for name in ("--manifest", "--features", "--stats", "--baselines", "--out-dir"):
        p.add_argument(name)
    p = stage("evaluate", cmd_evaluate, "FID of one variant over the NFE sweep")
    p.add_argument("--model", default="dm")
    p.add_argument("--variant", required=True)
    for name in ("--manifest", "--features", "--stats", "--coefficients", "--baselines", "--out", "--grid"):
        p.add_argument(name)
    p = stage("mlflow-server", cmd_mlflow_server,
              "run an MLflow tracking server over the results' store (foreground; Ctrl-C stops it)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=_count(0), default=5000)
    p.add_argument("--workers", type=_count(1), default=1)
    p.add_argument("--allowed-hosts", help="Host headers the server answers (default for a non-loopback "
                   "--host: this machine's names)")
    p = stage("mlflow-sync", cmd_mlflow_sync,
              "log to MLflow every recorded run it lacks or holds in part (idempotent)")
    p.add_argument("--any-store", action="store_true",
                   help="also log records made for another tracking URI or experiment name")
    p = stage("tabulate", cmd_tabulate, "tables and plots of every evaluation")
    p.add_argument("--models", nargs="+", help="default: every model the config runs")
    p.add_argument("--variants", nargs="+", help="default: each model's own variants")
    return parser


def cmd_mlflow_server(args) -> None:
    from .tracking import serve

    serve(_config(args), args.host, args.port, args.workers, args.allowed_hosts)


def cmd_mlflow_sync(args) -> None:
    from .tracking import experiment_name, records_dir, sync, tracking_uri

    cfg = _config(args)
    try:
        counts = sync(cfg, args.any_store)
    except Exception as exc:  # the store is down or refuses: nothing was lost, try again later
        raise StoreError(f"{tracking_uri(cfg)}: {' '.join(str(exc).split())}; the records in "
                         f"{records_dir(cfg)} are kept, run it again when the store is back") from None
    print(f"[lcsc] {counts['records']} run records in {records_dir(cfg)}: {counts['created']} runs created, "
          f"{counts['replaced']} logged in part replaced, {counts['completed']} parents completed, "
          f"{counts['complete']} already complete, {counts['skipped']} for another store skipped, "
          f"{counts['killed']} runs of killed jobs marked KILLED "
          f"({tracking_uri(cfg)}, experiment {experiment_name(cfg)})")
    if counts["failed"]:
        raise StoreError(f"{counts['failed']} records failed (see above); run it again")


# what to do about an OSError, by errno (when its message does not say already)
_OS_HINTS = {
    errno.ENOENT: "check the path, or run the stage that writes it first",
    errno.EACCES: "check its permissions", errno.EPERM: "check its permissions",
    errno.ENOTDIR: "a part of that path is a file, not a folder: move it away or choose another path",
    errno.EEXIST: "something is in the way there: move it away or choose another path",
    errno.EISDIR: "that is a folder: give the file",
    errno.ENOSPC: "free some space and rerun", errno.EDQUOT: "free some space and rerun",
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
    where = (f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark is not None
             else getattr(exc, "name", None) or "the config")  # a ReaderError (not text) has no mark
    problem = " ".join(filter(None, (getattr(exc, "context", None), getattr(exc, "problem", None)))) \
        or _one_line(exc)
    return f"{where}: not valid YAML ({problem}); fix the file"


def main(argv: list[str] | None = None) -> int:
    """Run one stage. Every expected failure (a bad config value, argument or file) is one line on
    stderr, `lcsc <stage>: <file or key>: <what is wrong>; <what to do>`, and exit code 2; an
    interrupt (Ctrl-C, SIGTERM) exits with 130 and the stage resumes when run again. Any other
    exception is a bug and keeps its traceback."""
    import signal

    from .interrupts import install

    saved = [(sig, signal.getsignal(sig)) for sig in (signal.SIGINT, signal.SIGTERM)]
    install()  # SIGTERM, as Ctrl-C, raises KeyboardInterrupt in the stage: it unwinds, closing its files and run
    try:
        return _run(argv)
    finally:  # an in-process caller (a test, a notebook) gets its own handlers back
        for sig, handler in saved:
            if handler is not None:
                signal.signal(sig, handler)


def _run(argv: list[str] | None) -> int:
    import yaml

    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise _ArgumentError(f"lcsc {args.stage}", f"unrecognized arguments: {' '.join(extra)}; "
                                 f"see lcsc {args.stage} --help")
    except _ArgumentError as exc:
        print(f"{exc.prog}: {exc}", file=sys.stderr)
        return 2
    prog = f"lcsc {args.stage}"
    try:
        args.func(args)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (lcsc.interrupts)
        with contextlib.suppress(OSError):  # after a Ctrl-C the rule's `tee` may be gone: a broken pipe
            print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (LcscError, ConfigError) as exc:
        message = _one_line(exc)
    except OSError as exc:
        message = _os_message(exc)
    except yaml.YAMLError as exc:  # the --config file
        message = _yaml_message(exc)
    else:
        return 0
    print(f"{prog}: {message}", file=sys.stderr)
    return 2
