"""MLflow: one parent run per workflow invocation, one child run per job.

The parent is created by the workflow's `onstart` and its id travels to every job in the
environment variable LCSC_MLFLOW_PARENT_RUN_ID (not MLFLOW_RUN_ID, which would make every job
resume the parent itself). Results on disk are the source of truth: if the tracking store
fails, a stage prints one warning and finishes its work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .config import config_hash, flatten

PARENT_ENV = "LCSC_MLFLOW_PARENT_RUN_ID"


def tracking_uri(cfg: dict) -> str:
    uri = cfg["mlflow"]["tracking_uri"]
    if uri:
        return uri
    db = (Path(cfg["results_dir"]) / "mlflow.db").resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def experiment_name(cfg: dict) -> str:
    return cfg["mlflow"]["experiment"] or cfg["experiment"]


def _client(cfg: dict):
    """A client whose store is ready. A new SQLite store is created under a file lock: two jobs
    migrating the same fresh database at once leave it half-made."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    client = MlflowClient(tracking_uri=uri)
    if uri.startswith("sqlite:///"):
        import fcntl

        with open(uri.removeprefix("sqlite:///") + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            client.search_experiments(max_results=1)
    return client


def _experiment_id(client, cfg: dict) -> str:
    name = experiment_name(cfg)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if not cfg["mlflow"]["tracking_uri"]:  # local store: artifacts beside the database
        location = (Path(cfg["results_dir"]) / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another job created it a moment ago
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _retry(fn, tries: int = 4, wait: float = 1.0):
    """SQLite stores refuse concurrent schema creation and writes now and then: try again."""
    for attempt in range(tries):
        try:
            return fn()
        except Exception:
            if attempt == tries - 1:
                raise
            time.sleep(wait * (attempt + 1))


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _params(values: dict):
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in flatten(values).items()]


def start_parent(cfg: dict) -> str | None:
    """Create the invocation's parent run; return its id (None when MLflow is off or failing)."""
    if not cfg["mlflow"]["enabled"]:
        return None
    try:
        client = _retry(lambda: _client(cfg))
        exp_id = _retry(lambda: _experiment_id(client, cfg))
        run = client.create_run(exp_id, run_name=f"{cfg['experiment']}@{time.strftime('%Y-%m-%d %H:%M:%S')}",
                                tags={"lcsc.role": "invocation", "lcsc.experiment": cfg["experiment"],
                                      "lcsc.config_hash": config_hash(cfg), "lcsc.git_commit": git_commit()})
        params = _params(cfg)
        for i in range(0, len(params), 100):
            client.log_batch(run.info.run_id, params=params[i:i + 100])
        return run.info.run_id
    except Exception as exc:  # results on disk do not depend on MLflow
        print(f"[lcsc] MLflow unavailable ({tracking_uri(cfg)}): {exc}; the workflow runs without it",
              file=sys.stderr)
        return None


def end_parent(cfg: dict, run_id: str | None, ok: bool) -> None:
    if not run_id:
        return
    try:
        _client(cfg).set_terminated(run_id, "FINISHED" if ok else "FAILED")
    except Exception as exc:
        print(f"[lcsc] could not close MLflow run {run_id}: {exc}", file=sys.stderr)


class StageRun:
    """A job's child run. Metrics are buffered and sent in batches; any MLflow failure turns the
    run off with one warning instead of failing the stage."""

    def __init__(self, cfg: dict, stage: str, wildcards: dict[str, str], params: dict):
        self.cfg, self.stage, self.wildcards = cfg, stage, wildcards
        self.params = params
        self.client = None
        self.run_id = None
        self._metrics: list = []
        self._last_flush = time.monotonic()
        self.ok = True

    def _warn(self, what: str, exc: Exception) -> None:
        print(f"[lcsc] MLflow {what} failed ({exc}); results stay on disk, logging is off for this job",
              file=sys.stderr)
        self.client = None

    def __enter__(self) -> "StageRun":
        if not self.cfg["mlflow"]["enabled"]:
            return self
        name = self.stage + (f"[{','.join(f'{k}={v}' for k, v in self.wildcards.items())}]" if self.wildcards else "")
        tags = {"lcsc.stage": self.stage, "lcsc.rule": self.stage, "lcsc.experiment": self.cfg["experiment"],
                "lcsc.config_hash": config_hash(self.params), "lcsc.git_commit": git_commit()}
        tags |= {f"lcsc.{k}": str(v) for k, v in self.wildcards.items()}
        parent = os.environ.get(PARENT_ENV)
        if parent:
            tags["mlflow.parentRunId"] = parent
        try:
            self.client = _retry(lambda: _client(self.cfg))
            run = _retry(lambda: self.client.create_run(_experiment_id(self.client, self.cfg),
                                                        run_name=name, tags=tags))
            self.run_id = run.info.run_id
            params = _params(self.params)
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        except Exception as exc:
            self._warn("run creation", exc)
        return self

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics += [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        if len(self._metrics) >= 500 or time.monotonic() - self._last_flush > 10:
            self.flush()

    def flush(self) -> None:
        if self.client is None or not self._metrics:
            return
        try:
            for i in range(0, len(self._metrics), 500):
                self.client.log_batch(self.run_id, metrics=self._metrics[i:i + 500])
        except Exception as exc:
            self._warn("metric logging", exc)
        self._metrics.clear()
        self._last_flush = time.monotonic()

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        if self.client is None:
            return
        try:
            self.client.log_artifact(self.run_id, str(path), folder)
        except Exception as exc:
            self._warn("artifact upload", exc)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.client is None:
            return
        try:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))
        except Exception as exc:
            self._warn("tagging", exc)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.flush()
        if self.client is not None:
            try:
                self.client.set_terminated(self.run_id, "FINISHED" if exc_type is None else "FAILED")
            except Exception as err:
                self._warn("run closing", err)
