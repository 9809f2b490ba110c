"""One writer per results folder: a Snakemake invocation holds `<results_dir>/<experiment>/lcsc.lock`
while it runs, so a second invocation on the same folder, from any working directory, refuses at
once instead of running the same jobs and deleting the first one's outputs when one of them fails.

The lock file records its holder (host, pid, the process's start time, invocation, working
directory). It is taken with an exclusive create, so two invocations starting together cannot
both get it. A lock whose process is gone from this host (SIGKILL, a crash, a reboot) is stale:
the next invocation takes it over with a warning. A lock held on another host cannot be checked
from here and is refused with its holder named. Jobs of the holding invocation carry its id in
LCSC_INVOCATION (locally, and into SLURM jobs, which export the driver's environment); a stage
run by hand with another id refuses to write while a live invocation holds the folder.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

from .errors import BusyError
from .paths import Layout
from .tracking import INVOCATION_ENV

LOCK_NAME = "lcsc.lock"
_HELD: dict[Path, str] = {}  # the locks this process holds: their token


def lock_path(cfg: dict) -> Path:
    return Layout.of(cfg).root / LOCK_NAME


def _start_time(pid: int) -> float | None:
    """When process `pid` started (to tell a reused pid from the holder), or None if unknown."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # no psutil, or no such process
        return None


def _holder(invocation: str) -> dict:
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "pid_started": _start_time(pid),
        "invocation": invocation,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cwd": os.getcwd(),
        "token": uuid.uuid4().hex,
    }


def read_holder(path: Path) -> dict | None:
    """The holder a lock file records; None if there is none, {} if the file is not a lock's."""
    try:
        holder = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else {}


def alive(holder: dict) -> bool:
    """Whether the process holding a lock may still run: any holder on another host (it cannot be
    checked from here), or its process on this host, with the same start time."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, another user's
        return True
    started, recorded = _start_time(pid), holder.get("pid_started")
    # A pid reused by another process shows another start time; where either is unknown (no psutil)
    # the holder counts as alive: a wrong takeover is worse than a refusal the user can clear.
    return started is None or recorded is None or abs(started - recorded) < 1.0


def describe(holder: dict, path: Path) -> str:
    return (
        f"{path}: the results folder is in use by invocation {holder.get('invocation')} (host "
        f"{holder.get('host')}, pid {holder.get('pid')}, since {holder.get('started')}, working directory "
        f"{holder.get('cwd')})"
    )


def acquire(cfg: dict, invocation: str) -> Path:
    """Take the results folder's lock for `invocation` (a stale one is taken over with a warning);
    BusyError naming the holder if a live invocation holds it. Released at exit, or by `release`."""
    path = lock_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = _holder(invocation)
    for _ in range(20):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_holder(path)
            if holder == {}:  # being written this instant, or damaged
                time.sleep(0.1)
                holder = read_holder(path)
            if holder is None:
                continue  # released meanwhile: try again
            if holder == {}:
                raise BusyError(
                    f"{path}: a lock file that is not lcsc's (damaged?); if no invocation runs on this "
                    "results folder, delete it and rerun"
                ) from None
            if alive(holder):
                raise BusyError(
                    describe(holder, path) + "; wait for it to end, or if it is gone (another host "
                    f"cannot be checked from here), delete {path}"
                ) from None
            print(
                f"lcsc: warning: {path}: taking over the lock of invocation {holder.get('invocation')} (pid "
                f"{holder.get('pid')} on this host, since {holder.get('started')}), whose process is gone",
                file=sys.stderr,
            )
            stale = path.with_name(f".{LOCK_NAME}.{me['token']}.stale")
            # Another invocation may take it over first.
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, stale)
                stale.unlink()
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh, indent=2)
            fh.write("\n")
        # Registered once, with the first lock: `release` handles every lock this process holds.
        if not _HELD:
            atexit.register(release)
        _HELD[path] = me["token"]
        return path
    raise BusyError(f"{path}: could not take the lock (other invocations keep taking it); rerun")


def release() -> None:
    """Remove every lock this process took, where it still holds it (its token is in the file)."""
    for path, token in list(_HELD.items()):
        holder = read_holder(path)
        # Only a lock that still carries this process's token: one taken over meanwhile (this process
        # was thought gone) belongs to another invocation now.
        if holder and holder.get("token") == token:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        del _HELD[path]


def check_writer(cfg: dict) -> None:
    """A stage may write to the results folder: no live invocation but its own holds the lock."""
    path = lock_path(cfg)
    holder = read_holder(path)
    if not holder or holder.get("invocation") == os.environ.get(INVOCATION_ENV) or not alive(holder):
        return
    raise BusyError(
        describe(holder, path) + "; a stage run by hand writes to it only when no workflow does: "
        "wait for that invocation to end"
    )
