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


def plot_fid_vs_nfe(
    all_results: dict[str, dict],
    model_nfes: dict[str, list[int]],
    search_nfe: dict[str, int],
    path: Path,
    spread: dict[str, dict] | None = None,
) -> None:
    """FID against NFE per model, every variant a line; with `spread`, error bars of one standard
    deviation over the runs (evaluation seeds, and searches for lcsc)."""
    fig, axes = plt.subplots(1, len(all_results), figsize=(5.5 * len(all_results), 4), squeeze=False)
    for ax, (model, results) in zip(axes[0], all_results.items()):
        nfes = model_nfes[model]
        for v, r in results.items():
            sd = (spread or {}).get(model, {}).get(v, {})
            ax.errorbar(
                nfes,
                [r[n] for n in nfes],
                yerr=[sd[n][0] for n in nfes] if sd else None,
                marker="o",
                lw=2.5 if v == variants.LCSC else 1.0,
                capsize=3 if sd else 0,
                color="black" if v == variants.LCSC else None,
                label=v,
            )
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
        ax.bar(
            steps,
            s["coefficients"],
            width=0.8 * (steps[1] - steps[0]) if len(steps) > 1 else 1,
            color="tab:red",
            alpha=0.7,
            label="LCSC",
        )
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
            ax.scatter(
                [int(r["evaluation"]) for r in rescore],
                [float(r["fitness"]) for r in rescore],
                marker="x",
                color="black",
                label="top candidates re-scored",
            )
        ax.set(xlabel="evaluation", ylabel="fitness (FID)", title=model)
        fit = np.array([float(r["fitness"]) for r in rows])
        ax.set_ylim(fit.min() * 0.95, max(np.percentile(fit, 90), min(starts)) * 1.05)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_cost_curve(
    curves: dict[str, list[dict]], full_lcsc: dict[str, float], nfe: dict[str, int], path: Path
) -> None:
    """The training-cost experiment: per model, FID at its search NFE against the fraction of
    training kept, for LCSC and the truncated trail's last checkpoint, with the full run's last,
    best EMA and LCSC as references."""
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for ax, (model, rows) in zip(axes[0], curves.items()):
        x = [r["fraction"] for r in rows]
        ax.plot(x, [r["searched"] for r in rows], marker="o", lw=2.5, color="black", label="lcsc on the first part")
        ax.plot(x, [r["part_last"] for r in rows], marker=".", color="tab:blue", label="that part's last checkpoint")
        ax.axhline(rows[0]["full_last"], ls=":", color="grey", label="full run last")
        if rows[0]["full_ema"] is not None:
            ax.axhline(rows[0]["full_ema"], ls="--", color="grey", label=f"full run {rows[0]['ema']}")
        if model in full_lcsc:
            ax.scatter(
                [1.0], [full_lcsc[model]], marker="*", s=80, color="tab:red", label="lcsc on the full run", zorder=3
            )
        for r in rows:
            if r["speedup"]:
                ax.annotate(
                    f"{r['speedup']:.1f}x",
                    (r["fraction"], r["searched"]),
                    textcoords="offset points",
                    xytext=(4, -12),
                    fontsize=8,
                )
        ax.set(xlabel="fraction of training kept", ylabel=f"FID at NFE {nfe[model]}", title=model, xscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


MAX_GRID_PIXELS = 2**24  # a sample grid is well under a megapixel; matplotlib reads any size whole


def side_by_side(rows: dict[str, Path], path: Path, title: str) -> None:
    """The sample grids of a few variants (each drawn from the same noise) next to each other, each
    under its name, so that a reader compares them image by image."""
    import matplotlib.image as mpimg
    from PIL import Image

    def read(p: Path):  # a grid from a results folder may be anything: its size is read first
        try:
            with Image.open(p) as im:
                width, height = im.size
        except Image.DecompressionBombError as exc:
            raise ValueError(f"{p}: {exc}") from exc
        if width * height > MAX_GRID_PIXELS:
            raise ValueError(f"{p}: {width}x{height} pixels, far more than a grid of samples")
        return mpimg.imread(str(p))

    images = {label: read(p) for label, p in rows.items()}
    fig, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.7), squeeze=False)
    for ax, (label, im) in zip(axes[0], images.items()):
        ax.imshow(im, cmap="gray" if im.ndim == 2 else None, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(label, fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
