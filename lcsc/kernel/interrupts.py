"""Stopping on SIGINT / SIGTERM: quickly, and leaving state a rerun resumes from.

A stage calls `install()` once at process start: SIGTERM (what SLURM, Snakemake and `kill` send)
then raises `Interrupted`, a KeyboardInterrupt, in the main thread, as Ctrl-C already does, so
`with StageRun(...)` marks the run KILLED, atomic writes remove their temp files and the search
journal is closed. A repeat of the signal in the first GRACE seconds is ignored (Ctrl-C reaches a
job both from the terminal and through Snakemake); a later one exits at once, as SIGKILL would,
which every stage also survives (temp files are removed by the rerun).

The Snakemake driver calls `install_forwarding()` in its `onstart` hook: Snakemake's local
executor, on SIGINT or SIGTERM to its own process, waits for the running jobs to finish, so the
handler first sends SIGTERM to every descendant `python -m lcsc` process, then does what
Snakemake's own handler does.
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import sys
import threading
import time

PROGRAM = "lcsc"  # the module and console script a stage runs as
GRACE = 3.0  # seconds in which a repeated signal is taken as the same interrupt
_first: float | None = None
_registered = False


class Interrupted(KeyboardInterrupt):
    """A stage stopped by SIGINT or SIGTERM."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def _handler(signum, frame) -> None:
    global _first
    now = time.monotonic()
    if _first is None:
        _first = now
        raise Interrupted(signum)
    if now - _first < GRACE:
        return  # the same interrupt, delivered twice
    print(f"lcsc: {signal.Signals(signum).name} again; stopping now", file=sys.stderr, flush=True)
    # os._exit, not sys.exit: no cleanup that could hang again; 130 is the shell's status for Ctrl-C.
    os._exit(130)


def _exit_quickly() -> None:
    """At exit after an interrupt: skip the interpreter's last garbage collection over everything
    torch, MLflow and co. allocated, which takes seconds (files are closed by then; atexit
    handlers registered after this one have run)."""
    if _first is not None:
        gc.freeze()


def install() -> None:
    """Make SIGINT and SIGTERM raise Interrupted in the main thread (no-op in other threads)."""
    global _first, _registered
    if threading.current_thread() is not threading.main_thread():
        return
    # Reset on every install: an earlier stage in the same process may have been interrupted.
    _first = None
    if not _registered:
        atexit.register(_exit_quickly)
        _registered = True
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Left alone where ignored (nohup, a shell's background job): whoever started the process asked
        # that these signals not stop it.
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _handler)


def _is_lcsc(cmdline: list[str]) -> bool:
    """`python -m lcsc ...` or the `lcsc` console script."""
    if any(a == "-m" and b == PROGRAM for a, b in zip(cmdline, cmdline[1:])):
        return True
    return len(cmdline) > 1 and os.path.basename(cmdline[1]) == PROGRAM


def _descendants_proc(pid: int) -> list[tuple[int, list[str]]]:
    """(pid, argv) of every descendant of `pid`, from /proc (when psutil is absent)."""
    children: dict[int, list[int]] = {}
    argv: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                # The command name in /proc/<pid>/stat is in parentheses and may itself hold spaces or ')':
                # the fields after the last ')' are the reliable ones.
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv[int(entry)] = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append((child, argv.get(child, [])))
            todo.append(child)
    return out


def _descendants(pid: int) -> list[tuple[int, list[str]]]:
    try:
        import psutil
    except ImportError:
        return _descendants_proc(pid)
    out = []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            out.append((proc.pid, proc.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def forward_to_children(signum: int = signal.SIGTERM) -> list[int]:
    """Send `signum` to every descendant process of this one that runs lcsc; their pids."""
    sent = []
    try:
        found = _descendants(os.getpid())
    except Exception as exc:  # never let the lookup stop the driver's own handling
        print(f"[lcsc] could not list the running jobs ({exc})", file=sys.stderr)
        return sent
    for pid, cmdline in found:
        if _is_lcsc(cmdline):
            try:
                os.kill(pid, signum)
                sent.append(pid)
            except OSError:  # it ended meanwhile
                pass
    return sent


def install_forwarding() -> None:
    """For the Snakemake driver (its main process, in `onstart`): on SIGINT or SIGTERM, send SIGTERM
    to every running `lcsc` job, then call the handler that was there before."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        # Installed once: a second call would wrap the forwarding handler in itself.
        if previous is signal.SIG_IGN or getattr(previous, "_lcsc_forwarding", False):
            continue

        # `previous` bound as a default argument: a plain closure would see the loop's last value.
        def handler(signum, frame, previous=previous):
            forward_to_children(signal.SIGTERM)
            if callable(previous):
                previous(signum, frame)
            elif previous in (signal.SIG_DFL, None):
                # What the default action would do: KeyboardInterrupt for SIGINT, else die of the signal
                # itself, so that the exit status says which.
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        handler._lcsc_forwarding = True
        signal.signal(sig, handler)
