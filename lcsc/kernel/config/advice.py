"""Warnings: settings that are legal but certainly useless, printed at parse time."""

from __future__ import annotations

from .. import variants
from ..models import for_model, imported, models, truncation
from ..paths import TRAINED_FEATURES

# Training images of the datasets whose size is known without reading them.
DATASET_SIZES = {"digits": 1797, "cifar10": 50000}


def config_warnings(cfg: dict) -> list[str]:
    """Settings that are legal but certainly useless; the workflow and the CLI print them at parse time."""
    out = _ema_warnings(cfg) + _sample_warnings(cfg)
    if cfg["export"]["register"] and not cfg["mlflow"]["enabled"]:
        out.append(
            f"export.register: {cfg['export']['register']!r} is set, but mlflow.enabled is false: nothing "
            "is logged, so nothing is registered (enable MLflow to register the exports)"
        )
    return out + _batch_warnings(cfg)


def _ema_warnings(cfg: dict) -> list[str]:
    """An EMA too slow for the training's length still weighs its random start."""
    out = []
    for model in models(cfg):
        if truncation(model) is not None or imported(cfg):
            continue
        t = for_model(cfg, model)["train"]
        for decay in t["ema_decays"]:
            init_weight = decay ** t["iterations"]
            if init_weight > 0.05:
                key = (
                    "consistency.train.ema_decays"
                    if model != "dm" and cfg["consistency"]["train"]["ema_decays"]
                    else "train.ema_decays"
                )
                teacher = (
                    model == "dm"
                    and "cd" in cfg["consistency"]["modes"]
                    and cfg["consistency"]["cd"]["teacher"] == variants.kept_ema(decay)
                )
                out.append(
                    f"{key}: the EMA {decay} of {model} averages over about {1 / (1 - decay):.0f} steps, "
                    f"but {model} trains {t['iterations']}; its random start still weighs "
                    f"{init_weight:.0%} in ema_{decay}"
                    + (
                        "; it is the consistency-distillation teacher (consistency.cd.teacher): "
                        "use a shorter decay or train longer"
                        if teacher
                        else ""
                    )
                )
    return out


def _sample_warnings(cfg: dict) -> list[str]:
    """No more samples than feature dimensions: their covariance is singular."""
    out = []
    kind = cfg["features"]["kind"]
    # (the autoencoder adds its reconstruction error)
    dim = (
        cfg["features"]["dim"] + (kind == "autoencoder")
        if kind in TRAINED_FEATURES
        else {"inception": 2048, "dinov2": 1024}[kind]
    )
    for key, n in (
        ("search.samples", cfg["search"]["samples"]),
        ("search.rescore_samples", cfg["search"]["rescore_samples"]),
        ("evaluate.samples", cfg["evaluate"]["samples"]),
        ("consistency.search_samples", cfg.get("consistency", {}).get("search_samples")),
    ):
        if n is not None and n <= dim:
            out.append(
                f"{key}: {n} samples in a {dim}-d feature space give a singular covariance; FID is "
                f"then dominated by its bias (use more than {dim} samples to compare models)"
            )
    return out


def _train_images(cfg: dict) -> int | None:
    d = cfg["data"]
    if d["dataset"] == "cifar10":
        return DATASET_SIZES["cifar10"]
    if d["dataset"] == "digits":
        n = DATASET_SIZES["digits"]
        return n - max(1, int(round(n * d["test_fraction"])))
    return None


def _batch_warnings(cfg: dict) -> list[str]:
    """A batch larger than the training set repeats images in every batch."""
    out = []
    n_train = _train_images(cfg)
    if n_train is not None:
        for key, size in (
            ("train.batch_size", cfg["train"]["batch_size"]),
            ("features.batch_size", cfg["features"]["batch_size"]),
        ):
            if size > n_train:
                out.append(
                    f"{key}: {size} exceeds the {n_train} training images of {cfg['data']['dataset']}; "
                    "every batch repeats images"
                )
    return out
