"""The names of lcsc's MLflow runs, tags and environment (docs/mlflow.md): one place for them."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

from ..io import json_digest
from ..paths import dataset_name, feature_tag

# The short jobs that, in a workflow run with `mlflow.defer`, only write their record: the
# workflow logs them when it ends (end_parent), saving each MLflow's import and store.
DEFERRED_STAGES = (
    "train_features",
    "inception_features",
    "dinov2_features",
    "reference_stats",
    "truncate_trail",
    "import_trail",
    "baselines",
    "evaluate",
    "export",
)
PARENT_ENV = "LCSC_MLFLOW_PARENT_RUN_ID"
INVOCATION_ENV = "LCSC_INVOCATION"
COMPLETE = "complete"
# A tracking server that is down must cost a job seconds, not MLflow's default of minutes of
# retries per request; users can still set these themselves.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def tracking_uri(cfg: dict) -> str:
    uri = cfg["mlflow"]["tracking_uri"]
    if uri:
        return uri
    db = (Path(cfg["results_dir"]) / "mlflow.db").resolve()
    # SQLite creates the database file but not its folder.
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def experiment_name(cfg: dict) -> str:
    return cfg["mlflow"]["experiment"] or cfg["experiment"]


def run_name(stage: str, wildcards: dict[str, str]) -> str:
    """A job's name, `search[model=dm,nfe=5]`: its record's key within the invocation."""
    return stage + (f"[{','.join(f'{k}={v}' for k, v in wildcards.items())}]" if wildcards else "")


def display_name(name: str, invocation: str) -> str:
    """The job's run name in MLflow, `search[model=dm,nfe=5] @20261203-071200-1a2b3c`: the
    invocation tells apart the runs of one job made by two invocations."""
    return f"{name} @{invocation}"


def job_name(mlflow_run_name: str) -> str:
    """The job's name of a run name display_name made (the name itself for any other)."""
    return mlflow_run_name.split(" @", 1)[0]


def config_hash(cfg: dict) -> str:
    return json_digest(cfg)[:12]


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            # Asked in the package's folder, so the commit is lcsc's code, not the working directory's.
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def stage_tags(
    cfg: dict, stage: str, wildcards: dict[str, str], params: dict, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The tags of a job's run: which stage, model, variant, dataset and features, and which code
    and config made it (the stage adds its own, e.g. the NFEs it samples at)."""
    tags = {
        "lcsc.stage": stage,
        "lcsc.rule": stage,
        "lcsc.experiment": cfg["experiment"],
        "lcsc.config_hash": config_hash(params),
        "lcsc.git_commit": git_commit(),
    }
    # a job holds only the config sections it reads (the others are schema defaults): tag from those
    if "data" in params:
        tags["lcsc.dataset"] = dataset_name(cfg["data"])
    if "features" in params:
        tags["lcsc.features"] = feature_tag(cfg["features"])
    tags |= (extra or {}) | {f"lcsc.{k}": str(v) for k, v in wildcards.items()}
    return tags


def new_invocation() -> str:
    """A new invocation's id: its start time and a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
