"""The results layout, in one place: the workflow's rules and the stages both ask it for paths.

Every path sits under `<results_dir>/<experiment>/`, so experiments never clobber each other.
Methods take plain strings, so `layout.manifest("{model}")` is also a Snakemake pattern.
"""

from __future__ import annotations

from pathlib import Path

# The report's files (stage tabulate), by the name its code uses for each.
REPORT_FILES = {
    "summary_md": "summary.md",
    "summary_csv": "summary.csv",
    "fid_vs_nfe": "fid_vs_nfe.png",
    "coefficients": "coefficients.png",
    "search_curve": "search_curve.png",
}
COST_CURVE = "cost_curve.png"  # the training-cost plot, with cost.fractions only


def dataset_name(data_cfg: dict) -> str:
    """Short name of the configured dataset, used in reference-stats file names."""
    if data_cfg["dataset"] in ("digits", "cifar10"):
        return f"{data_cfg['dataset']}{data_cfg['image_size']}"
    return f"{Path(data_cfg['folder']).name}{data_cfg['image_size']}"


# The feature spaces that stage train_features trains on the dataset (the others load fixed weights).
TRAINED_FEATURES = ("classifier", "autoencoder")


def feature_tag(features_cfg: dict) -> str:
    """Name of the feature space in file names: `classifier`, `autoencoder`, `dinov2`, or `inception-<mode>`."""
    if features_cfg["kind"] == "inception":
        return f"inception-{features_cfg['mode']}"
    return features_cfg["kind"]


def reference_source(cfg: dict) -> tuple[str, str]:
    """(name, split) of the reference images: the train split, or features.reference_folder."""
    folder = cfg["features"].get("reference_folder")
    if folder:
        return Path(folder).expanduser().name, "folder"
    return dataset_name(cfg["data"]), "train"


def search_files(folder: str | Path) -> dict[str, Path]:
    """The files of one search in its folder: the result, the history, the weights, the journal."""
    folder = Path(folder)
    return {
        "coefficients": folder / "coefficients.json",
        "history": folder / "history.csv",
        "best": folder / "best.safetensors",
        "journal": folder / "state" / "journal.jsonl",
    }


class Layout:
    def __init__(self, results_dir: str | Path, experiment: str):
        self.root = Path(results_dir) / experiment

    @classmethod
    def of(cls, cfg: dict) -> Layout:
        return cls(cfg["results_dir"], cfg["experiment"])

    def trail_dir(self, model: str) -> Path:
        return self.root / model / "trail"

    def manifest(self, model: str) -> Path:
        return self.trail_dir(model) / "manifest.json"

    def feature_net(self, tag: str) -> Path:
        """A trained feature network's weights (`classifier`, `autoencoder`), or an Inception
        descriptor (`inception-<mode>.json`)."""
        return self.root / "features" / (f"{tag}.safetensors" if tag in TRAINED_FEATURES else f"{tag}.json")

    def stats(self, dataset: str, split: str, kind: str) -> Path:
        return self.root / "stats" / f"{dataset}-{split}-{kind}.npz"

    def real_grid(self, dataset: str, split: str) -> Path:
        """A grid of the reference images, shown beside the samples in the report."""
        return self.root / "stats" / f"{dataset}-{split}-real.png"

    def baselines(self, model: str) -> Path:
        return self.root / model / "baselines.json"

    def search_dir(self, model: str, nfe, repeat=0) -> Path:
        """One search's folder: `nfe5` (or `nfe3-5-8`) for the first, `nfe5-r1` for repeat 1 (search.repeats)."""
        return self.root / model / "search" / (f"nfe{nfe}" if repeat in (0, "0") else f"nfe{nfe}-r{repeat}")

    def coefficients(self, model: str, nfe, repeat=0) -> Path:
        return search_files(self.search_dir(model, nfe, repeat))["coefficients"]

    def history(self, model: str, nfe, repeat=0) -> Path:
        return search_files(self.search_dir(model, nfe, repeat))["history"]

    def best_weights(self, model: str, nfe, repeat=0) -> Path:
        return search_files(self.search_dir(model, nfe, repeat))["best"]

    def journal(self, model: str, nfe, repeat=0) -> Path:
        return search_files(self.search_dir(model, nfe, repeat))["journal"]

    def eval_json(self, model: str, variant: str) -> Path:
        return self.root / model / "eval" / f"{variant}.json"

    def eval_grid(self, model: str, variant: str) -> Path:
        return self.root / model / "eval" / f"{variant}.png"

    def export_dir(self, model: str, variant: str) -> Path:
        return self.root / model / "export" / variant

    def report_dir(self) -> Path:
        return self.root / "report"

    def report_files(self, cost: bool = False) -> list[Path]:
        """The report's files; `cost`: with the training-cost plot (cost.fractions)."""
        return [self.report_dir() / name for name in [*REPORT_FILES.values(), *([COST_CURVE] if cost else [])]]

    def log(self, rule: str, name: str) -> Path:
        return self.root / "logs" / rule / f"{name}.log"

    def benchmark(self, rule: str, name: str) -> Path:
        """The job's time and memory, as Snakemake's `benchmark:` measures them (a TSV)."""
        return self.root / "benchmarks" / rule / f"{name}.tsv"
