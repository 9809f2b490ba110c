"""The MLflow client: a store made ready once, retries where SQLite needs them, params, model
registrations, and the runs of killed jobs ended. mlflow is imported only here, when a run needs it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from .names import HTTP_DEFAULTS, experiment_name, tracking_uri
from .records import owner_gone


def store_client(cfg: dict):
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
            # The first request makes MLflow create and migrate the SQLite schema: under the lock, one
            # job at a time.
            client.search_experiments(max_results=1)
    return client


def experiment_id(client, cfg: dict) -> str:
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


def retry(fn, cfg: dict, wait: float = 1.0):
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


def log_params(client, run_id: str, flat: dict) -> None:
    """A run's params of dotted keys (values cut to MLflow's length limit), 100 per request;
    logging an identical value again is allowed."""
    from mlflow.entities import Param

    params = [Param(k, str(v)[:6000]) for k, v in flat.items()]
    # MLflow takes at most 100 params in one log_batch request.
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])


def register(client, run_id: str, name: str, folder: str) -> str:
    """Register the artifact `folder` of run `run_id` as a version of model `name`, once: a version
    of that run already there (a sync run twice) is returned instead. Its version number."""
    source = f"{client.get_run(run_id).info.artifact_uri}/{folder}"
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        if version.source == source:
            return str(version.version)
    with contextlib.suppress(Exception):  # it exists already
        client.create_registered_model(name)
    return str(client.create_model_version(name, source, run_id=run_id).version)


def find_all(client, exp_id: str, key: str) -> list:
    return client.search_runs([exp_id], filter_string=f"tags.`lcsc.run_key` = '{key}'", max_results=100)


def end_orphan_runs(client, exp_id: str, parent_id: str | None = None) -> int:
    """Mark KILLED every lcsc run still RUNNING that nothing will ever end: its process ran on this
    host and is gone (a job or a Snakemake driver killed with SIGKILL, or lost with its machine), or
    it is a child whose parent run has ended (its job ran elsewhere and was killed before it could
    close its run). Only the children of `parent_id` if given. Returns how many were marked."""
    query = "attributes.status = 'RUNNING'"
    if parent_id:
        query += f" and tags.`mlflow.parentRunId` = '{parent_id}'"
    runs, token = [], None
    # All pages first: ending runs while paging would shift the pages.
    while True:
        page = client.search_runs([exp_id], filter_string=query, max_results=1000, page_token=token)
        runs += [r for r in page if "lcsc.run_key" in r.data.tags]
        token = page.token
        if not token:
            break
    now, ended, done = int(time.time() * 1000), 0, set()
    # Parents before children: a child of a killed driver follows it.
    for run in runs:
        if owner_gone(run.data.tags):
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
            except Exception:
                # The parent is gone: nothing will ever end this run.
                parents[pid] = None, None
        status, parent_end = parents[pid]
        if status != "RUNNING":
            # The child ends when its parent did, but never before its own start nor after now.
            end = min(now, max(parent_end or now, run.info.start_time or 0))
            client.set_terminated(run.info.run_id, "KILLED", end_time=end)
            ended += 1
    return ended
