"""`python -m lcsc.launch N <stage> ...`: `lcsc <stage> ...` on N processes of this node, as the
training rules run it when `train.gpus` is above 1 (lcsc.kernel.distributed reads the ranks from
the environment that torchrun would set).

Before it starts anything, it checks the stage's arguments and config once (one line on failure,
not N) and N against the node: the GPUs torch sees, or the CPU cores for gloo processes. It then
starts the N processes; the first one prints to the terminal, the others into files that are
shown only when one of them is the process that failed. It ends with one line and exit code 130
on Ctrl-C or SIGTERM (the stage resumes when run again), or with the failed process's exit code
and one line saying which. No process it started outlives it: on any exit, every child still
running is killed, and each child is killed by the kernel should the launcher die first.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies
# Seconds the other processes get to end on their own after one failed.
FAILURE_GRACE = 5.0
# Seconds the processes get to unwind after Ctrl-C or SIGTERM before SIGKILL.
STOP_GRACE = 60.0
# The last lines of a failed process's output shown, when it is not the first one's.
REPLAY_LINES = 60


def _interrupted(stage: str, processes: int, how: str = "") -> int:
    print(
        f"lcsc {stage}: interrupted{how} on {processes} processes; rerun the same command to resume", file=sys.stderr
    )
    return 130


def _die_with_parent():
    """preexec_fn of each child: SIGKILL when the launcher dies, however it dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)

    def set_signal():
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return set_signal if sys.platform.startswith("linux") else None


def _free_port() -> int:
    with socket.socket() as s:
        # Port 0: the kernel picks a free port. It is closed again before rank 0 binds it, so another
        # program could take it in between; on one node that is rare enough.
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capacity(device) -> tuple[int, str]:
    """How many training processes this node runs for `device`: one per visible GPU, or one per
    CPU core for gloo processes on the CPU."""
    if device.type == "cuda":
        import torch

        return torch.cuda.device_count(), "GPUs torch sees"
    # The cores this process may run on (a SLURM or taskset limit), not all of the machine's.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores, "CPU cores for gloo processes"


class Launch:
    """N processes of one stage, started, watched and ended together."""

    def __init__(self, processes: int, argv: list[str]):
        self.n, self.argv, self.stage = processes, argv, argv[0]
        self.procs: list[subprocess.Popen] = []
        # Each process's output file (None for the first one: the terminal).
        self.logs: list = []
        self.ended: dict[int, float] = {}  # rank -> when it was seen to end
        self.killed: set[int] = set()  # ranks this launcher killed
        self.signal: int | None = None

    def _on_signal(self, signum, frame) -> None:
        if self.signal is None:
            self.signal = signum
        # A terminal's Ctrl-C reached them already; SIGTERM from a scheduler did not.
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    def start(self) -> None:
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
            WORLD_SIZE=str(self.n),
            LOCAL_WORLD_SIZE=str(self.n),
        )
        # N processes each with a thread per core would oversubscribe the node: one thread unless the
        # user says otherwise; each process sets its own share of --threads.
        env.setdefault("OMP_NUM_THREADS", "1")
        preexec = _die_with_parent()
        for rank in range(self.n):
            log = None if rank == 0 else tempfile.TemporaryFile()
            self.logs.append(log)
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "lcsc", *self.argv],
                    env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
                    stdout=log,
                    stderr=subprocess.STDOUT if log else None,
                    preexec_fn=preexec,
                )
            )

    def wait(self) -> None:
        """Until every process ended: after a failure or a signal, the rest get a grace period
        to end on their own, then SIGKILL."""
        deadline = None
        while len(self.ended) < len(self.procs):
            for rank, p in enumerate(self.procs):
                if rank not in self.ended and p.poll() is not None:
                    self.ended[rank] = time.monotonic()
            failed = any(self.procs[r].returncode != 0 for r in self.ended)
            if deadline is None and (failed or self.signal is not None):
                deadline = time.monotonic() + (STOP_GRACE if self.signal is not None else FAILURE_GRACE)
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
            time.sleep(0.05)

    def kill(self) -> None:
        for rank, p in enumerate(self.procs):
            if p.poll() is None:
                p.kill()
                self.killed.add(rank)
        for p in self.procs:
            p.wait()

    def report(self) -> int:
        """The exit code, after one line saying how the launch ended."""
        codes = {r: p.returncode for r, p in enumerate(self.procs)}
        if self.signal is not None:
            return _interrupted(self.stage, self.n, f" (signal {self.signal})" if self.signal != signal.SIGINT else "")
        failed = [r for r, c in codes.items() if c != 0 and r not in self.killed]
        if not failed:
            return 0
        if all(codes[r] == 130 for r in failed):  # interrupted (each said so)
            return _interrupted(self.stage, self.n)
        # the one to name: an expected failure (exit code 2, one line) before a crash that may be its
        # consequence; the first process whenever it failed too (its message is on the terminal already)
        pool = [r for r in failed if codes[r] == 2] or failed
        first = 0 if 0 in pool else min(pool, key=lambda r: (self.ended[r], r))
        if first != 0:
            log = self.logs[first]
            log.seek(0)
            lines = log.read().decode(errors="replace").splitlines()[-REPLAY_LINES:]
            print("\n".join(lines), file=sys.stderr)
        code = codes[first]
        how = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        print(
            f"lcsc {self.stage}: training process {first} of {self.n} failed ({how}); its message is above",
            file=sys.stderr,
        )
        # A process killed by a signal has a negative return code, which is no exit status: 1 instead.
        return code if code > 0 else 1

    def close(self) -> None:
        """Nothing this launch started outlives it."""
        self.kill()
        for log in self.logs:
            if log is not None:
                log.close()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or not re.fullmatch(r"[0-9]{1,6}", argv[0]) or int(argv[0]) < 1:
        print("usage: python -m lcsc.launch <processes> <lcsc stage> [arguments...]", file=sys.stderr)
        return 2
    processes, stage = int(argv[0]), argv[1]
    launch = Launch(processes, argv[1:])
    # a signal ignored from the start (nohup, a script's background job) stays ignored, as in the processes
    previous = {
        sig: signal.signal(sig, launch._on_signal)
        for sig in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        from .cli import preflight
        from .kernel.devices import resolve_device

        cfg, code = preflight(argv[1:])
        if cfg is None:
            return code
        available, what = capacity(resolve_device(cfg, quiet=True))
        if processes > available:
            print(
                f"lcsc {stage}: train.gpus: {processes} training processes, but this node has {available} "
                f"{what}; use at most {available}, or run on a node with more",
                file=sys.stderr,
            )
            return 2
        # Checked again before starting: a Ctrl-C during the (slow) preflight must not start N processes.
        if launch.signal is not None:
            return _interrupted(stage, processes)
        try:
            launch.start()
        except OSError as exc:
            print(
                f"lcsc {stage}: could not start training process {len(launch.procs)} of {processes} "
                f"({exc.strerror or exc}); the {len(launch.procs)} started are stopped: free the resources "
                "(processes, memory) or use fewer (train.gpus)",
                file=sys.stderr,
            )
            return 2
        launch.wait()
        return launch.report()
    except KeyboardInterrupt:  # a signal before the handlers were in place
        return _interrupted(stage, processes)
    finally:
        launch.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
