"""`python -m lcsc.launch N <stage> ...`: `lcsc <stage> ...` on N processes of this node, through
torch's own launcher (torchrun --standalone), as the training rules run it when `train.gpus` is
above 1. It adds what a user of lcsc expects around the launcher: one line and exit code 130 on
Ctrl-C or SIGTERM (the stage resumes when run again), and a failed process's exit code with one
line saying which, instead of the launcher's traceback and report (each process has already
printed its own one-line error)."""

from __future__ import annotations

import os
import re
import sys


def _interrupted(stage: str, processes: str, how: str = "") -> int:
    print(f"lcsc {stage}: interrupted{how} on {processes} processes; rerun the same command to resume",
          file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or not re.fullmatch(r"[0-9]+", argv[0]) or int(argv[0]) < 1:
        print("usage: python -m lcsc.launch <processes> <lcsc stage> [arguments...]", file=sys.stderr)
        return 2
    processes, stage = str(int(argv[0])), argv[1]
    try:
        from torch.distributed import run as torchrun
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    except KeyboardInterrupt:
        return _interrupted(stage, processes)
    # each process sets its own torch threads (--threads over the processes); this only keeps the
    # launcher from warning that it chose 1
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = torchrun.parse_args(["--standalone", "--nproc-per-node", processes, "-m", "lcsc", *argv[1:]])
    try:
        torchrun.run(args)
    except SignalException as exc:
        return _interrupted(stage, processes, f" (signal {int(exc.sigval)})")
    except KeyboardInterrupt:
        return _interrupted(stage, processes)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()  # the first to fail; the others may have failed with it
        if failure.exitcode == 130:  # it was interrupted (and said so)
            return _interrupted(stage, processes)
        code = failure.exitcode if failure.exitcode > 0 else 1  # a negative code: killed by a signal
        how = f"exit code {failure.exitcode}" if failure.exitcode >= 0 else f"killed by signal {-failure.exitcode}"
        print(f"lcsc {stage}: training process {rank} of {processes} failed ({how}); its message is above",
              file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
