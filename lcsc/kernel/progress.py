"""Progress bars that stay readable in a terminal and in a Snakemake/SLURM log file."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress(total: int, desc: str, initial: int = 0) -> tqdm:
    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=interactive,
                mininterval=0.5 if interactive else 10.0, file=sys.stderr)
