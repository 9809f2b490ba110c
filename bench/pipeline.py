"""Where a whole run's time goes: runs the workflow once (Snakemake, a scratch results folder) and
prints, per rule, the seconds of its jobs split into interpreter start, imports (torch, the
stage, the config), MLflow (import, store, logging) and the stage's own work, with the share of
job time that is overhead.

    .venv/bin/python bench/pipeline.py                      # the default config, --cores all
    .venv/bin/python bench/pipeline.py --config config/x.yaml --cores 2 --set search.budget=40
    .venv/bin/python bench/pipeline.py --times /tmp/lcsc-pipeline/times.jsonl   # print a past run

Each job appends its phases to the file LCSC_JOB_TIMES names (lcsc/kernel/jobtime.py). The
figures depend on the machine's cores and load: compare runs on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

PHASES = ("start", "imports", "mlflow", "work")


def rule_of(stage: str, job: str) -> str:
    """The rule a job line belongs to: its MLflow run name up to the wildcards."""
    return (job or stage).split("[", 1)[0]


def _share(part: float, whole: float) -> float:
    return 100 * part / max(whole, 1e-9)


def table(lines: list[dict], wall: float | None) -> str:
    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for line in lines:
        row = rows[rule_of(line["stage"], line["job"])]
        row["jobs"] += 1
        for key in (*PHASES, "total"):
            row[key] += line[key]
    out = [
        "| rule | jobs | start s | imports s | MLflow s | work s | total s | overhead |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    totals: dict[str, float] = defaultdict(float)
    for rule, row in sorted(rows.items(), key=lambda kv: -kv[1]["total"]):
        for key, value in row.items():
            totals[key] += value
        over = row["start"] + row["imports"] + row["mlflow"]
        out.append(
            f"| {rule} | {int(row['jobs'])} | "
            + " | ".join(f"{row[k]:.1f}" for k in (*PHASES, "total"))
            + f" | {_share(over, row['total']):.0f}% |"
        )
    over = totals["start"] + totals["imports"] + totals["mlflow"]
    out.append(
        f"| **all** | {int(totals['jobs'])} | "
        + " | ".join(f"{totals[k]:.1f}" for k in (*PHASES, "total"))
        + f" | {_share(over, totals['total']):.0f}% |"
    )
    out.append("")
    out.append(
        f"Per-job overhead (start + imports + MLflow): {over:.1f} s of {totals['total']:.1f} s of job time "
        f"({_share(over, totals['total']):.1f}%)."
    )
    if wall is not None:
        out.append(
            f"Wall time of the whole run: {wall:.1f} s ({wall / 60:.1f} min); the overhead is "
            f"{_share(over, wall):.1f}% of it counted as if the jobs ran one after another."
        )
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="a config file (default: the Snakefile's, config/config.yaml)")
    p.add_argument("--results", type=Path, default=Path("/tmp/lcsc-pipeline"), help="scratch folder (emptied)")
    p.add_argument("--cores", default="all")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config key (dotted), e.g. search.budget=40"
    )
    p.add_argument("--times", type=Path, help="only print the table of this times file")
    args = p.parse_args(argv)
    if args.times:
        print(table([json.loads(x) for x in args.times.read_text().splitlines() if x.strip()], None))
        return 0
    shutil.rmtree(args.results, ignore_errors=True)
    args.results.mkdir(parents=True)
    times = args.results / "times.jsonl"
    cfg = yaml.safe_load(Path(args.config or "config/config.yaml").read_text()) or {}
    for item in [f"results_dir={args.results / 'results'}", *args.set]:  # dotted keys into the YAML
        key, _, value = item.partition("=")
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    (args.results / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake = Path(sys.executable).with_name("snakemake")
    command = [str(snakemake), "--cores", args.cores, "--configfile", str(args.results / "config.yaml")]
    env = dict(os.environ, LCSC_JOB_TIMES=str(times))
    start = time.time()
    with open(args.results / "snakemake.log", "w") as log:
        code = subprocess.call(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - start
    if code != 0:
        print(f"snakemake failed (exit {code}); see {args.results / 'snakemake.log'}", file=sys.stderr)
        return code
    import torch

    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}; command: {' '.join(command)}")
    print(table([json.loads(x) for x in times.read_text().splitlines() if x.strip()], wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
