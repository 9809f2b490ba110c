"""The runs: the invocation's parent run (start_parent, end_parent) and each job's child run
(StageRun), recorded on disk first, then sent to MLflow."""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import time
from pathlib import Path

from .. import jobtime
from .client import end_orphan_runs, experiment_id, log_params, register, retry, store_client
from .names import (
    COMPLETE,
    DEFERRED_STAGES,
    INVOCATION_ENV,
    PARENT_ENV,
    config_hash,
    display_name,
    git_commit,
    new_invocation,
    run_name,
    stage_tags,
    tracking_uri,
)
from .records import end_orphan_records, new_record, record_path, records_dir, write_record
from .sync import log_deferred


def start_parent(cfg: dict, invocation: str | None = None) -> tuple[str, str | None]:
    """Begin an invocation (a new one, or `invocation`): its id, and its parent run's id (None when
    MLflow is off or failing). The parent's record is written either way, so `lcsc mlflow-sync`
    can create it later."""
    invocation = invocation or new_invocation()
    if not cfg["mlflow"]["enabled"]:
        return invocation, None
    name = f"{cfg['experiment']}@{time.strftime('%Y-%m-%d %H:%M:%S')}"
    tags = {
        "lcsc.role": "invocation",
        "lcsc.experiment": cfg["experiment"],
        "lcsc.config_hash": config_hash(cfg),
        "lcsc.git_commit": git_commit(),
    }
    record = new_record(cfg, invocation, name, None, tags, cfg, key="parent")
    try:  # jobs of earlier invocations killed before they could close their records
        end_orphan_records(cfg)
    except OSError as exc:
        print(f"[lcsc] could not check the tracking records in {records_dir(cfg)}: {exc}", file=sys.stderr)
    write_record(record_path(cfg, invocation, "parent"), record)
    run_id = None
    try:
        client = retry(lambda: store_client(cfg), cfg)
        exp_id = retry(lambda: experiment_id(client, cfg), cfg)
        run_id = client.create_run(
            exp_id, run_name=name, tags=record["tags"], start_time=record["start_time"]
        ).info.run_id
        log_params(client, run_id, record["params"])
    except Exception as exc:  # results on disk do not depend on MLflow
        print(
            f"[lcsc] MLflow unavailable ({tracking_uri(cfg)}): {exc}; the workflow runs without it "
            "(`lcsc mlflow-sync` logs its runs later)",
            file=sys.stderr,
        )
    if run_id:
        try:  # and their runs, left RUNNING under parents that have ended
            end_orphan_runs(client, exp_id)
        except Exception as exc:
            print(f"[lcsc] could not end the runs of killed jobs in MLflow: {exc}", file=sys.stderr)
    _OPEN_PARENT.update(cfg=cfg, invocation=invocation, run_id=run_id)
    # A second registration of the same function is harmless.
    atexit.register(_end_open_parent)
    return invocation, run_id  # the run, once it exists, is the children's parent


# The invocation this process started and has not ended: Snakemake calls neither onsuccess nor
# onerror when it is stopped by Ctrl-C or SIGTERM, so the process's exit ends it KILLED.
_OPEN_PARENT: dict = {}


def _end_open_parent() -> None:
    if _OPEN_PARENT:
        open_ = dict(_OPEN_PARENT)
        end_parent(open_["cfg"], open_["invocation"], open_["run_id"], ok=False, status="KILLED")


def end_parent(cfg: dict, invocation: str | None, run_id: str | None, ok: bool, status: str | None = None) -> None:
    """End the invocation's parent run (FINISHED if ok, else FAILED, or the `status` given) and the
    runs of its jobs that were killed before they could end their own."""
    # Cleared first, so the exit hook does not end the same invocation again as KILLED.
    _OPEN_PARENT.clear()
    status = status or ("FINISHED" if ok else "FAILED")
    if invocation and cfg["mlflow"]["enabled"]:
        path = record_path(cfg, invocation, "parent")
        try:
            record = json.loads(path.read_text())
            record.update(status=status, end_time=int(time.time() * 1000))
            write_record(path, record)
            # Its jobs that were killed before they could say so.
            end_orphan_records(cfg, invocation)
        except (OSError, ValueError) as exc:
            print(f"[lcsc] could not update the tracking record {path}: {exc}", file=sys.stderr)
    if not run_id:
        return
    try:
        client = store_client(cfg)
        log_deferred(client, cfg, invocation, run_id)
        client.set_terminated(run_id, status)
        client.set_tag(run_id, "lcsc.logged", COMPLETE)
        end_orphan_runs(client, client.get_run(run_id).info.experiment_id, parent_id=run_id)
    except Exception as exc:
        print(f"[lcsc] could not close MLflow run {run_id}: {exc}", file=sys.stderr)


def _timed(method):
    """A StageRun method whose time counts as MLflow's in the job's phases (lcsc.kernel.jobtime)."""

    @functools.wraps(method)
    def timed(*args, **kwargs):
        with jobtime.mlflow():
            return method(*args, **kwargs)

    return timed


class StageRun:
    """A job's child run. Metrics are buffered and sent in batches; any MLflow failure turns the
    run off with one warning instead of failing the stage. Everything is also kept for the
    run's record on disk, written when the job ends."""

    def __init__(
        self, cfg: dict, stage: str, wildcards: dict[str, str], params: dict, tags: dict[str, str] | None = None
    ):
        self.cfg, self.stage, self.wildcards = cfg, stage, wildcards
        self.params = params
        self.client = None
        self.run_id = None
        self._pending: list = []
        self._last_flush = time.monotonic()
        self.logged_all = True
        self.name = run_name(stage, wildcards)
        jobtime.mark("setup")
        jobtime.name_job(self.name)
        self.invocation = os.environ.get(INVOCATION_ENV) or "manual-" + new_invocation()
        parent = os.environ.get(PARENT_ENV)
        parent_key = f"{self.invocation}/parent" if os.environ.get(INVOCATION_ENV) else None
        tags = stage_tags(cfg, stage, wildcards, params, tags)
        self.record = new_record(cfg, self.invocation, self.name, parent_key, tags, params)
        if parent:
            self.record["tags"]["mlflow.parentRunId"] = parent
        # a short job of a workflow run: its record only, logged when the workflow ends
        self.deferred = bool(
            cfg["mlflow"]["enabled"]
            and cfg["mlflow"].get("defer")
            and stage in DEFERRED_STAGES
            and os.environ.get(INVOCATION_ENV)
        )
        if self.deferred:
            self.record["deferred"] = True

    def _warn(self, what: str, exc: Exception) -> None:
        print(
            f"[lcsc] MLflow {what} failed ({exc}); results stay on disk, logging is off for this job "
            "(`lcsc mlflow-sync` logs it later)",
            file=sys.stderr,
        )
        self.client = None
        self.logged_all = False

    @_timed
    def __enter__(self) -> StageRun:
        if not self.cfg["mlflow"]["enabled"]:
            return self
        # RUNNING on disk from the start: if the job is killed outright, the next invocation or
        # `lcsc mlflow-sync` finds it and marks it KILLED (see end_orphan_records)
        write_record(record_path(self.cfg, self.invocation, self.name), self.record)
        if self.deferred:
            return self
        try:
            self.client = retry(lambda: store_client(self.cfg), self.cfg)
            run = retry(
                lambda: self.client.create_run(
                    experiment_id(self.client, self.cfg),
                    run_name=display_name(self.name, self.invocation),
                    tags=self.record["tags"],
                    start_time=self.record["start_time"],
                ),
                self.cfg,
            )
            self.run_id = run.info.run_id
            log_params(self.client, self.run_id, self.record["params"])
        except Exception as exc:
            self._warn("run creation", exc)
        except KeyboardInterrupt:
            # Stopped while making the run: `with` does not call __exit__ when __enter__ raises, so it
            # is called here (`except Exception` above does not catch an interrupt).
            self.logged_all = False  # its params may be missing: sync replaces it
            if self.run_id is None:
                self.client = None
            self.__exit__(*sys.exc_info())
            raise
        return self

    @_timed
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        rows = [[k, float(v), now, int(step)] for k, v in metrics.items()]
        self.record["metrics"] += rows
        if self.client is None:
            return
        self._pending += rows
        # Sent in batches, by count or by age, rather than one request per metric: a training loop
        # logs every few steps.
        if len(self._pending) >= 500 or time.monotonic() - self._last_flush > 10:
            self.flush()

    @_timed
    def flush(self) -> None:
        if self.client is None or not self._pending:
            return
        from mlflow.entities import Metric

        try:
            for i in range(0, len(self._pending), 500):
                self.client.log_batch(self.run_id, metrics=[Metric(*m) for m in self._pending[i : i + 500]])
        except Exception as exc:
            self._warn("metric logging", exc)
        self._pending.clear()
        self._last_flush = time.monotonic()

    @_timed
    def log_parent_metrics(self, metrics: dict[str, float]) -> None:
        """Metrics of the whole invocation (the report's headline numbers) on its parent run, so
        that the runs table compares invocations without opening them; kept in the parent's
        record on disk too, for `lcsc mlflow-sync`."""
        if not self.cfg["mlflow"]["enabled"] or not os.environ.get(INVOCATION_ENV):
            return
        now = int(time.time() * 1000)
        rows = [[k, float(v), now, 0] for k, v in metrics.items()]
        path = record_path(self.cfg, self.invocation, "parent")
        try:
            record = json.loads(path.read_text())
            record["metrics"] = [m for m in record["metrics"] if m[0] not in metrics] + rows
            write_record(path, record)
        except (OSError, ValueError) as exc:
            print(f"[lcsc] could not add the headline metrics to {path}: {exc}", file=sys.stderr)
        parent = os.environ.get(PARENT_ENV)
        if self.client is None or not parent:
            return
        from mlflow.entities import Metric

        try:
            self.client.log_batch(parent, metrics=[Metric(*m) for m in rows])
        except Exception as exc:
            self._warn("headline metrics on the parent run", exc)

    @_timed
    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.record["artifacts"].append([str(Path(path).resolve()), folder])
        if self.client is None:
            return
        try:
            self.client.log_artifact(self.run_id, str(path), folder)
        except Exception as exc:
            self._warn("artifact upload", exc)

    @_timed
    def register_model(self, name: str, folder: str) -> str | None:
        """A new version of the registered model `name` whose source is the artifact `folder` of
        this run; its version number, or None when MLflow is off or failed (one warning). The
        registration is kept in the run's record either way: `lcsc mlflow-sync` does the ones
        that failed."""
        if not self.cfg["mlflow"]["enabled"]:
            return None
        entry = {"name": name, "folder": folder, "version": None}
        self.record.setdefault("registrations", []).append(entry)
        if self.deferred:
            print(f"[lcsc] {name} is registered when the workflow ends (mlflow.defer)")
            return None
        if self.client is None:
            print(f"[lcsc] MLflow is unavailable: {name} is registered by `lcsc mlflow-sync` later", file=sys.stderr)
            return None
        try:
            entry["version"] = register(self.client, self.run_id, name, folder)
        except Exception as exc:
            self._warn("model registration", exc)
            return None
        return entry["version"]

    @_timed
    def set_tags(self, tags: dict[str, str]) -> None:
        self.record["tags"] |= {k: str(v) for k, v in tags.items()}
        if self.client is None:
            return
        try:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))
        except Exception as exc:
            self._warn("tagging", exc)

    @_timed
    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.cfg["mlflow"]["enabled"]:
            return
        self.flush()
        if exc_type is None:
            status = "FINISHED"
        else:
            # Stopped by Ctrl-C or SIGTERM (lcsc.kernel.interrupts): KILLED, as MLflow names it.
            status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        self.record.update(status=status, end_time=int(time.time() * 1000))
        if self.client is not None:
            try:
                self.client.set_terminated(self.run_id, status, end_time=self.record["end_time"])
                if self.logged_all:
                    self.client.set_tag(self.run_id, "lcsc.logged", COMPLETE)
            except Exception as err:
                self._warn("run closing", err)
        write_record(record_path(self.cfg, self.invocation, self.name), self.record)
