"""Progress bars that stay readable in a terminal and in a Snakemake/SLURM log file."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress(total: int, desc: str, initial: int = 0, stream=None, quiet: bool = False) -> tqdm:
    """A bar on stderr, or on `stream` (stdout for work whose errors come while the bar runs, so
    that stderr holds the one error line alone); none with `quiet` (a training rank but the first)."""
    stream = stream or sys.stderr
    interactive = stream.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        dynamic_ncols=interactive,
        mininterval=0.5 if interactive else 10.0,
        file=stream,
        disable=quiet,
    )
