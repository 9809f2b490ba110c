"""Each rule's time and memory in a finished run, from the files its jobs' `benchmark:` directives
wrote (results/<experiment>/benchmarks/<rule>/<job>.tsv: Snakemake measures the job's wall
seconds, CPU seconds and peak resident memory). It runs nothing; it reads a run that happened.

    .venv/bin/python bench/rule_times.py                            # results/digits-default
    .venv/bin/python bench/rule_times.py results/my-experiment --markdown

The figures depend on the machine, its load and `--cores` (jobs run side by side share the cores):
compare runs on the same machine.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path


def read(folder: Path) -> dict[str, list[dict[str, float]]]:
    """rule -> one row per job: s (wall seconds), cpu_time (seconds) and max_rss (MB)."""
    rules: dict[str, list[dict[str, float]]] = defaultdict(list)
    for path in sorted(folder.glob("*/*.tsv")):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        for row in rows:
            rules[path.parent.name].append({k: _number(row.get(k)) for k in ("s", "cpu_time", "max_rss")})
    return rules


def _number(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):  # "NA" where Snakemake could not measure it
        return float("nan")


def table(rules: dict[str, list[dict[str, float]]], markdown: bool) -> str:
    head = ("rule", "jobs", "wall s (sum)", "wall s (longest)", "CPU s (sum)", "peak RSS MB (largest)")
    lines = []
    order = sorted(rules, key=lambda r: -sum(j["s"] for j in rules[r]))
    for rule in order:
        jobs = rules[rule]
        lines.append(
            (
                rule,
                str(len(jobs)),
                f"{sum(j['s'] for j in jobs):.1f}",
                f"{max(j['s'] for j in jobs):.1f}",
                f"{sum(j['cpu_time'] for j in jobs):.1f}",
                f"{max(j['max_rss'] for j in jobs):.0f}",
            )
        )
    if markdown:
        return "\n".join(
            ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)] + ["| " + " | ".join(r) + " |" for r in lines]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in [head, *lines])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", default="results/digits-default", help="a run's results/<experiment>")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = parser.parse_args(argv)
    folder = Path(args.run) / "benchmarks"
    rules = read(folder)
    if not rules:
        print(f"bench/rule_times.py: {folder}: no benchmark files (has the run finished a job?)", file=sys.stderr)
        return 1
    print(table(rules, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
