"""The argument parser: every command with its flags, and argparse's errors as one line."""

from __future__ import annotations

import argparse

from ..kernel import variants
from ..kernel.models import IMPORTED
from ..kernel.paths import search_files
from .commands import (
    cmd_baselines,
    cmd_dinov2_features,
    cmd_evaluate,
    cmd_export,
    cmd_import_trail,
    cmd_inception_features,
    cmd_mlflow_server,
    cmd_mlflow_sync,
    cmd_reference_stats,
    cmd_search,
    cmd_tabulate,
    cmd_train_cm,
    cmd_train_dm,
    cmd_train_features,
    cmd_truncate_trail,
)

DESCRIPTION = (
    "Run one stage of the LCSC workflow: `python -m lcsc <stage> ...`, the same in a terminal, a rule, a "
    "conda env or a SLURM job."
)


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
    parser = _Parser(prog="lcsc", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, func, help_text, arguments in COMMANDS:
        p = sub.add_parser(name, help=help_text, allow_abbrev=False)  # a new flag never changes what an old one means
        for flag, kwargs in (*_COMMON, *arguments):
            p.add_argument(flag, **kwargs)
        p.set_defaults(func=func)
    return parser
