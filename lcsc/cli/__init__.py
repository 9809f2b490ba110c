"""Command line: `python -m lcsc <stage> ...`, the same in a terminal, a rule, a conda env or a
SLURM job. It parses arguments into a stage's `Paths` record and calls the stage's `run`; paths
default to the results layout, so `lcsc search --config my.yaml` works alone.

Each command imports its stage inside its function: the report's env has no torch, and
`lcsc tabulate` must not import the stages that need it.
The package: `commands` (one per stage), `parser` (their flags) and `errors` (failures as one
line); `main` runs one command."""

from __future__ import annotations

import signal
import sys

from ..kernel import jobtime
from ..kernel.interrupts import install
from ..kernel.lock import check_writer
from .commands import _config
from .errors import _guarded
from .parser import COMMANDS, _ArgumentError, build_parser

__all__ = ["COMMANDS", "build_parser", "main", "preflight"]


def main(argv: list[str] | None = None) -> int:
    """Run one stage. Every expected failure (a bad config value, argument or file) is one line on
    stderr, `lcsc <stage>: <file or key>: <what is wrong>; <what to do>`, and exit code 2; an
    interrupt (Ctrl-C, SIGTERM) exits with 130 and the stage resumes when run again. Any other
    exception is a bug and keeps its traceback."""
    jobtime.begin()
    saved = [(sig, signal.getsignal(sig)) for sig in (signal.SIGINT, signal.SIGTERM)]
    install()  # SIGTERM, as Ctrl-C, raises KeyboardInterrupt in the stage: it unwinds, closing its files and run
    code = 2
    try:
        code = _run(argv)
        return code
    finally:  # an in-process caller (a test, a notebook) gets its own handlers back
        jobtime.write(next((a for a in (argv or sys.argv[1:]) if not a.startswith("-")), "lcsc"), code)
        for sig, handler in saved:
            if handler is not None:
                signal.signal(sig, handler)


def _parse(argv: list[str] | None):
    """The parsed arguments, or the exit code 2 after one line on stderr."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise _ArgumentError(
                f"lcsc {args.stage}", f"unrecognized arguments: {' '.join(extra)}; see lcsc {args.stage} --help"
            )
    except _ArgumentError as exc:
        print(f"{exc.prog}: {exc}", file=sys.stderr)
        return 2
    return args


def _run(argv: list[str] | None) -> int:
    args = _parse(argv)
    if isinstance(args, int):
        return args
    return _guarded(f"lcsc {args.stage}", lambda: args.func(args))


def preflight(argv: list[str]) -> tuple[dict | None, int]:
    """What lcsc.launch checks once before it starts N copies of a stage: the arguments and the
    config (printed as one line on failure, as `main` would, but once). (config, 0) or (None, code)."""
    args = _parse(argv)
    if isinstance(args, int):
        return None, args
    found: dict = {}

    def check() -> None:
        found["cfg"] = _config(args, warn=False)  # each process prints the warnings once more
        check_writer(found["cfg"])

    code = _guarded(f"lcsc {args.stage}", check)
    return (found["cfg"] if code == 0 else None), code
