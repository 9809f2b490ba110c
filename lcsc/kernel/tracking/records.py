"""Every run's record on disk (`<results>/<experiment>/tracking/<invocation>/<name>.json`): written
when a job starts and ends, whatever MLflow does, and what `lcsc mlflow-sync` logs from."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from pathlib import Path

from ..config import flatten
from ..io import write_json
from .names import experiment_name, tracking_uri


def records_dir(cfg: dict) -> Path:
    return Path(cfg["results_dir"]) / cfg["experiment"] / "tracking"


def record_path(cfg: dict, invocation: str, name: str) -> Path:
    # A run's name holds wildcard values: anything outside this set becomes _, so that the name
    # stays one plain file name.
    return records_dir(cfg) / invocation / (re.sub(r"[^A-Za-z0-9._=,\[\]@-]", "_", name) + ".json")


def write_record(path: Path, record: dict) -> None:
    try:
        write_json(path, record)
    except Exception as exc:
        # The stage's own results are already written; say so and go on.
        print(f"[lcsc] could not write the tracking record {path}: {exc}", file=sys.stderr)


def destination(cfg: dict) -> dict:
    """Where a record was meant to be logged: sync logs it there only."""
    return {"tracking_uri": tracking_uri(cfg), "experiment": experiment_name(cfg)}


def new_record(
    cfg: dict, invocation: str, name: str, parent_key: str | None, tags: dict, params: dict, key: str | None = None
) -> dict:
    """A run's record as it starts: what MLflow gets, kept on disk whatever MLflow does. Its key is
    `<invocation>/<key>` (`key`: the name unless given) and its tags add the invocation, the key
    and the process that owns the run."""
    key = f"{invocation}/{key or name}"
    return {
        "key": key,
        "invocation": invocation,
        "name": name,
        "parent_key": parent_key,
        "tags": {**tags, "lcsc.invocation": invocation, "lcsc.run_key": key, **owner_tags()},
        "params": flatten(params),
        "metrics": [],
        "artifacts": [],
        "status": "RUNNING",
        "start_time": int(time.time() * 1000),
        "end_time": None,
        **(destination(cfg) if cfg["mlflow"]["enabled"] else {}),
    }


def owner_tags() -> dict[str, str]:
    """Tags naming the process that keeps a run RUNNING: when it is gone, so is the run."""
    return {"lcsc.host": socket.gethostname(), "lcsc.pid": str(os.getpid())}


def owner_gone(tags: dict) -> bool:
    """True when the run's process ran on this host and no longer exists (SIGKILL, OOM, a reboot).
    A run from another host (a cluster node) is judged by its parent instead."""
    if tags.get("lcsc.host") != socket.gethostname():
        return False
    try:
        pid = int(tags["lcsc.pid"])
        if pid == os.getpid():
            return False
        # Signal 0 only asks whether the process exists; nothing is sent to it.
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (KeyError, ValueError, OSError):
        # No owner recorded, or alive under another user (kill then fails with a permission error).
        return False
    return False


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
        # The parent first: what happens to the others depends on its status.
        for path in sorted(inv.glob("*.json"), key=lambda p: p.name != "parent.json"):
            try:
                text = path.read_text()
                # Only a RUNNING record can change, so the rest are not even parsed (the parent always is).
                if '"RUNNING"' not in text and path.name != "parent.json":
                    continue
                records[path] = json.loads(text)
            except (OSError, ValueError):
                continue
        parent = records.get(inv / "parent.json")
        for path, record in records.items():
            if record.get("status") != "RUNNING":
                continue
            if owner_gone(record.get("tags", {})):
                record.update(status="KILLED", end_time=now)
            elif path.name != "parent.json" and parent is not None and parent.get("status") != "RUNNING":
                # A job still RUNNING under an invocation that has ended was killed with it, also on another
                # host, where its pid says nothing.
                record.update(status="KILLED", end_time=parent.get("end_time") or now)
            else:
                continue
            write_record(path, record)
            ended += 1
    return ended
