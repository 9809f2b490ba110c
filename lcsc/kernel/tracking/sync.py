"""`lcsc mlflow-sync`: every recorded run that the store lacks or holds in part, logged from its
record; and the deferred short jobs of an invocation (mlflow.defer), logged when it ends."""

from __future__ import annotations

import fcntl
import json
import sys
import time
from pathlib import Path

from .client import end_orphan_runs, experiment_id, find_all, log_params, register, store_client
from .names import COMPLETE, display_name, experiment_name, tracking_uri
from .records import end_orphan_records, records_dir, write_record


def sync(cfg: dict, any_store: bool = False) -> dict[str, int]:
    """Log every run recorded under the experiment's `tracking/` folder that the store lacks or
    holds only in part. Complete runs are left alone (but re-attached to their parent if needed),
    so a second sync changes nothing. A child logged in part is replaced (duplicates of one
    record, e.g. from an HTTP retry, are removed); a parent is completed in place, since its
    children point to it. Records meant for another store are skipped unless `any_store`."""
    folder = records_dir(cfg)
    # Jobs killed before they could end their records: KILLED, not RUNNING.
    end_orphan_records(cfg)
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
            # Looked up only to raise KeyError (or TypeError) for a record without them.
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
    client = store_client(cfg)
    exp_id = experiment_id(client, cfg)
    parents: dict[str, str] = {}
    with open(folder / ".sync.lock", "w") as lock:
        # Two syncs at once would both create a missing run.
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Parents first, so their run ids are known when their children are logged.
        for path, record in sorted(loaded, key=lambda r: r[1]["parent_key"] is not None):
            try:
                _sync_one(client, exp_id, record, parents, counts)
                _sync_registrations(client, path, record, parents.get(record["key"]), counts)
            except Exception as exc:  # one bad request must not stop the others
                print(f"[lcsc] {record['name']}: {exc}", file=sys.stderr)
                counts["failed"] += 1
        # Runs of killed jobs (no record, or logged before it) under parents that have ended.
        try:
            counts["killed"] = end_orphan_runs(client, exp_id)
        except Exception as exc:
            print(f"[lcsc] could not end the runs of killed jobs: {exc}", file=sys.stderr)
            counts["failed"] += 1
    return counts


def _sync_registrations(client, path: Path, record: dict, run_id: str | None, counts: dict[str, int]) -> None:
    """The model registrations a job recorded but could not make (export.register while the store
    was down): made now, against the job's run, and marked done in its record."""
    pending = [r for r in record.get("registrations", []) if isinstance(r, dict) and r.get("version") is None]
    # Only a job that finished has its model registered: a failed or killed job's export is not
    # one to publish.
    if not pending or run_id is None or record["status"] != "FINISHED":
        return
    for entry in pending:
        entry["version"] = register(client, run_id, entry["name"], entry["folder"])
        print(f"[lcsc] {record['name']}: registered as {entry['name']} version {entry['version']}")
        counts["registered"] += 1
    write_record(path, record)


def _sync_one(client, exp_id: str, record: dict, parents: dict[str, str], counts: dict[str, int]) -> None:
    found = find_all(client, exp_id, record["key"])
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
        log_params(client, run_id, record["params"])
        if record["status"] != "RUNNING":
            client.set_terminated(run_id, record["status"], end_time=record["end_time"])
            client.set_tag(run_id, "lcsc.logged", COMPLETE)
            counts["completed"] += 1
        parents[record["key"]] = run_id
        return
    for partial in found:  # a child logged in part: replace it with the whole record
        client.delete_run(partial.info.run_id)
    counts["replaced" if found else "created"] += 1
    parents[record["key"]] = log_record(client, exp_id, record, parent_id)


def log_record(client, exp_id: str, record: dict, parent_id: str | None) -> str:
    from mlflow.entities import Metric

    tags = dict(record["tags"])
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    else:
        tags.pop("mlflow.parentRunId", None)
    name = record["name"] if record["key"].endswith("/parent") else display_name(record["name"], record["invocation"])
    run = client.create_run(exp_id, run_name=name, tags=tags, start_time=record["start_time"])
    rid = run.info.run_id
    log_params(client, rid, record["params"])
    metrics = [Metric(*m) for m in record["metrics"]]
    # MLflow takes at most 1000 metrics in one log_batch request.
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


def log_deferred(client, cfg: dict, invocation: str, parent_id: str) -> None:
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
        except Exception as exc:
            # The others still go; `lcsc mlflow-sync` retries this one.
            print(f"[lcsc] {path}: not logged to MLflow ({exc}); `lcsc mlflow-sync` logs it later", file=sys.stderr)
    logged = counts["created"] + counts["replaced"]
    if logged:
        print(f"[lcsc] logged {logged} short jobs' runs to MLflow ({time.monotonic() - start:.1f} s; mlflow.defer)")
