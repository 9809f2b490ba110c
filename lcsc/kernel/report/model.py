"""What the report says of one model (ModelReport), and the training-cost curves drawn from a
report's truncated trails."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import variants
from ..models import base_model, truncation
from .cost import cost_rows


@dataclass
class ModelReport:
    """What the report says of one model: its FIDs by variant and NFE, its search and history."""

    nfes: list[int]
    search_nfe: int
    results: dict[str, dict[int, float]]
    search: dict
    history: list[dict]
    trail: dict  # a truncated model's manifest (empty for a full one)
    grids: dict[str, Path]
    coefficients: dict[str, list[float]]  # each variant's over the trail (not the kept EMAs: files of their own)
    spread: dict[str, dict[int, tuple[float, int]]] = field(default_factory=dict)  # std and runs, with repeats
    # variant -> quality metric (lcsc.kernel.metrics.quality_metrics) -> NFE -> value
    quality: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    sampler: dict = field(default_factory=dict)  # the sampler's settings, as evaluate recorded them
    floor: dict = field(default_factory=dict)  # the data-vs-data floor, as evaluate measured it
    conditioning: dict = field(default_factory=dict)  # a class-conditional model's classes and labels


def kept(m: ModelReport, fraction: float) -> dict:
    """What a truncated trail keeps of its full run."""
    return {
        "fraction": fraction,
        "steps": m.trail["iterations"],
        "total": m.trail["truncated_from"]["iterations"],
        "checkpoints": len(m.trail["checkpoints"]),
    }


def cost_curves(report: dict[str, ModelReport]) -> dict[str, list[dict]]:
    """Each full model's training-cost rows (lcsc.kernel.report.cost_rows) over its truncated trails."""
    out = {}
    for model, full in report.items():
        if truncation(model) is not None or not {variants.LCSC, variants.LAST} <= set(full.results):
            continue
        parts = {
            truncation(t): {"results": m.results, "kept": kept(m, truncation(t))}
            for t, m in report.items()
            if truncation(t) is not None
            and base_model(t) == model
            and {variants.LCSC, variants.LAST} <= set(m.results)
        }
        if parts:
            out[model] = cost_rows(parts, full.results, full.search_nfe)
    return out
