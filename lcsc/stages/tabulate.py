"""Stage tabulate: every evaluation -> summary.md / summary.csv and the plots people look at.

It reads exactly the files its rule passes: each evaluation names its own model and variant, and
the per-model files (trail manifest, search result and history) come in the order of the models.
It imports no torch: the report's env has none.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from ..kernel import metrics, plots, variants
from ..kernel.errors import ConfigError, InputError
from ..kernel.io import atomic_path, copy_file, read_json, write_text
from ..kernel.models import for_model, headline_nfe, truncation
from ..kernel.paths import COST_CURVE, REPORT_FILES
from ..kernel.report import (
    ModelReport,
    best_baselines,
    best_ema,
    cost_curves,
    evaluation_floor,
    evaluation_spread,
    markdown,
    nfe_saving,
)

# (the name tests and older callers know: the report's header is built in lcsc.kernel.report)
from ..kernel.report import search_targets as _search_targets  # noqa: F401

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


def _quality(res: dict) -> dict[str, dict[int, float]] | None:
    """Each quality metric at each NFE, or None where the evaluation lacks one (its reference
    statistics kept no reference features)."""
    names = [m.name for m in metrics.quality_metrics()]
    if not all(k in res for k in names):
        return None
    return {k: {int(n): v for n, v in res[k].items()} for k in names}


def _evaluations(paths: Paths) -> dict[tuple[str, str], tuple[dict, Path]]:
    """Every evaluation by (model, variant), as it names itself, with its grid."""
    out = {}
    for path, grid in zip(paths.evaluations, paths.grids):
        res = read_json(path, "rerun the evaluate stage that writes it", keys=("model", "variant", "fid"))
        out[res["model"], res["variant"]] = res, grid
    return out


def _read(cfg: dict, paths: Paths, only: list[str] | None) -> dict[str, ModelReport]:
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
        shown = {v: evaluations[model, v] for v in names[model]}
        out[model] = _model(cfg, paths, i, model, shown)
    return out


def _model(cfg: dict, paths: Paths, i: int, model: str, shown: dict[str, tuple[dict, Path]]) -> ModelReport:
    """The i-th model's report, from its files and its variants' evaluations (with their grids)."""
    mcfg = for_model(cfg, model)
    with open(paths.histories[i]) as fh:
        history = list(csv.DictReader(fh))
    m = ModelReport(
        sorted(mcfg["evaluate"]["nfe"]),
        headline_nfe(mcfg["search"]["nfe"]),
        {v: {int(n): f for n, f in res["fid"].items()} for v, (res, _) in shown.items()},
        read_json(paths.searches[i]),
        history,
        read_json(paths.manifests[i]) if truncation(model) is not None else {},
        {v: grid for v, (_, grid) in shown.items()},
        {v: res["coefficients"] for v, (res, _) in shown.items() if res.get("coefficients")},
    )
    # the model-wide records (sampler, floor, conditioning): the last variant that has one gives it
    for v, (res, _) in shown.items():
        if evaluation_spread(res):
            m.spread[v] = evaluation_spread(res)
        if _quality(res):
            m.quality[v] = _quality(res)
        if isinstance(res.get("sampler"), dict):
            m.sampler = res["sampler"]
        if evaluation_floor(res):
            m.floor = evaluation_floor(res)
        if isinstance(res.get("conditioning"), dict):
            m.conditioning = res["conditioning"]
    return m


def _values(m: ModelReport, variant: str, metric: metrics.Metric) -> dict[int, float]:
    """A variant's values of `metric` by NFE (FID's are the results; the others' the quality table's)."""
    return m.results[variant] if metric == metrics.FID else m.quality.get(variant, {}).get(metric.name, {})


def _write_csv(path: Path, report: dict[str, ModelReport]) -> None:
    """A row per model and variant: each metric that has a column (lcsc.kernel.metrics) at every NFE, and
    with repeats FID's standard deviation at each and the number of runs."""
    every_nfe = sorted({n for m in report.values() for n in m.nfes})
    shown = [metric for metric in metrics.METRICS if metric.column]
    spread = any(m.spread for m in report.values())  # std columns only with repeats
    header = ["model", "variant", *[metric.column.format(n=n) for metric in shown for n in every_nfe]]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header + ([f"nfe{n}_std" for n in every_nfe] + ["runs"] if spread else []))
            for model, m in report.items():
                for v in m.results:
                    values = [_values(m, v, metric) for metric in shown]
                    row = [model, v, *[f"{r[n]:.4f}" if n in r else "" for r in values for n in every_nfe]]
                    sd = m.spread.get(v, {})
                    if spread:
                        row += [f"{sd[n][0]:.4f}" if n in sd else "" for n in every_nfe]
                        row.append(next(iter(sd.values()))[1] if sd else 1)
                    w.writerow(row)


def headline_metrics(report: dict[str, ModelReport], curves: dict[str, list[dict]]) -> dict[str, float]:
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
            out[f"{model}.nfe_saving"] = nfe_saving(m.results, m.nfes)
        if model in curves:
            out[f"{model}.training_speedup"] = max([r["speedup"] or 1.0 for r in curves[model]], default=1.0)
    return out


def _compared(m: ModelReport) -> dict[str, str]:
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


def run(cfg: dict, paths: Paths, only: list[str] | None = None, stage_run=None) -> Path:
    """The report over `paths.models` (each with its own variants, search NFE and NFE sweep, as
    lcsc.kernel.models.for_model gives them); `only` limits every model to those variants."""
    report = _read(cfg, paths, only)
    out = {key: paths.report / name for key, name in REPORT_FILES.items()}
    paths.report.mkdir(parents=True, exist_ok=True)
    _write_csv(out["summary_csv"], report)
    curves = cost_curves(report)
    _plot(cfg, report, curves, paths, out)
    grids = []
    for model, m in report.items():
        for v, grid in m.grids.items():
            dst = paths.report / f"samples_{model}_{v}.png"
            copy_file(grid, dst)
            grids.append(dst)
    compared = _side_by_side(report, paths)
    write_text(out["summary_md"], markdown(cfg, report, grids, compared))
    if stage_run is not None:
        for p in [*out.values(), *grids, *compared.values()]:
            stage_run.log_artifact(p, "report")
        for model, m in report.items():
            for v, r in m.results.items():
                for n in m.nfes:
                    stage_run.log_metrics({f"fid.{model}.{v}": r[n]}, step=n)
        stage_run.log_parent_metrics(headline_metrics(report, curves))
    return out["summary_md"]


def _plot(cfg: dict, report: dict[str, ModelReport], curves: dict, paths: Paths, out: dict[str, Path]) -> None:
    """FID vs NFE, the cost curve (adding its file to `out`), the coefficients and the search curves."""
    # with a cost curve the truncated trails are on it, not on FID vs NFE
    shown = {k: m for k, m in report.items() if not (curves and truncation(k) is not None)}
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


def _side_by_side(report: dict[str, ModelReport], paths: Paths) -> dict[str, Path]:
    """Each model's picture of last, the best EMA, the best baseline and lcsc from the same noise
    (real images first, where there are any); none for a model with one of them only."""
    compared = {}
    for model, m in report.items():
        rows = _compared(m)
        if len(rows) <= 1:
            continue
        panels = {
            f"{role}: {v}" if role != v else v: paths.report / f"samples_{model}_{v}.png" for role, v in rows.items()
        }
        if paths.real is not None and paths.real.is_file():
            panels = {"real images": paths.real, **panels}
        try:
            plots.side_by_side(
                panels,
                paths.report / f"side_by_side_{model}.png",
                f"{model}: the same noise through each variant at NFE {m.search_nfe}",
            )
            compared[model] = paths.report / f"side_by_side_{model}.png"
        # PIL's errors for a file that is no image: the report goes on without that picture
        except (OSError, SyntaxError, ValueError) as exc:
            print(
                f"[tabulate] {model}: no side-by-side picture, a sample grid is not a readable PNG ({exc})",
                file=sys.stderr,
                flush=True,
            )
    return compared
