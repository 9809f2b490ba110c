"""The report's tables: FID by variant and NFE, the quality metrics, the coefficients."""

from __future__ import annotations

import math

from .. import metrics
from .common import best_baselines, fmt
from .noise import Spread


def markdown_table(results: dict[str, dict[int, float]], nfes: list[int], spread: Spread | None = None) -> str:
    """Variant x NFE table: the best value of each column in bold, the best baseline marked †;
    with `spread`, each mean followed by ± its standard deviation over the runs."""
    best = {n: min(r[n] for r in results.values()) for n in nfes}
    base = best_baselines(results, nfes)
    lines = [
        "| variant | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "| --- | " + " | ".join("---:" for _ in nfes) + " |",
    ]
    for v, r in results.items():
        cells = []
        for n in nfes:
            cell = f"**{fmt(r[n])}**" if r[n] == best[n] else fmt(r[n])
            if spread and n in spread.get(v, {}):
                cell += f" ± {fmt(spread[v][n][0])}"
            cells.append(cell + (" †" if base.get(n) == v else ""))
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def quality_table(quality: dict[str, dict[str, dict[int, float]]], nfes: list[int]) -> str:
    """Variant x NFE table of each quality metric of lcsc.kernel.metrics (KID, precision and recall,
    k = 3), each value as its metric formats it."""
    shown = metrics.quality_metrics()
    header = " / ".join(m.short for m in shown)
    lines = [
        "| variant | " + " | ".join(f"NFE {n}: {header}" for n in nfes) + " |",
        "| --- | " + " | ".join("---:" for _ in nfes) + " |",
    ]
    for v, q in quality.items():
        cells = [" / ".join(m.text(q[m.name][n]) for m in shown) for n in nfes]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def coefficient_stats(coefficients: dict[str, list[float]]) -> str:
    """Sum, L2 norm and largest magnitude of each variant's coefficients over the trail."""
    lines = [
        "| variant | sum | L2 norm | largest abs coefficient | negative coefficients |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for v, c in coefficients.items():
        norm = math.sqrt(sum(x * x for x in c))
        lines.append(
            f"| {v} | {sum(c):.3f} | {norm:.3f} | {max(abs(x) for x in c):.3f} | "
            f"{sum(1 for x in c if x < 0)} of {len(c)} |"
        )
    return "\n".join(lines)
