"""One invocation of the workflow, from its start to its end: SIGINT and SIGTERM forwarded to the
jobs, the results folder's lock, the MLflow parent run, and the environment through which every
job learns its invocation and parent. The workflow's onstart, onsuccess and onerror handlers call
these; so does a workflow of your own that uses lcsc as a module (Snakemake runs only the main
Snakefile's handlers: docs/module.md)."""

from __future__ import annotations

import os

from .config import validate
from .interrupts import install_forwarding
from .lock import acquire, release
from .tracking import INVOCATION_ENV, PARENT_ENV, end_parent, new_invocation, start_parent


def start(config: dict) -> None:
    """Forward signals, take the results folder's lock, start the parent run; raises LcscError
    (another invocation holds the folder) with one line."""
    config = validate(config)
    install_forwarding()
    invocation = new_invocation()
    # One invocation writes to a results folder at a time (lcsc.kernel.lock): taken before the
    # parent run starts, so a refused invocation leaves no run behind.
    acquire(config, invocation)
    invocation, run_id = start_parent(config, invocation)
    os.environ[INVOCATION_ENV] = invocation
    # Never a parent inherited from an outer process: only this invocation's own.
    os.environ.pop(PARENT_ENV, None)
    if run_id:
        os.environ[PARENT_ENV] = run_id
        print(f"MLflow parent run {run_id} ({config['experiment']}, invocation {invocation})")


def end(config: dict, ok: bool) -> None:
    """End the parent run (FINISHED or FAILED) and release the lock."""
    end_parent(validate(config), os.environ.get(INVOCATION_ENV), os.environ.get(PARENT_ENV), ok=ok)
    release()
