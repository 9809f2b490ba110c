"""Where a job's wall time goes, for bench/pipeline.py: the interpreter's start (Python and the
`lcsc` command's own imports), the stage's imports (torch and the stage modules), MLflow (its
import, the store and every logging call) and the stage's own work.

A job appends one JSON line to the file named by LCSC_JOB_TIMES when it ends (nothing without
it). The interpreter's start is measured from the process's start time as the kernel records it
(Linux); elsewhere that phase reads 0 and its seconds count as the command's imports.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

ENV = "LCSC_JOB_TIMES"
_marks: dict[str, float] = {}
_mlflow = [0.0]
_job = {"name": ""}


def name_job(name: str) -> None:
    """The job's name, as its MLflow run is named (`evaluate[model=dm,variant=lcsc]`)."""
    _job["name"] = name


def process_start() -> float | None:
    """The wall-clock time this process started (Linux's /proc), or None."""
    try:
        with open("/proc/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks
        with open("/proc/stat") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def begin() -> None:
    """A command starts (again, for an in-process caller): its phases count from here."""
    _marks.clear()
    _mlflow[0] = 0.0
    _job["name"] = ""
    mark("main")


def mark(name: str) -> None:
    """The time a phase ends: `main` (the command starts), `setup` (its stage is imported and its
    config read: the job's MLflow run is made)."""
    _marks.setdefault(name, time.time())


@contextlib.contextmanager
def mlflow():
    """Count the time inside as MLflow's (importing it, opening the store, logging)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _mlflow[0] += time.perf_counter() - start


def phases(end: float | None = None) -> dict[str, float]:
    """Seconds of each phase so far: start, imports, mlflow, work, total."""
    end = end or time.time()
    main = _marks.get("main", end)
    begin = process_start() or main
    setup = _marks.get("setup", main)
    total = end - begin
    start, imports, mlflow_s = main - begin, setup - main, _mlflow[0]
    return {
        "start": start,
        "imports": imports,
        "mlflow": mlflow_s,
        "work": max(0.0, total - start - imports - mlflow_s),
        "total": total,
    }


def write(stage: str, code: int) -> None:
    """Append this job's phases to the LCSC_JOB_TIMES file, where that is set."""
    path = os.environ.get(ENV)
    if not path:
        return
    with contextlib.suppress(OSError), open(path, "a") as fh:
        fh.write(json.dumps({"stage": stage, "job": _job["name"] or stage, "exit": code, **phases()}) + "\n")
