"""The report's plots: FID against NFE, the searched coefficients against the EMA profiles, and
the search's progress. matplotlib only (the report's env has no torch)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from . import profiles, variants
from .io import atomic_path
from .models import base_model, truncation
from .report import best_ema


def plot_fid_vs_nfe(all_results: dict[str, dict], model_nfes: dict[str, list[int]], search_nfe: dict[str, int],
                     path: Path) -> None:
    fig, axes = plt.subplots(1, len(all_results), figsize=(5.5 * len(all_results), 4), squeeze=False)
    for ax, (model, results) in zip(axes[0], all_results.items()):
        nfes = model_nfes[model]
        for v, r in results.items():
            ax.plot(nfes, [r[n] for n in nfes], marker="o", lw=2.5 if v == variants.LCSC else 1.0,
                    color="black" if v == variants.LCSC else None, label=v)
        full = all_results.get(base_model(model)) if truncation(model) is not None else None
        if full:  # the training-cost experiment: the full run's own last and best EMA, for comparison
            ema = best_ema(full, search_nfe[model])  # the EMA the report's sentence names
            for v, style in ((variants.LAST, ":"), (ema, "--")):
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


def plot_coefficients(searches: dict[str, dict], decays: list[float], path: Path) -> None:
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


def plot_search_curve(histories: dict[str, list[dict]], path: Path) -> None:
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
