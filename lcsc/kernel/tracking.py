"""MLflow conventions, in one place, and tracking that never loses a result.

Conventions (docs/mlflow.md):
- experiment: `mlflow.experiment`, else the config's `experiment`;
- one parent run per workflow invocation (`<experiment>@<time>`, tag `lcsc.role=invocation`) and
  one child run per job, named `<rule>[<wildcards>]`, e.g. `evaluate[model=dm,variant=lcsc]`;
- tags: `lcsc.stage`, `lcsc.model`, `lcsc.variant`, `lcsc.nfe` (the search NFE, or the evaluated
  NFEs), `lcsc.dataset`, `lcsc.features`, `lcsc.experiment`, `lcsc.config_hash`, `lcsc.git_commit`,
  `lcsc.invocation`, and `lcsc.run_key` / `lcsc.logged` for re-logging;
- params: the config sections the stage reads, as dotted keys (`search.budget`);
- metrics with steps: `train_loss` by iteration, `fitness` / `best_fitness` by evaluation, `fid`
  by NFE; artifacts: plots, coefficients and evaluation JSON, the report; never checkpoints.

The parent's id travels to every job in LCSC_MLFLOW_PARENT_RUN_ID (not MLFLOW_RUN_ID, which would
make every job resume the parent itself), the invocation's id in LCSC_INVOCATION.

Resilience: every run is also written to `<results>/<experiment>/tracking/<invocation>/<name>.json`
(tags, params, every metric, artifact paths, status) when the job ends. If the tracking store is
unreachable or fails, the job prints one warning, stops logging and finishes its work;
`lcsc mlflow-sync` later logs every run from those records that the store lacks or holds only in
part, and does nothing for runs already complete (tag `lcsc.logged=complete`), so it can be run
again and again.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from . import jobtime
from .config import flatten
from .io import json_digest, write_json
from .paths import dataset_name, feature_tag

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


def records_dir(cfg: dict) -> Path:
    return Path(cfg["results_dir"]) / cfg["experiment"] / "tracking"


def _record_path(cfg: dict, invocation: str, name: str) -> Path:
    return records_dir(cfg) / invocation / (re.sub(r"[^A-Za-z0-9._=,\[\]@-]", "_", name) + ".json")


def _write_record(path: Path, record: dict) -> None:
    try:
        write_json(path, record)
    except Exception as exc:  # the stage's own results are already written; say so and go on
        print(f"[lcsc] could not write the tracking record {path}: {exc}", file=sys.stderr)


def _client(cfg: dict):
    """A client whose store is ready. A new SQLite store is created under a file lock: two jobs
    migrating the same fresh database at once leave it half-made."""
    from mlflow.tracking import MlflowClient

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri(cfg)
    client = MlflowClient(tracking_uri=uri)
    if uri.startswith("sqlite:///"):
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


def _retry(fn, cfg: dict, wait: float = 1.0):
    """SQLite stores refuse concurrent schema creation and writes now and then: try again. A
    server has its own retries (HTTP_DEFAULTS); one try here."""
    tries = 4 if tracking_uri(cfg).startswith("sqlite:") else 1
    for attempt in range(tries):
        try:
            return fn()
        except Exception:
            if attempt == tries - 1:
                raise
            time.sleep(wait * (attempt + 1))


def config_hash(cfg: dict) -> str:
    return json_digest(cfg)[:12]


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
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


def _destination(cfg: dict) -> dict:
    """Where a record was meant to be logged: sync logs it there only."""
    return {"tracking_uri": tracking_uri(cfg), "experiment": experiment_name(cfg)}


def _owner() -> dict[str, str]:
    """Tags naming the process that keeps a run RUNNING: when it is gone, so is the run."""
    return {"lcsc.host": socket.gethostname(), "lcsc.pid": str(os.getpid())}


def _owner_gone(tags: dict) -> bool:
    """True when the run's process ran on this host and no longer exists (SIGKILL, OOM, a reboot).
    A run from another host (a cluster node) is judged by its parent instead."""
    if tags.get("lcsc.host") != socket.gethostname():
        return False
    try:
        pid = int(tags["lcsc.pid"])
        if pid == os.getpid():
            return False
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (KeyError, ValueError, OSError):  # no owner recorded, or alive under another user
        return False
    return False


def new_invocation() -> str:
    """A new invocation's id: its start time and a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


_invocation = new_invocation


def start_parent(cfg: dict, invocation: str | None = None) -> tuple[str, str | None]:
    """Begin an invocation (a new one, or `invocation`): its id, and its parent run's id (None when
    MLflow is off or failing). The parent's record is written either way, so `lcsc mlflow-sync`
    can create it later."""
    invocation = invocation or new_invocation()
    if not cfg["mlflow"]["enabled"]:
        return invocation, None
    name = f"{cfg['experiment']}@{time.strftime('%Y-%m-%d %H:%M:%S')}"
    record = {
        "key": f"{invocation}/parent",
        "invocation": invocation,
        "name": name,
        "parent_key": None,
        "tags": {
            "lcsc.role": "invocation",
            "lcsc.experiment": cfg["experiment"],
            "lcsc.invocation": invocation,
            "lcsc.config_hash": config_hash(cfg),
            "lcsc.git_commit": git_commit(),
            **_owner(),
        },
        "params": flatten(cfg),
        "metrics": [],
        "artifacts": [],
        "status": "RUNNING",
        "start_time": int(time.time() * 1000),
        "end_time": None,
        **_destination(cfg),
    }
    record["tags"]["lcsc.run_key"] = record["key"]
    try:  # jobs of earlier invocations killed before they could close their records
        end_orphan_records(cfg)
    except OSError as exc:
        print(f"[lcsc] could not check the tracking records in {records_dir(cfg)}: {exc}", file=sys.stderr)
    _write_record(_record_path(cfg, invocation, "parent"), record)
    run_id = None
    try:
        client = _retry(lambda: _client(cfg), cfg)
        exp_id = _retry(lambda: _experiment_id(client, cfg), cfg)
        run_id = client.create_run(
            exp_id, run_name=name, tags=record["tags"], start_time=record["start_time"]
        ).info.run_id
        params = _params(record["params"])
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i : i + 100])
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
    atexit.register(_end_open_parent)  # a second registration of the same function is harmless
    return invocation, run_id  # the run, once it exists, is the children's parent


# The invocation this process started and has not ended: Snakemake calls neither onsuccess nor
# onerror when it is stopped by Ctrl-C or SIGTERM, so the process's exit ends it KILLED.
_OPEN_PARENT: dict = {}


def _end_open_parent() -> None:
    if _OPEN_PARENT:
        open_ = dict(_OPEN_PARENT)
        end_parent(open_["cfg"], open_["invocation"], open_["run_id"], ok=False, status="KILLED")


def end_orphan_runs(client, exp_id: str, parent_id: str | None = None) -> int:
    """Mark KILLED every lcsc run still RUNNING that nothing will ever end: its process ran on this
    host and is gone (a job or a Snakemake driver killed with SIGKILL, or lost with its machine), or
    it is a child whose parent run has ended (its job ran elsewhere and was killed before it could
    close its run). Only the children of `parent_id` if given. Returns how many were marked."""
    query = "attributes.status = 'RUNNING'"
    if parent_id:
        query += f" and tags.`mlflow.parentRunId` = '{parent_id}'"
    runs, token = [], None
    while True:  # all pages first: ending runs while paging would shift the pages
        page = client.search_runs([exp_id], filter_string=query, max_results=1000, page_token=token)
        runs += [r for r in page if "lcsc.run_key" in r.data.tags]
        token = page.token
        if not token:
            break
    now, ended, done = int(time.time() * 1000), 0, set()
    for run in runs:  # parents before children: a child of a killed driver follows it
        if _owner_gone(run.data.tags):
            client.set_terminated(run.info.run_id, "KILLED", end_time=now)
            done.add(run.info.run_id)
            ended += 1
    parents: dict[str, tuple[str | None, int | None]] = {}
    for run in runs:
        pid = run.data.tags.get("mlflow.parentRunId")
        if run.info.run_id in done or not pid:
            continue
        if pid not in parents:
            try:
                info = client.get_run(pid).info
                parents[pid] = info.status, info.end_time
            except Exception:  # the parent is gone: nothing will ever end this run
                parents[pid] = None, None
        status, parent_end = parents[pid]
        if status != "RUNNING":
            end = min(now, max(parent_end or now, run.info.start_time or 0))
            client.set_terminated(run.info.run_id, "KILLED", end_time=end)
            ended += 1
    return ended


def end_orphan_records(cfg: dict, invocation: str | None = None) -> int:
    """The same for the run records on disk (of `invocation`, else of every invocation): a record
    still RUNNING whose process is gone, or whose invocation's parent record has ended, is
    rewritten as KILLED, so that sync logs it as such. Returns how many were rewritten."""
    folder = records_dir(cfg)
    if invocation:
        folders = [folder / invocation]
    else:
        folders = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    ended, now = 0, int(time.time() * 1000)
    for inv in folders:
        records = {}
        for path in sorted(inv.glob("*.json"), key=lambda p: p.name != "parent.json"):  # the parent first
            try:
                text = path.read_text()
                if '"RUNNING"' not in text and path.name != "parent.json":  # skip parsing the rest
                    continue
                records[path] = json.loads(text)
            except (OSError, ValueError):
                continue
        parent = records.get(inv / "parent.json")
        for path, record in records.items():
            if record.get("status") != "RUNNING":
                continue
            if _owner_gone(record.get("tags", {})):
                record.update(status="KILLED", end_time=now)
            elif path.name != "parent.json" and parent is not None and parent.get("status") != "RUNNING":
                record.update(status="KILLED", end_time=parent.get("end_time") or now)
            else:
                continue
            _write_record(path, record)
            ended += 1
    return ended


def end_parent(cfg: dict, invocation: str | None, run_id: str | None, ok: bool, status: str | None = None) -> None:
    """End the invocation's parent run (FINISHED if ok, else FAILED, or the `status` given) and the
    runs of its jobs that were killed before they could end their own."""
    _OPEN_PARENT.clear()
    status = status or ("FINISHED" if ok else "FAILED")
    if invocation and cfg["mlflow"]["enabled"]:
        path = _record_path(cfg, invocation, "parent")
        try:
            record = json.loads(path.read_text())
            record.update(status=status, end_time=int(time.time() * 1000))
            _write_record(path, record)
            end_orphan_records(cfg, invocation)  # its jobs that were killed before they could say so
        except (OSError, ValueError) as exc:
            print(f"[lcsc] could not update the tracking record {path}: {exc}", file=sys.stderr)
    if not run_id:
        return
    try:
        client = _client(cfg)
        _log_deferred(client, cfg, invocation, run_id)
        client.set_terminated(run_id, status)
        client.set_tag(run_id, "lcsc.logged", COMPLETE)
        end_orphan_runs(client, client.get_run(run_id).info.experiment_id, parent_id=run_id)
    except Exception as exc:
        print(f"[lcsc] could not close MLflow run {run_id}: {exc}", file=sys.stderr)


def _log_deferred(client, cfg: dict, invocation: str, parent_id: str) -> None:
    """Log the records of this invocation's deferred jobs (mlflow.defer) under its parent run,
    with their registrations; one that fails stays on disk for `lcsc mlflow-sync`."""
    start, counts = time.monotonic(), {"created": 0, "replaced": 0, "complete": 0, "registered": 0}
    exp_id = client.get_run(parent_id).info.experiment_id
    for path in sorted((records_dir(cfg) / invocation).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            if not record.get("deferred") or record.get("status") == "RUNNING" or path.stem == "parent":
                continue
            parents = {record["parent_key"]: parent_id}
            _sync_one(client, exp_id, record, parents, counts)
            _sync_registrations(client, path, record, parents.get(record["key"]), counts)
        except Exception as exc:  # the others still go; `lcsc mlflow-sync` retries this one
            print(f"[lcsc] {path}: not logged to MLflow ({exc}); `lcsc mlflow-sync` logs it later", file=sys.stderr)
    logged = counts["created"] + counts["replaced"]
    if logged:
        print(f"[lcsc] logged {logged} short jobs' runs to MLflow ({time.monotonic() - start:.1f} s; mlflow.defer)")


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
        self.invocation = os.environ.get(INVOCATION_ENV) or "manual-" + _invocation()
        parent = os.environ.get(PARENT_ENV)
        self.record = {
            "key": f"{self.invocation}/{self.name}",
            "invocation": self.invocation,
            "name": self.name,
            "parent_key": f"{self.invocation}/parent" if os.environ.get(INVOCATION_ENV) else None,
            "tags": stage_tags(cfg, stage, wildcards, params, tags),
            "params": flatten(params),
            "metrics": [],
            "artifacts": [],
            "status": "RUNNING",
            "start_time": int(time.time() * 1000),
            "end_time": None,
            **(_destination(cfg) if cfg["mlflow"]["enabled"] else {}),
        }
        self.record["tags"] |= {"lcsc.invocation": self.invocation, "lcsc.run_key": self.record["key"], **_owner()}
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
        _write_record(_record_path(self.cfg, self.invocation, self.name), self.record)
        if self.deferred:
            return self
        try:
            self.client = _retry(lambda: _client(self.cfg), self.cfg)
            run = _retry(
                lambda: self.client.create_run(
                    _experiment_id(self.client, self.cfg),
                    run_name=display_name(self.name, self.invocation),
                    tags=self.record["tags"],
                    start_time=self.record["start_time"],
                ),
                self.cfg,
            )
            self.run_id = run.info.run_id
            params = _params(self.record["params"])
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i : i + 100])
        except Exception as exc:
            self._warn("run creation", exc)
        except KeyboardInterrupt:  # stopped while making the run: `with` will not call __exit__
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
        path = _record_path(self.cfg, self.invocation, "parent")
        try:
            record = json.loads(path.read_text())
            record["metrics"] = [m for m in record["metrics"] if m[0] not in metrics] + rows
            _write_record(path, record)
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
            entry["version"] = _register(self.client, self.run_id, name, folder)
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
        else:  # stopped by Ctrl-C or SIGTERM (lcsc.kernel.interrupts): KILLED, as MLflow names it
            status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        self.record.update(status=status, end_time=int(time.time() * 1000))
        if self.client is not None:
            try:
                self.client.set_terminated(self.run_id, status, end_time=self.record["end_time"])
                if self.logged_all:
                    self.client.set_tag(self.run_id, "lcsc.logged", COMPLETE)
            except Exception as err:
                self._warn("run closing", err)
        _write_record(_record_path(self.cfg, self.invocation, self.name), self.record)


def _register(client, run_id: str, name: str, folder: str) -> str:
    """Register the artifact `folder` of run `run_id` as a version of model `name`, once: a version
    of that run already there (a sync run twice) is returned instead. Its version number."""
    source = f"{client.get_run(run_id).info.artifact_uri}/{folder}"
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        if version.source == source:
            return str(version.version)
    with contextlib.suppress(Exception):  # it exists already
        client.create_registered_model(name)
    return str(client.create_model_version(name, source, run_id=run_id).version)


def _find_all(client, exp_id: str, key: str) -> list:
    return client.search_runs([exp_id], filter_string=f"tags.`lcsc.run_key` = '{key}'", max_results=100)


def _log_record(client, exp_id: str, record: dict, parent_id: str | None) -> str:
    from mlflow.entities import Metric

    tags = dict(record["tags"])
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    else:
        tags.pop("mlflow.parentRunId", None)
    name = record["name"] if record["key"].endswith("/parent") else display_name(record["name"], record["invocation"])
    run = client.create_run(exp_id, run_name=name, tags=tags, start_time=record["start_time"])
    rid = run.info.run_id
    params = _params(record["params"])
    for i in range(0, len(params), 100):
        client.log_batch(rid, params=params[i : i + 100])
    metrics = [Metric(*m) for m in record["metrics"]]
    for i in range(0, len(metrics), 1000):
        client.log_batch(rid, metrics=metrics[i : i + 1000])
    for path, folder in record["artifacts"]:
        if Path(path).exists():
            client.log_artifact(rid, path, folder)
        else:
            print(f"[lcsc] {record['name']}: artifact {path} is gone; logged without it", file=sys.stderr)
    if record["status"] != "RUNNING":
        client.set_terminated(rid, record["status"], end_time=record["end_time"])
        client.set_tag(rid, "lcsc.logged", COMPLETE)
    return rid


def _params(flat: dict):
    """MLflow params of dotted keys (values cut to MLflow's length limit)."""
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in flat.items()]


def sync(cfg: dict, any_store: bool = False) -> dict[str, int]:
    """Log every run recorded under the experiment's `tracking/` folder that the store lacks or
    holds only in part. Complete runs are left alone (but re-attached to their parent if needed),
    so a second sync changes nothing. A child logged in part is replaced (duplicates of one
    record, e.g. from an HTTP retry, are removed); a parent is completed in place, since its
    children point to it. Records meant for another store are skipped unless `any_store`."""
    folder = records_dir(cfg)
    end_orphan_records(cfg)  # jobs killed before they could end their records: KILLED, not RUNNING
    records = sorted(folder.glob("*/*.json"))
    counts = {
        "records": len(records),
        "created": 0,
        "replaced": 0,
        "completed": 0,
        "complete": 0,
        "skipped": 0,
        "failed": 0,
        "killed": 0,
        "registered": 0,
    }
    if not records:
        return counts
    loaded = []
    for path in records:
        try:
            record = json.loads(path.read_text())
            record["key"], record["name"], record["status"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"[lcsc] {path}: not a run record ({exc}); skipped", file=sys.stderr)
            counts["failed"] += 1
            continue
        meant = record.get("tracking_uri"), record.get("experiment")
        if meant != (tracking_uri(cfg), experiment_name(cfg)) and not any_store:
            counts["skipped"] += 1
            continue
        loaded.append((path, record))
    client = _client(cfg)
    exp_id = _experiment_id(client, cfg)
    parents: dict[str, str] = {}
    with open(folder / ".sync.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two syncs at once would both create a missing run
        for path, record in sorted(loaded, key=lambda r: r[1]["parent_key"] is not None):  # parents first
            try:
                _sync_one(client, exp_id, record, parents, counts)
                _sync_registrations(client, path, record, parents.get(record["key"]), counts)
            except Exception as exc:  # one bad request must not stop the others
                print(f"[lcsc] {record['name']}: {exc}", file=sys.stderr)
                counts["failed"] += 1
        try:  # runs of killed jobs (no record, or logged before it) under parents that have ended
            counts["killed"] = end_orphan_runs(client, exp_id)
        except Exception as exc:
            print(f"[lcsc] could not end the runs of killed jobs: {exc}", file=sys.stderr)
            counts["failed"] += 1
    return counts


def _sync_registrations(client, path: Path, record: dict, run_id: str | None, counts: dict[str, int]) -> None:
    """The model registrations a job recorded but could not make (export.register while the store
    was down): made now, against the job's run, and marked done in its record."""
    pending = [r for r in record.get("registrations", []) if isinstance(r, dict) and r.get("version") is None]
    if not pending or run_id is None or record["status"] != "FINISHED":
        return
    for entry in pending:
        entry["version"] = _register(client, run_id, entry["name"], entry["folder"])
        print(f"[lcsc] {record['name']}: registered as {entry['name']} version {entry['version']}")
        counts["registered"] += 1
    _write_record(path, record)


def _sync_one(client, exp_id: str, record: dict, parents: dict[str, str], counts: dict[str, int]) -> None:
    found = _find_all(client, exp_id, record["key"])
    complete = [r for r in found if r.data.tags.get("lcsc.logged") == COMPLETE]
    is_parent = record["parent_key"] is None and record["tags"].get("lcsc.role") == "invocation"
    parent_id = parents.get(record["parent_key"]) if record["parent_key"] else None
    if complete:
        keep = complete[0]
        for extra in found:
            if extra.info.run_id != keep.info.run_id:
                client.delete_run(extra.info.run_id)
        if parent_id and keep.data.tags.get("mlflow.parentRunId") != parent_id:
            client.set_tag(keep.info.run_id, "mlflow.parentRunId", parent_id)
        parents[record["key"]] = keep.info.run_id
        counts["complete"] += 1
        return
    if record["status"] == "RUNNING" and not is_parent:
        print(f"[lcsc] {record['name']}: recorded as still running; skipped", file=sys.stderr)
        return
    if is_parent and found:  # finish the parent where it is: its children point to it
        run_id = found[0].info.run_id
        for extra in found[1:]:
            client.delete_run(extra.info.run_id)
        params = _params(record["params"])
        for i in range(0, len(params), 100):  # again: logging an identical value is allowed
            client.log_batch(run_id, params=params[i : i + 100])
        if record["status"] != "RUNNING":
            client.set_terminated(run_id, record["status"], end_time=record["end_time"])
            client.set_tag(run_id, "lcsc.logged", COMPLETE)
            counts["completed"] += 1
        parents[record["key"]] = run_id
        return
    for partial in found:  # a child logged in part: replace it with the whole record
        client.delete_run(partial.info.run_id)
    counts["replaced" if found else "created"] += 1
    parents[record["key"]] = _log_record(client, exp_id, record, parent_id)


def serve(cfg: dict, host: str, port: int, workers: int = 1, allowed_hosts: str | None = None) -> int:
    """Run a tracking server over the results' store (`mlflow server`, in the foreground).
    Artifacts stay in `<results_dir>/mlartifacts` as plain files (no artifact proxy), the layout
    jobs that write to the SQLite file directly use too, so both can be mixed."""
    uri = tracking_uri(dict(cfg, mlflow=dict(cfg["mlflow"], tracking_uri=None)))
    artifacts = (Path(cfg["results_dir"]) / "mlartifacts").resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--no-serve-artifacts",
        "--default-artifact-root",
        artifacts.as_uri(),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    name = host
    if host not in ("127.0.0.1", "localhost", "::1"):
        name = socket.gethostname()
        # MLflow answers only requests addressed to localhost or private IPs unless told otherwise
        allowed_hosts = allowed_hosts or ",".join(
            sorted({f"{h}:*" for h in (name, socket.getfqdn(), "localhost", "127.0.0.1")})
        )
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    print(
        f"[lcsc] MLflow tracking server over {uri} at http://{name}:{port} (runs: "
        f"http://{name}:{port}/#/experiments); point jobs at it with mlflow.tracking_uri: "
        f"http://{name}:{port}. It has no authentication: bind it to a network you trust.",
        flush=True,
    )
    os.execv(sys.executable, cmd)
    return 0  # not reached: the server replaces this process
