"""Stage train_cm: train a consistency model, by distillation from the diffusion model's trail
(cd) or from data (ct), writing its checkpoint trail in the diffusion trail's format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..kernel import variants
from ..kernel.data import load_split
from ..kernel.distributed import Ranks
from ..kernel.errors import ConfigError
from ..kernel.families.consistency import ConsistencyLoss, Parameterization, VPTeacher
from ..kernel.families.diffusion import VPDiffusion
from ..kernel.io import sha256
from ..kernel.nets import build_unet
from ..kernel.tensors import load_tensors
from ..kernel.trail import Trail
from ..kernel.training import train, training_labels

NAME = "train_cm"
MODES = ("cd", "ct")


@dataclass(frozen=True)
class Paths:
    trail: Path  # the folder of the trail; its manifest.json is the rule's output
    teacher: Path | None = None  # cd: the diffusion trail's manifest


def _teacher(cfg: dict, manifest: Path, device: torch.device) -> tuple[VPTeacher, dict]:
    """The diffusion model CD distils, as a denoiser, and what the trail records of it."""
    ccfg = cfg["consistency"]
    trail = Trail.open(manifest)
    if trail.manifest.get("kind") != "dm":
        raise ConfigError(f"--teacher: {manifest} is not a diffusion trail; pass the dm trail's manifest")
    path = variants.checkpoint_file(trail, ccfg["cd"]["teacher"])
    check_teacher_classes(trail.model_config, cfg["model"], manifest)
    net = build_unet(trail.model_config, cfg["data"]["channels"])
    net.load_state_dict(load_tensors(path))
    net.to(device).eval().requires_grad_(False)
    # The teacher's own schedule, from its manifest: its network knows only the noise levels it was
    # trained at, whatever the config says now.
    schedule = VPDiffusion(trail.manifest["diffusion"]["schedule"], trail.manifest["diffusion"]["timesteps"])
    # The teacher file's sha256 joins manifest_extra and so the resume key: a resume state
    # distilled from another teacher is not reused.
    record = {"manifest": str(manifest), "weights": ccfg["cd"]["teacher"], "file": str(path), "sha256": sha256(path)}
    return VPTeacher(net, schedule.alpha_bar, cfg["diffusion"]["clip_denoised"]), record


def check_teacher_classes(teacher: dict, student: dict, manifest: Path) -> None:
    """The distilled model is conditioned as its teacher is: the same classes, and a "no label"
    row in the teacher wherever the student's training drops labels."""
    classes = teacher.get("num_classes")
    if classes != student.get("num_classes"):
        raise ConfigError(
            f"model.num_classes: {student.get('num_classes')} for the consistency model, but its teacher "
            f"{manifest} was trained with {classes}; distil a teacher conditioned the same way"
        )
    if student.get("label_dropout") and not teacher.get("label_dropout"):
        raise ConfigError(
            f"model.label_dropout: {student['label_dropout']} for the consistency model, but its teacher "
            f'{manifest} was trained without it (it has no "no label" embedding to distil)'
        )


def run(cfg: dict, paths: Paths, mode: str, device: torch.device, stage_run=None, ranks: Ranks = Ranks()) -> Path:
    """Train the `mode` consistency model (cfg as lcsc.kernel.models.for_model gives it for cm_<mode>)."""
    if mode not in MODES:
        raise ConfigError(f"--mode: {mode!r}; the consistency modes are {', '.join(MODES)}")
    ccfg = cfg["consistency"]
    with ranks.main_first():  # one process downloads the data, if it must
        data = load_split(cfg["data"], "train")
    extra = {
        "kind": "cm",
        "mode": mode,
        "model_config": cfg["model"],
        "data": cfg["data"],
        "consistency": Parameterization.from_config(ccfg).settings(),
        "training": {k: ccfg[k] for k in ("p_mean", "p_std", "loss", "huber_c")},
    }
    teacher = None
    if mode == "cd":
        if paths.teacher is None:
            raise ConfigError("--teacher: consistency distillation needs the diffusion trail's manifest")
        teacher, extra["teacher"] = _teacher(cfg, paths.teacher, device)
        extra["training"] |= {"cd": ccfg["cd"], "teacher_clip": cfg["diffusion"]["clip_denoised"]}
    else:
        # The curriculum spans the whole run, so its length joins the resume key (which leaves
        # `iterations` out): another length is another training.
        extra["training"] |= {"ct": ccfg["ct"], "curriculum_iterations": cfg["train"]["iterations"]}
    loss = ConsistencyLoss(ccfg, mode, cfg["train"]["iterations"], teacher)
    labels = training_labels(cfg["model"], data)
    # Seeded right before the network is built, so its initial weights depend on the seed alone,
    # not on whatever loading the data or the teacher drew.
    torch.manual_seed(cfg["seed"])
    model = build_unet(cfg["model"], cfg["data"]["channels"])
    if ranks.main:
        print(
            f"[train_cm] consistency {'distillation' if mode == 'cd' else 'training'}: "
            f"{sum(p.numel() for p in model.parameters())} parameters, {len(data.images)} training images, "
            f"{cfg['train']['iterations']} iterations, device {device}" + ranks.describe(),
            flush=True,
        )
    manifest = train(
        model,
        loss,
        data.images,
        cfg["train"],
        paths.trail,
        seed=cfg["seed"],
        device=device,
        run=stage_run,
        desc=f"train_cm {mode}",
        manifest_extra=extra,
        ranks=ranks,
        labels=labels,
    )
    if stage_run is not None and ranks.main:
        stage_run.log_artifact(manifest)
    return manifest
