"""The tabulate stage: every evaluation -> summary.md / summary.csv and the plots people look at."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from . import profiles
from .io import atomic_path, copy_file, read_json, write_text
from .paths import Layout, feature_tag


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def load_results(layout: Layout, model: str, variants: list[str]) -> dict[str, dict[int, float]]:
    out = {}
    for v in variants:
        res = read_json(layout.eval_json(model, v))
        out[v] = {int(n): f for n, f in res["fid"].items()}
    return out


def best_baselines(results: dict[str, dict[int, float]], nfes: list[int]) -> dict[int, str]:
    """The best variant other than lcsc at each NFE (none when lcsc is the only one)."""
    others = [v for v in results if v != "lcsc"]
    return {n: min(others, key=lambda v: results[v][n]) for n in nfes} if others else {}


def markdown_table(results: dict[str, dict[int, float]], nfes: list[int]) -> str:
    """Variant x NFE table: the best value of each column in bold, the best baseline marked †."""
    best = {n: min(r[n] for r in results.values()) for n in nfes}
    base = best_baselines(results, nfes)
    lines = ["| variant | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "| --- | " + " | ".join("---:" for _ in nfes) + " |"]
    for v, r in results.items():
        cells = []
        for n in nfes:
            cell = f"**{_fmt(r[n])}**" if r[n] == best[n] else _fmt(r[n])
            cells.append(cell + (" †" if base.get(n) == v else ""))
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _best_ema(results: dict[str, dict[int, float]], nfe: int) -> str | None:
    emas = [v for v in results if v.startswith("ema_") and not v.endswith("_profile")]
    return min(emas, key=lambda v: results[v][nfe]) if emas else None


def consistency_claim(results: dict[str, dict[int, float]], search_nfe: int, nfes: list[int]) -> str | None:
    """The paper's consistency-model claim, measured: LCSC at the search NFE (1 by default) against
    the base model (the last checkpoint and the best EMA) at the next NFE of the sweep (2)."""
    more = [n for n in nfes if n > search_nfe]
    if not more:
        return None
    m, n = search_nfe, min(more)
    lcsc, last = results["lcsc"][m], results["last"][n]
    ema = _best_ema(results, n)
    beats_last = lcsc < last
    beats_ema = ema is None or lcsc < results[ema][n]
    versus = f"the last checkpoint at {n} NFE scores {_fmt(last)}" + (
        f" and the best EMA at {n} NFE ({ema}) {_fmt(results[ema][n])}" if ema else "")
    if beats_last and beats_ema:
        verdict = f"LCSC at {m} NFE beats the base model at {n} NFE: the paper's claim holds here"
    elif beats_last:
        verdict = (f"LCSC at {m} NFE beats the last checkpoint but not the best EMA at {n} NFE: "
                   "the paper's claim holds only against the last checkpoint here")
    else:
        verdict = f"LCSC at {m} NFE does NOT beat the base model at {n} NFE: the paper's claim does not hold here"
    return (f"Paper's claim, LCSC at {m} NFE vs the base model at {n} NFE: LCSC scores {_fmt(lcsc)} at {m} NFE; "
            f"{versus}. {verdict} (evaluation seeds the search never saw).")


def cost_claim(model: str, truncated: dict[str, dict[int, float]], full: dict[str, dict[int, float]],
               nfe: int, kept: dict) -> str:
    """The training-cost experiment: LCSC over the first part of a trail against the full run."""
    steps, total = kept["steps"], kept["total"]
    lcsc = truncated["lcsc"][nfe]
    ema = _best_ema(full, nfe)
    refs = {"last": full["last"][nfe]} | ({ema: full[ema][nfe]} if ema else {})
    best_name = min(refs, key=refs.get)
    text = (f"LCSC over the first {kept['fraction'] * 100:g}% of {model}'s training ({kept['checkpoints']} checkpoints, "
            f"steps up to {steps} of {total}) scores FID {_fmt(lcsc)} at {nfe} NFE; that trail's own last "
            f"checkpoint scores {_fmt(truncated['last'][nfe])}, and the full run's last {_fmt(full['last'][nfe])}"
            + (f" and its best EMA ({ema}) {_fmt(full[ema][nfe])}" if ema else "") + ". ")
    if lcsc <= refs[best_name]:
        return text + (f"It matches or beats the full run's best ({best_name}) with {steps} of {total} training "
                       f"iterations: an implied training speed-up of {total}/{steps} = {total / steps:.1f}x.")
    return text + (f"It does not reach the full run's best ({best_name}, {_fmt(refs[best_name])}), so this run "
                   f"implies no training speed-up at this fraction.")


def claims(results: dict[str, dict[int, float]], search_nfe: int, nfes: list[int]) -> list[str]:
    """Plain sentences comparing LCSC with the last checkpoint and the best EMA, with numbers."""
    lcsc, last = results["lcsc"], results["last"]
    emas = {v: r for v, r in results.items() if v.startswith("ema_") and not v.endswith("_profile")}
    out = []
    at = search_nfe
    if emas:
        best_ema = min(emas, key=lambda v: emas[v][at])
        verdict = "below" if lcsc[at] < min(last[at], emas[best_ema][at]) else "NOT below"
        out.append(f"At the search NFE {at}, LCSC's FID {_fmt(lcsc[at])} is {verdict} both the last "
                   f"checkpoint's {_fmt(last[at])} and the best EMA's ({best_ema}) {_fmt(emas[best_ema][at])}, "
                   f"on evaluation seeds the search never saw.")
    base = best_baselines(results, nfes)[at]
    verdict = "beats" if lcsc[at] < results[base][at] else "does NOT beat"
    out.append(f"At NFE {at} LCSC {verdict} the best baseline, {base} ({_fmt(results[base][at])}).")
    for v in emas:
        if f"{v}_profile" in results:
            out.append(f"The EMA {v[4:]} kept during training scores {_fmt(emas[v][at])} at NFE {at}; the same "
                       f"EMA computed afterwards from the sparse trail ({v}_profile) scores "
                       f"{_fmt(results[v + '_profile'][at])}.")
    if emas:
        for n in nfes:
            ref = min(r[n] for r in emas.values())
            cheaper = [m for m in nfes if m < n and lcsc[m] <= ref]
            if cheaper:
                m = min(cheaper)
                out.append(f"LCSC at NFE {m} (FID {_fmt(lcsc[m])}) matches or beats the best EMA at "
                           f"NFE {n} (FID {_fmt(ref)}).")
    return out


def _plot_fid_vs_nfe(all_results: dict[str, dict], model_nfes: dict[str, list[int]], search_nfe: dict[str, int],
                     path: Path) -> None:
    import matplotlib.pyplot as plt

    from .config import base_model, truncation

    fig, axes = plt.subplots(1, len(all_results), figsize=(5.5 * len(all_results), 4), squeeze=False)
    for ax, (model, results) in zip(axes[0], all_results.items()):
        nfes = model_nfes[model]
        for v, r in results.items():
            ax.plot(nfes, [r[n] for n in nfes], marker="o", lw=2.5 if v == "lcsc" else 1.0,
                    color="black" if v == "lcsc" else None, label=v)
        full = all_results.get(base_model(model)) if truncation(model) is not None else None
        if full:  # the training-cost experiment: the full run's own last and best EMA, for comparison
            ema = _best_ema(full, search_nfe[model])  # the EMA the report's sentence names
            for v, style in (("last", ":"), (ema, "--")):
                if v in full:
                    ax.plot(nfes, [full[v][n] for n in nfes], ls=style, color="grey", label=f"full run {v}")
        ax.set(xlabel="NFE", ylabel="FID", title=model, xticks=nfes)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _plot_coefficients(searches: dict[str, dict], decays: list[float], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(searches), figsize=(6 * len(searches), 4), squeeze=False)
    for ax, (model, s) in zip(axes[0], searches.items()):
        steps = s["trail_steps"]
        ax.bar(steps, s["coefficients"], width=0.8 * (steps[1] - steps[0]) if len(steps) > 1 else 1,
               color="tab:red", alpha=0.7, label="LCSC")
        for d in decays:
            ax.plot(steps, profiles.ema_profile(steps, d), marker=".", label=f"EMA {d} profile")
        ax.plot(steps, profiles.uniform(len(steps)), ls="--", color="grey", label="uniform")
        ax.axhline(0, color="black", lw=0.5)
        ax.set(xlabel="training step of checkpoint", ylabel="coefficient", title=model)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _plot_search_curve(histories: dict[str, list[dict]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(histories), figsize=(5.5 * len(histories), 4), squeeze=False)
    for ax, (model, rows) in zip(axes[0], histories.items()):
        screen = [r for r in rows if r["phase"] != "rescore"]
        rescore = [r for r in rows if r["phase"] == "rescore"]
        x = [int(r["evaluation"]) for r in screen]
        ax.scatter(x, [float(r["fitness"]) for r in screen], s=8, alpha=0.5, label="candidate")
        ax.plot(x, [float(r["best_so_far"]) for r in screen], color="tab:red", label="best so far")
        starts = [float(r["fitness"]) for r in screen if r["phase"] == "start"]
        ax.axhline(min(starts), ls="--", color="grey", label="best starting profile")
        if rescore:
            ax.scatter([int(r["evaluation"]) for r in rescore], [float(r["fitness"]) for r in rescore],
                       marker="x", color="black", label="top candidates re-scored")
        ax.set(xlabel="evaluation", ylabel="fitness (FID)", title=model)
        fit = np.array([float(r["fitness"]) for r in rows])
        ax.set_ylim(fit.min() * 0.95, max(np.percentile(fit, 90), min(starts)) * 1.05)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def run_tabulate(cfg: dict, models: list[str], variants: list[str] | None = None, run=None) -> Path:
    """The report over `models` (each with its own variants, search NFE and NFE sweep, as
    lcsc.config.for_model gives them); `variants` limits every model to those."""
    import matplotlib

    from .config import ConfigError, base_model, for_model, truncation

    matplotlib.use("Agg")
    layout = Layout.of(cfg)
    out = layout.report_dir()
    out.mkdir(parents=True, exist_ok=True)
    mcfg = {m: for_model(cfg, m) for m in models}
    nfes = {m: sorted(mcfg[m]["evaluate"]["nfe"]) for m in models}
    search_nfe = {m: mcfg[m]["search"]["nfe"] for m in models}
    names = {m: [v for v in profiles.variant_names(cfg, m) if not variants or v in variants] for m in models}
    empty = [m for m in models if not names[m]]
    if empty:
        raise ConfigError(f"tabulate --variants {' '.join(variants)}: none of them is a variant of {', '.join(empty)} "
                          f"(those have {', '.join(profiles.variant_names(cfg, empty[0]))})")
    all_results, searches, histories = {}, {}, {}
    for model in models:
        all_results[model] = load_results(layout, model, names[model])
        searches[model] = read_json(layout.coefficients(model, search_nfe[model]))
        with open(layout.history(model, search_nfe[model])) as fh:
            histories[model] = list(csv.DictReader(fh))

    every_nfe = sorted({n for m in models for n in nfes[m]})
    with atomic_path(out / "summary.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["model", "variant", *[f"nfe{n}" for n in every_nfe]])
            for model, results in all_results.items():
                for v, r in results.items():
                    w.writerow([model, v, *[f"{r[n]:.4f}" if n in r else "" for n in every_nfe]])

    _plot_fid_vs_nfe(all_results, nfes, search_nfe, out / "fid_vs_nfe.png")
    _plot_coefficients(searches, cfg["baselines"]["ema_decays"], out / "coefficients.png")
    _plot_search_curve(histories, out / "search_curve.png")
    grids = []
    for model in models:
        for v in names[model]:
            dst = out / f"samples_{model}_{v}.png"
            copy_file(layout.eval_grid(model, v), dst)
            grids.append(dst)

    ecfg = cfg["evaluate"]
    targets = ", ".join(f"{m} {search_nfe[m]}" for m in models)
    md = [f"# LCSC report: {cfg['experiment']}", "",
          f"FID ({feature_tag(cfg['features'])} features) of {ecfg['samples']} samples "
          f"per cell, evaluation seed {ecfg['seed']}; the search scored candidates on "
          f"{cfg['search']['samples']} samples with seed {cfg['search']['seed']} at each model's search NFE "
          f"({targets}). "
          "Lower is better; the best value of each column is in bold, and † marks the best baseline "
          "(every variant but lcsc). Variants: `last`; `ema_<decay>`, the EMA kept during training; "
          "`uniform`; `lawa_<k>`, the average of the last k checkpoints; `ema_<decay>_profile`, that EMA "
          "computed afterwards from the sparse trail; `power_<sigma_rel>`, EDM2's post-hoc power-function "
          "EMA; `greedy_soup`; `lcsc`, the searched combination.", ""]
    for model, results in all_results.items():
        s = searches[model]
        fraction = truncation(model)
        md += [f"## {model}{TITLES.get(base_model(model), '') if fraction is None else ' (training-cost experiment)'}",
               "", markdown_table(results, nfes[model]), ""]
        if fraction is None:
            lines = claims(results, search_nfe[model], nfes[model]) if {"lcsc", "last"} <= set(results) else []
            if base_model(model) != "dm" and {"lcsc", "last"} <= set(results):
                claim = consistency_claim(results, search_nfe[model], nfes[model])
                lines = ([claim] if claim else []) + lines
        else:
            full = base_model(model)
            trail = read_json(layout.manifest(model))
            kept = {"fraction": fraction, "steps": trail["iterations"], "total": trail["truncated_from"]["iterations"],
                    "checkpoints": len(trail["checkpoints"])}
            lines = ([cost_claim(full, results, all_results[full], search_nfe[model], kept)]
                     if full in all_results and {"lcsc", "last"} <= set(results) & set(all_results[full]) else [])
        md += [f"- {line}" for line in lines]
        starts = ", ".join(f"{n} {_fmt(f)}" for n, f in s["starts"].items())
        md += [f"- Search: {s['optimizer']}, {s['budget']} evaluations over {len(s['trail_steps'])} "
               f"checkpoints ({s['parametrization']}) at NFE {search_nfe[model]}. Starting points scored: "
               f"{starts}; the optimizer started at {s['start']['name']}. Kept: evaluation {s['evaluation']}, "
               f"screening fitness {_fmt(s['fitness'])}"
               + (f", re-scored {_fmt(s['rescore_fitness'])} on other noise." if s["rescore_fitness"] is not None else "."),
               ""]
    md += ["## Plots", "", "![FID vs NFE](fid_vs_nfe.png)", "", "![coefficients](coefficients.png)", "",
           "![search curve](search_curve.png)", "", "## Samples at each model's search NFE", ""]
    md += [f"- {p.stem.removeprefix('samples_')}: ![{p.stem}]({p.name})" for p in grids]
    write_text(out / "summary.md", "\n".join(md) + "\n")

    if run is not None:
        for p in [out / "summary.md", out / "summary.csv", out / "fid_vs_nfe.png", out / "coefficients.png",
                  out / "search_curve.png", *grids]:
            run.log_artifact(p, "report")
        for model, results in all_results.items():
            for v, r in results.items():
                for n in nfes[model]:
                    run.log_metrics({f"fid.{model}.{v}": r[n]}, step=n)
    return out / "summary.md"


TITLES = {"dm": " (diffusion model)", "cm_cd": " (consistency distillation)", "cm_ct": " (consistency training)"}
