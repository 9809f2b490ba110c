"""The results layout, in one place: the workflow's rules and the stages both ask it for paths.

Every path sits under `<results_dir>/<experiment>/`, so experiments never clobber each other.
Methods take plain strings, so `layout.manifest("{model}")` is also a Snakemake pattern.
"""

from __future__ import annotations

from pathlib import Path


def dataset_name(data_cfg: dict) -> str:
    """Short name of the configured dataset, used in reference-stats file names."""
    if data_cfg["dataset"] == "digits":
        return f"digits{data_cfg['image_size']}"
    return f"{Path(data_cfg['folder']).name}{data_cfg['image_size']}"


class Layout:
    def __init__(self, results_dir: str | Path, experiment: str):
        self.root = Path(results_dir) / experiment

    @classmethod
    def of(cls, cfg: dict) -> "Layout":
        return cls(cfg["results_dir"], cfg["experiment"])

    def trail_dir(self, model: str) -> Path:
        return self.root / model / "trail"

    def manifest(self, model: str) -> Path:
        return self.trail_dir(model) / "manifest.json"

    def feature_net(self, kind: str) -> Path:
        return self.root / "features" / f"{kind}.safetensors"

    def stats(self, dataset: str, split: str, kind: str) -> Path:
        return self.root / "stats" / f"{dataset}-{split}-{kind}.npz"

    def baselines(self, model: str) -> Path:
        return self.root / model / "baselines.json"

    def search_dir(self, model: str, nfe) -> Path:
        return self.root / model / "search" / f"nfe{nfe}"

    def coefficients(self, model: str, nfe) -> Path:
        return self.search_dir(model, nfe) / "coefficients.json"

    def history(self, model: str, nfe) -> Path:
        return self.search_dir(model, nfe) / "history.csv"

    def best_weights(self, model: str, nfe) -> Path:
        return self.search_dir(model, nfe) / "best.safetensors"

    def eval_json(self, model: str, variant: str) -> Path:
        return self.root / model / "eval" / f"{variant}.json"

    def eval_grid(self, model: str, variant: str) -> Path:
        return self.root / model / "eval" / f"{variant}.png"

    def report_dir(self) -> Path:
        return self.root / "report"

    def log(self, rule: str, name: str) -> Path:
        return self.root / "logs" / rule / f"{name}.log"
