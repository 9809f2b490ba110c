"""The files a stage's job reads that depend on the config, named once: the workflow's rules
(workflow/rules/common.smk) and the command line's defaults (lcsc.cli) both call these, so a job
run by hand reads what the same job reads under Snakemake."""

from __future__ import annotations

from pathlib import Path

from . import variants
from .models import search_nfe
from .paths import Layout, reference_source


def search_results(cfg: dict, layout: Layout, model: str) -> list[Path]:
    """The coefficients.json of each of the model's search.repeats searches, the first one the
    search.seed's."""
    nfe = search_nfe(cfg, model)
    return [layout.coefficients(model, nfe, r) for r in range(cfg["search"]["repeats"])]


def card_variants(cfg: dict, model: str, variant: str) -> list[str]:
    """The variants whose evaluations an export's model card shows: its own, last's and the kept EMAs'."""
    kept = [v for v in variants.names(cfg, model) if variants.source(v) == variants.TRAIL]
    return list(dict.fromkeys([variant, variants.LAST, *kept]))


def report_inputs(cfg: dict, layout: Layout, models: list[str], shown=None) -> dict[str, list[Path] | Path]:
    """What the report reads, in the order of `models` (the report's order): every model's trail,
    first search and its history, and the evaluation and sample grid of each variant (of `shown`,
    where given), with the grid of reference images."""
    pairs = [(m, v) for m in models for v in variants.names(cfg, m) if not shown or v in shown]
    return {
        "manifests": [layout.manifest(m) for m in models],
        "searches": [layout.coefficients(m, search_nfe(cfg, m)) for m in models],
        "histories": [layout.history(m, search_nfe(cfg, m)) for m in models],
        "evaluations": [layout.eval_json(m, v) for m, v in pairs],
        "grids": [layout.eval_grid(m, v) for m, v in pairs],
        "real": layout.real_grid(*reference_source(cfg)),
    }
