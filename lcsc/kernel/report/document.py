"""summary.md: the report's markdown, section by section, from each model's ModelReport."""

from __future__ import annotations

from pathlib import Path

from .. import metrics, variants
from ..models import base_model, for_model, nfe_list, truncation
from ..paths import COST_CURVE, feature_tag
from .claims import claims, consistency_claim, monotone_claim, sampler_line, versus_best_baseline
from .common import TITLES, fmt
from .cost import cost_claim, cost_curve_claim, cost_table
from .model import ModelReport, cost_curves, kept
from .noise import Noise, noise_line, significance_claim
from .savings import nfe_saving_claim, nfe_saving_table, nfe_savings
from .tables import coefficient_stats, markdown_table, quality_table

VARIANT_NAMES = (
    "Variants: `last`; `ema_<decay>`, the EMA kept during training; "
    "`uniform`; `lawa_<k>`, the average of the last k checkpoints; `ema_<decay>_profile`, that EMA "
    "computed afterwards from the sparse trail; `power_<sigma_rel>`, EDM2's post-hoc power-function "
    "EMA; `greedy_soup`; `lcsc`, the searched combination."
)


def markdown(
    cfg: dict, report: dict[str, ModelReport], grids: list[Path], compared: dict[str, Path] | None = None
) -> str:
    """The whole summary.md: the header, a section per model, the training cost, the pictures."""
    md = _header(cfg, report)
    for model, m in report.items():
        md += _model_section(model, m, report)
    md += _cost_section(report)
    md += _pictures(grids, compared)
    return "\n".join(md) + "\n"


def search_targets(cfg: dict, report: dict[str, ModelReport]) -> str:
    """Each model's search NFEs and sample count, as its own config has them ("dm NFE 5, 800 samples")."""
    out = []
    for model in report:
        s = for_model(cfg, model)["search"]
        out.append(f"{model} NFE {' and '.join(map(str, nfe_list(s['nfe'])))}, {s['samples']} samples")
    return "; ".join(out)


def _header(cfg: dict, report: dict[str, ModelReport]) -> list[str]:
    ecfg = cfg["evaluate"]
    md = [
        f"# LCSC report: {cfg['experiment']}",
        "",
        f"FID ({feature_tag(cfg['features'])} features) of {ecfg['samples']} samples "
        f"per cell, evaluation seed {ecfg['seed']}; the search scored candidates with seed "
        f"{cfg['search']['seed']} at each model's search NFEs and samples ({search_targets(cfg, report)}). "
        "Lower is better; the best value of each column is in bold, and † marks the best baseline "
        f"(every variant but lcsc). {VARIANT_NAMES}",
        "",
    ]
    repeats = (cfg["search"].get("repeats", 1), ecfg.get("repeats", 1))
    if repeats != (1, 1):
        md += [
            f"Each cell is the mean ± standard deviation over {repeats[1]} evaluation seed(s), and for lcsc over "
            f"{repeats[0]} independent search(es) (search.repeats) times those seeds.",
            "",
        ]
    return md


def _model_section(model: str, m: ModelReport, report: dict[str, ModelReport]) -> list[str]:
    """A model's table, its claims and search, and what else its evaluations measured."""
    title = TITLES.get(base_model(model), "") if truncation(model) is None else " (training-cost experiment)"
    md = [f"## {model}{title}", "", markdown_table(m.results, m.nfes, m.spread), ""]
    md += [f"- {line}" for line in [*_claim_lines(model, m, report), search_line(m)]] + [""]
    if m.sampler:
        md += [f"Samples of every variant: {sampler_line(m.sampler)}.", ""]
    if m.conditioning:
        md += [
            f"Class-conditional ({m.conditioning.get('num_classes')} classes): every variant's samples have "
            f"{m.conditioning.get('labels')}, drawn from each seed with its noise; the FID is against the "
            "whole data set's statistics, as ADM and EDM measure it.",
            "",
        ]
    if m.quality:
        md += [quality_sentence(metrics.quality_metrics()), "", quality_table(m.quality, m.nfes), ""]
    if truncation(model) is None and variants.LCSC in m.results and len(m.results) > 1:
        md += [
            "NFE at which LCSC reaches the best baseline's FID at each evaluated NFE (FID read as linear in "
            "log NFE between evaluated NFEs; `at most`: already reached at the smallest one):",
            "",
            nfe_saving_table(nfe_savings(m.results, m.nfes)),
            "",
        ]
    if m.coefficients:
        md += ["Coefficients over the trail:", "", coefficient_stats(m.coefficients), ""]
    return md


def _claim_lines(model: str, m: ModelReport, report: dict[str, ModelReport]) -> list[str]:
    """The claims under a model's table: LCSC against the others, or for a truncated trail against
    its full run (none where a variant they compare is not shown)."""
    fraction = truncation(model)
    both = {variants.LCSC, variants.LAST}
    if fraction is None and both <= set(m.results):
        noise = Noise(m.floor["fid"] if m.floor else None, m.spread)
        lines = [
            noise_line(m.floor, m.spread, m.nfes),
            versus_best_baseline(m.results, m.nfes, noise),
            significance_claim(m.results, m.spread, m.nfes),
            *claims(m.results, m.search_nfe, m.nfes, noise),
        ]
        # a consistency model's own claim leads (its search NFE against the base model's next one);
        # the diffusion model's is the NFE saving
        if base_model(model) != "dm":
            claim = consistency_claim(m.results, m.search_nfe, m.nfes, noise)
            lines = [claim] + lines + [monotone_claim(m.results[variants.LCSC], m.nfes, noise.floor)]
        else:
            lines.append(nfe_saving_claim(m.results, m.nfes))
        return [line for line in lines if line]
    full = report.get(base_model(model))
    if fraction is not None and full is not None and both <= set(m.results) & set(full.results):
        return [cost_claim(base_model(model), m.results, full.results, m.search_nfe, kept(m, fraction))]
    return []


def search_line(m: ModelReport) -> str:
    """The search in one sentence: optimizer, budget, NFEs, starting points and what it kept."""
    s = m.search
    starts = ", ".join(f"{n} {fmt(f)}" for n, f in s["starts"].items())
    rescored = f", re-scored {fmt(s['rescore_fitness'])} on other noise." if s["rescore_fitness"] is not None else "."
    nfes = nfe_list(s.get("nfe", m.search_nfe))
    at = (
        f"NFE {nfes[0]}"
        if len(nfes) == 1
        else (f"NFE {', '.join(map(str, nfes))} ({s.get('fitness_mean', 'log')} mean of their FIDs)")
    )
    return (
        f"Search: {s['optimizer']}, {s['budget']} evaluations over {len(s['trail_steps'])} checkpoints "
        f"({s['parametrization']}) at {at}. Starting points scored: {starts}; the optimizer "
        f"started at {s['start']['name']}. Kept: evaluation {s['evaluation']}, screening fitness "
        f"{fmt(s['fitness'])}{rescored}"
    )


def _words(items: list[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def quality_sentence(shown: tuple[metrics.Metric, ...]) -> str:
    """What the quality table shows, from the metrics' registry entries: their names and sources,
    which way each is better and their caveats."""
    sources = list(dict.fromkeys(m.source for m in shown if m.source))
    sides = (
        ("lower", [m.words for m in shown if m.lower_is_better]),
        ("higher", [m.words for m in shown if not m.lower_is_better]),
    )
    better = ", ".join(f"{side} {_words(ws)} {'is' if len(ws) == 1 else 'are'} better" for side, ws in sides if ws)
    notes = "; ".join([better, *(m.note for m in shown if m.note)])
    cited = f" ({'; '.join(sources)})" if sources else ""
    return f"{_words([m.words for m in shown])}{cited} in the same feature space ({notes}):"


def _cost_section(report: dict[str, ModelReport]) -> list[str]:
    curves = cost_curves(report)
    if not curves:
        return []
    md = [
        "## Training cost",
        "",
        "LCSC over the first part of each trail against the full run, at the model's search NFE. The speed-up "
        "is the full run's iterations over the part's, where LCSC on the part is at or below the best of the "
        "full run's last checkpoint and best EMA.",
        "",
    ]
    for model, rows in curves.items():
        nfe = report[model].search_nfe
        md += [f"### {model}", "", cost_table(rows, nfe), "", f"- {cost_curve_claim(model, rows, nfe)}", ""]
    return md + [f"![training cost]({COST_CURVE})", ""]


def _pictures(grids: list[Path], compared: dict[str, Path] | None) -> list[str]:
    """The side-by-side pictures, the plots and every sample grid."""
    md = []
    if compared:
        md += [
            "## Side by side",
            "",
            "Real images beside the same noise through last, the best EMA, the best "
            "baseline and lcsc at each model's search NFE (the first images of each variant's evaluation): look "
            "before trusting a gap.",
            "",
        ]
        md += [f"![{p.stem}]({p.name})" for p in compared.values()] + [""]
    md += [
        "## Plots",
        "",
        "![FID vs NFE](fid_vs_nfe.png)",
        "",
        "![coefficients](coefficients.png)",
        "",
        "![search curve](search_curve.png)",
        "",
        "## Samples at each model's search NFE",
        "",
    ]
    md += [f"- {p.stem.removeprefix('samples_')}: ![{p.stem}]({p.name})" for p in grids]
    return md
