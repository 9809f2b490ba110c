"""Stage tabulate: every evaluation -> summary.md / summary.csv and the plots people look at.

It reads exactly the files its rule passes: each evaluation names its own model and variant, and
the per-model files (trail manifest, search result and history) come in the order of the models.
It imports no torch: the report's env has none.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..kernel import plots, variants
from ..kernel.errors import ConfigError, InputError
from ..kernel.io import atomic_path, copy_file, read_json, write_text
from ..kernel.models import base_model, for_model, headline_nfe, nfe_list, truncation
from ..kernel.paths import COST_CURVE, REPORT_FILES, feature_tag
from ..kernel.report import (
    TITLES,
    Noise,
    best_baselines,
    best_ema,
    claims,
    coefficient_stats,
    consistency_claim,
    cost_claim,
    cost_curve_claim,
    cost_rows,
    cost_table,
    evaluation_floor,
    evaluation_spread,
    fmt,
    markdown_table,
    monotone_claim,
    nfe_saving_claim,
    nfe_saving_table,
    nfe_savings,
    noise_line,
    quality_table,
    sampler_line,
    significance_claim,
    versus_best_baseline,
)

NAME = "tabulate"


@dataclass(frozen=True)
class Paths:
    models: tuple[str, ...]  # the models reported, in order; the next three lists follow it
    manifests: tuple[Path, ...]  # each model's trail manifest (read for a truncated trail's length)
    searches: tuple[Path, ...]  # each model's coefficients.json
    histories: tuple[Path, ...]  # each model's history.csv
    evaluations: tuple[Path, ...]  # every evaluation JSON, in any order
    grids: tuple[Path, ...]  # the sample grid of each evaluation, in the same order
    report: Path  # the folder of REPORT_FILES and the samples_<model>_<variant>.png copies
    real: Path | None = None  # a grid of reference images, the first panel of the side-by-side picture

    def __post_init__(self):
        for name, items in (("manifests", self.manifests), ("searches", self.searches), ("histories", self.histories)):
            if len(items) != len(self.models):
                raise ConfigError(
                    f"--{name}: {len(items)} files for {len(self.models)} models; give one per model, "
                    "in the order of --models"
                )
        if len(self.grids) != len(self.evaluations):
            raise ConfigError(
                f"--grids: {len(self.grids)} files for {len(self.evaluations)} evaluations; give one "
                "per evaluation, in the same order"
            )


@dataclass
class _Model:
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
    quality: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)  # variant -> kid/precision/recall
    sampler: dict = field(default_factory=dict)  # the sampler's settings, as evaluate recorded them
    floor: dict = field(default_factory=dict)  # the data-vs-data floor, as evaluate measured it
    conditioning: dict = field(default_factory=dict)  # a class-conditional model's classes and labels


def _quality(res: dict) -> dict[str, dict[int, float]] | None:
    if not all(k in res for k in ("kid", "precision", "recall")):
        return None
    return {k: {int(n): v for n, v in res[k].items()} for k in ("kid", "precision", "recall")}


def _evaluations(paths: Paths) -> dict[tuple[str, str], tuple[dict, Path]]:
    """Every evaluation by (model, variant), as it names itself, with its grid."""
    out = {}
    for path, grid in zip(paths.evaluations, paths.grids):
        res = read_json(path, "rerun the evaluate stage that writes it", keys=("model", "variant", "fid"))
        out[res["model"], res["variant"]] = res, grid
    return out


def _read(cfg: dict, paths: Paths, only: list[str] | None) -> dict[str, _Model]:
    names = {m: [v for v in variants.names(cfg, m) if not only or v in only] for m in paths.models}
    empty = [m for m in paths.models if not names[m]]
    if empty:
        raise ConfigError(
            f"tabulate --variants {' '.join(only)}: none of them is a variant of {', '.join(empty)} "
            f"(those have {', '.join(variants.names(cfg, empty[0]))})"
        )
    evaluations = _evaluations(paths)
    out = {}
    for i, model in enumerate(paths.models):
        missing = [v for v in names[model] if (model, v) not in evaluations]
        if missing:
            raise InputError(
                f"--evaluations: none of the files is the evaluation of {model} {missing[0]}; "
                "pass every evaluation the report shows"
            )
        mcfg = for_model(cfg, model)
        with open(paths.histories[i]) as fh:
            history = list(csv.DictReader(fh))
        out[model] = _Model(
            sorted(mcfg["evaluate"]["nfe"]),
            headline_nfe(mcfg["search"]["nfe"]),
            {v: {int(n): f for n, f in evaluations[model, v][0]["fid"].items()} for v in names[model]},
            read_json(paths.searches[i]),
            history,
            read_json(paths.manifests[i]) if truncation(model) is not None else {},
            {v: evaluations[model, v][1] for v in names[model]},
            {
                v: evaluations[model, v][0]["coefficients"]
                for v in names[model]
                if evaluations[model, v][0].get("coefficients")
            },
        )
        for v in names[model]:
            res = evaluations[model, v][0]
            if evaluation_spread(res):
                out[model].spread[v] = evaluation_spread(res)
            if _quality(res):
                out[model].quality[v] = _quality(res)
            if isinstance(res.get("sampler"), dict):
                out[model].sampler = res["sampler"]
            if evaluation_floor(res):
                out[model].floor = evaluation_floor(res)
            if isinstance(res.get("conditioning"), dict):
                out[model].conditioning = res["conditioning"]
    return out


def _write_csv(path: Path, report: dict[str, _Model]) -> None:
    every_nfe = sorted({n for m in report.values() for n in m.nfes})
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            spread = any(m.spread for m in report.values())  # std columns only with repeats
            w.writerow(
                [
                    "model",
                    "variant",
                    *[f"nfe{n}" for n in every_nfe],
                    *([f"nfe{n}_std" for n in every_nfe] + ["runs"] if spread else []),
                ]
            )
            for model, m in report.items():
                for v, r in m.results.items():
                    sd = m.spread.get(v, {})
                    w.writerow(
                        [
                            model,
                            v,
                            *[f"{r[n]:.4f}" if n in r else "" for n in every_nfe],
                            *(
                                [f"{sd[n][0]:.4f}" if n in sd else "" for n in every_nfe]
                                + [next(iter(sd.values()))[1] if sd else 1]
                                if spread
                                else []
                            ),
                        ]
                    )


def _model_lines(model: str, m: _Model, report: dict[str, _Model]) -> list[str]:
    """The claims under a model's table, and a line on its search."""
    fraction = truncation(model)
    both = {variants.LCSC, variants.LAST}
    lines = []
    if fraction is None and both <= set(m.results):
        noise = Noise(m.floor["fid"] if m.floor else None, m.spread)
        lines = [
            noise_line(m.floor, m.spread, m.nfes),
            versus_best_baseline(m.results, m.nfes, noise),
            significance_claim(m.results, m.spread, m.nfes),
            *claims(m.results, m.search_nfe, m.nfes, noise),
        ]
        if base_model(model) != "dm":
            claim = consistency_claim(m.results, m.search_nfe, m.nfes, noise)
            lines = (
                ([claim] if claim else []) + lines + [monotone_claim(m.results[variants.LCSC], m.nfes, noise.floor)]
            )
        else:
            lines.append(nfe_saving_claim(m.results, m.nfes))
        lines = [line for line in lines if line]
    elif fraction is not None:
        full = report.get(base_model(model))
        if full is not None and both <= set(m.results) & set(full.results):
            lines = [cost_claim(base_model(model), m.results, full.results, m.search_nfe, _kept(m, fraction))]
    s = m.search
    starts = ", ".join(f"{n} {fmt(f)}" for n, f in s["starts"].items())
    rescored = f", re-scored {fmt(s['rescore_fitness'])} on other noise." if s["rescore_fitness"] is not None else "."
    nfes = nfe_list(s.get("nfe", m.search_nfe))
    at = (
        f"NFE {nfes[0]}"
        if len(nfes) == 1
        else (f"NFE {', '.join(map(str, nfes))} ({s.get('fitness_mean', 'log')} mean of their FIDs)")
    )
    lines.append(
        f"Search: {s['optimizer']}, {s['budget']} evaluations over {len(s['trail_steps'])} checkpoints "
        f"({s['parametrization']}) at {at}. Starting points scored: {starts}; the optimizer "
        f"started at {s['start']['name']}. Kept: evaluation {s['evaluation']}, screening fitness "
        f"{fmt(s['fitness'])}{rescored}"
    )
    return [f"- {line}" for line in lines]


def _kept(m: _Model, fraction: float) -> dict:
    """What a truncated trail keeps of its full run."""
    return {
        "fraction": fraction,
        "steps": m.trail["iterations"],
        "total": m.trail["truncated_from"]["iterations"],
        "checkpoints": len(m.trail["checkpoints"]),
    }


def cost_curves(report: dict[str, _Model]) -> dict[str, list[dict]]:
    """Each full model's training-cost rows (lcsc.kernel.report.cost_rows) over its truncated trails."""
    out = {}
    for model, full in report.items():
        if truncation(model) is not None or not {variants.LCSC, variants.LAST} <= set(full.results):
            continue
        parts = {
            truncation(t): {"results": m.results, "kept": _kept(m, truncation(t))}
            for t, m in report.items()
            if truncation(t) is not None
            and base_model(t) == model
            and {variants.LCSC, variants.LAST} <= set(m.results)
        }
        if parts:
            out[model] = cost_rows(parts, full.results, full.search_nfe)
    return out


def headline_metrics(report: dict[str, _Model], curves: dict[str, list[dict]]) -> dict[str, float]:
    """Each full model's headline numbers, for the invocation's parent run: lcsc's and the best
    baseline's FID at each NFE, the largest measured NFE saving (1 for none) and the training
    speed-up (1 for none shown)."""
    out = {}
    for model, m in report.items():
        if truncation(model) is not None or variants.LCSC not in m.results:
            continue
        base = best_baselines(m.results, m.nfes)
        for n in m.nfes:
            out[f"{model}.lcsc_fid_nfe{n}"] = m.results[variants.LCSC][n]
            if base:
                out[f"{model}.best_baseline_fid_nfe{n}"] = m.results[base[n]][n]
        if base:
            lcsc = m.results[variants.LCSC]
            ratios = [n / k for n in m.nfes for k in m.nfes if k < n and lcsc[k] <= m.results[base[n]][n]]
            out[f"{model}.nfe_saving"] = max(ratios, default=1.0)
        if model in curves:
            out[f"{model}.training_speedup"] = max([r["speedup"] or 1.0 for r in curves[model]], default=1.0)
    return out


def _search_targets(cfg: dict, report: dict[str, _Model]) -> str:
    """Each model's search NFEs and sample count, as its own config has them ("dm NFE 5, 800 samples")."""
    out = []
    for model in report:
        s = for_model(cfg, model)["search"]
        out.append(f"{model} NFE {' and '.join(map(str, nfe_list(s['nfe'])))}, {s['samples']} samples")
    return "; ".join(out)


def _compared(m: _Model) -> dict[str, str]:
    """The variants shown side by side: last, the best kept EMA and the best baseline at the search
    NFE, and lcsc (each once, in that order)."""
    at = m.search_nfe if all(m.search_nfe in r for r in m.results.values()) else m.nfes[0]
    rows = {
        "last": variants.LAST if variants.LAST in m.results else None,
        "best EMA": best_ema(m.results, at),
        "best baseline": best_baselines(m.results, [at]).get(at),
        "lcsc": variants.LCSC if variants.LCSC in m.results else None,
    }
    out, seen = {}, set()
    for role, v in rows.items():
        if v is not None and v not in seen and v in m.grids:
            out[role if role not in (variants.LAST, variants.LCSC) else v] = v
            seen.add(v)
    return out


def _markdown(cfg: dict, report: dict[str, _Model], grids: list[Path], compared: dict[str, Path] | None = None) -> str:
    ecfg = cfg["evaluate"]
    md = [
        f"# LCSC report: {cfg['experiment']}",
        "",
        f"FID ({feature_tag(cfg['features'])} features) of {ecfg['samples']} samples "
        f"per cell, evaluation seed {ecfg['seed']}; the search scored candidates with seed "
        f"{cfg['search']['seed']} at each model's search NFEs and samples ({_search_targets(cfg, report)}). "
        "Lower is better; the best value of each column is in bold, and † marks the best baseline "
        "(every variant but lcsc). Variants: `last`; `ema_<decay>`, the EMA kept during training; "
        "`uniform`; `lawa_<k>`, the average of the last k checkpoints; `ema_<decay>_profile`, that EMA "
        "computed afterwards from the sparse trail; `power_<sigma_rel>`, EDM2's post-hoc power-function "
        "EMA; `greedy_soup`; `lcsc`, the searched combination.",
        "",
    ]
    repeats = (cfg["search"].get("repeats", 1), ecfg.get("repeats", 1))
    if repeats != (1, 1):
        md += [
            f"Each cell is the mean ± standard deviation over {repeats[1]} evaluation seed(s), and for lcsc over "
            f"{repeats[0]} independent search(es) (search.repeats) times those seeds.",
            "",
        ]
    for model, m in report.items():
        title = TITLES.get(base_model(model), "") if truncation(model) is None else " (training-cost experiment)"
        md += [
            f"## {model}{title}",
            "",
            markdown_table(m.results, m.nfes, m.spread),
            "",
            *_model_lines(model, m, report),
            "",
        ]
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
            md += [
                "KID, precision and recall (k = 3, Kynkäänniemi et al. 2019) in the same feature space "
                "(lower KID is better, higher precision and recall are better; KID's scale is the feature "
                "space's, so compare it between variants only):",
                "",
                quality_table(m.quality, m.nfes),
                "",
            ]
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
    curves = cost_curves(report)
    if curves:
        md += [
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
        md += [f"![training cost]({COST_CURVE})", ""]
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
    return "\n".join(md) + "\n"


def run(cfg: dict, paths: Paths, only: list[str] | None = None, stage_run=None) -> Path:
    """The report over `paths.models` (each with its own variants, search NFE and NFE sweep, as
    lcsc.kernel.models.for_model gives them); `only` limits every model to those variants."""
    report = _read(cfg, paths, only)
    out = {key: paths.report / name for key, name in REPORT_FILES.items()}
    paths.report.mkdir(parents=True, exist_ok=True)
    _write_csv(out["summary_csv"], report)
    curves = cost_curves(report)
    shown = {k: m for k, m in report.items() if not (curves and truncation(k) is not None)}  # the curve shows those
    plots.plot_fid_vs_nfe(
        {k: m.results for k, m in shown.items()},
        {k: m.nfes for k, m in shown.items()},
        {k: m.search_nfe for k, m in shown.items()},
        out["fid_vs_nfe"],
        {k: m.spread for k, m in shown.items()},
    )
    if curves:
        out["cost_curve"] = paths.report / COST_CURVE
        plots.plot_cost_curve(
            curves,
            {k: report[k].results[variants.LCSC][report[k].search_nfe] for k in curves},
            {k: report[k].search_nfe for k in curves},
            out["cost_curve"],
        )
    plots.plot_coefficients(
        {k: m.search for k, m in report.items()}, cfg["baselines"]["ema_decays"], out["coefficients"]
    )
    plots.plot_search_curve({k: m.history for k, m in report.items()}, out["search_curve"])
    grids = []
    for model, m in report.items():
        for v, grid in m.grids.items():
            dst = paths.report / f"samples_{model}_{v}.png"
            copy_file(grid, dst)
            grids.append(dst)
    compared = {}
    for model, m in report.items():  # last, the best EMA, the best baseline and lcsc, from the same noise
        rows = _compared(m)
        if len(rows) > 1:
            panels = {
                f"{role}: {v}" if role != v else v: paths.report / f"samples_{model}_{v}.png"
                for role, v in rows.items()
            }
            if paths.real is not None and paths.real.is_file():  # real images first, where there are any
                panels = {"real images": paths.real, **panels}
            try:
                plots.side_by_side(
                    panels,
                    paths.report / f"side_by_side_{model}.png",
                    f"{model}: the same noise through each variant at NFE {m.search_nfe}",
                )
                compared[model] = paths.report / f"side_by_side_{model}.png"
            except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for a file that is no image
                print(
                    f"[tabulate] {model}: no side-by-side picture, a sample grid is not a readable PNG ({exc})",
                    file=sys.stderr,
                    flush=True,
                )
    write_text(out["summary_md"], _markdown(cfg, report, grids, compared))
    if stage_run is not None:
        for p in [*out.values(), *grids, *compared.values()]:
            stage_run.log_artifact(p, "report")
        for model, m in report.items():
            for v, r in m.results.items():
                for n in m.nfes:
                    stage_run.log_metrics({f"fid.{model}.{v}": r[n]}, step=n)
        stage_run.log_parent_metrics(headline_metrics(report, curves))
    return out["summary_md"]
