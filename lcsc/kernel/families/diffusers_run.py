"""What every trail of a diffusers training script shares, whatever its model samples as: the
`checkpoint-<step>/<unet>/` folders `UNet2DModel.save_pretrained` writes (the network built from
the checkpoint's `config.json`, kept in the manifest as `model_config`, its weights read from
`diffusion_pytorch_model.safetensors`), the EMA a sub-folder of the last one (named for the decay
it had), a class-conditional UNet's classes (`num_class_embeds`), and the run's scheduler config
(`trail.scheduler`), which says how it samples. The diffusion models (`diffusers`) and the
consistency models (`diffusers_cm`) of such runs are its subclasses. diffusers is imported only
when such a trail is used (its import takes seconds).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import FOREIGN
from ..errors import ConfigError, TrailError
from ..io import first_line, inside, read_json
from ..tensors import load_tensors
from .base import ImportedFamily, check_data_classes

WEIGHTS = "diffusion_pytorch_model.safetensors"  # what UNet2DModel.save_pretrained writes
# The scheduler of diffusers' consistency models.
CM_SCHEDULER = "CMStochasticIterativeScheduler"


def unet_from_config(config, where) -> nn.Module:
    """A UNet2DModel built from its config (a dict: diffusers takes anything else for a path or a
    Hub name and goes online); what diffusers refuses is a TrailError naming `where`."""
    from diffusers import UNet2DModel

    if not isinstance(config, dict):
        raise TrailError(
            f"{where}: the UNet's config is a JSON {type(config).__name__}, not an object; not a "
            "config.json that UNet2DModel.save_pretrained writes"
        )
    try:
        return UNet2DModel.from_config(config)
    except Exception as exc:
        raise TrailError(
            f"{where}: diffusers refuses this UNet config ({type(exc).__name__}: {first_line(exc)}); "
            "not a config.json that UNet2DModel.save_pretrained writes"
        ) from None


def check_unet_fits(unet: dict, cfg: dict, where) -> None:
    """The config's images are the UNet's: `data.image_size` its sample_size, `data.channels` its
    in_channels (checked at import, before any stage samples)."""
    unet = unet if isinstance(unet, dict) else {}
    for key, data_key in (("sample_size", "image_size"), ("in_channels", "channels")):
        if key in unet and unet[key] != cfg["data"][data_key]:
            raise ConfigError(
                f"data.{data_key}: {cfg['data'][data_key]!r} in the config, but the UNet ({where}) has "
                f"{key} {unet[key]!r}; set data.{data_key}: {unet[key]!r}"
                + (" (and data.resize if the run resized its images)" if key == "sample_size" else "")
            )


def unet_call(net: nn.Module, labels: torch.Tensor | None):
    """The UNet's output tensor for (x, t), with `labels` as its class_labels where given."""
    if labels is None:
        return lambda x, t: net(x, t).sample
    return lambda x, t: net(x, t, class_labels=labels).sample


def unet_classes(config, where) -> int | None:
    """The classes of a class-conditional UNet2DModel config (`num_class_embeds`, with
    `class_embed_type` null: one embedding row per class), None for an unconditional one; another
    class embedding (timestep, identity) is one line."""
    config = config if isinstance(config, dict) else {}
    kind, classes = config.get("class_embed_type"), config.get("num_class_embeds")
    if kind is not None:
        raise ConfigError(
            f"{where}: class_embed_type {kind!r}; lcsc samples UNets with one embedding per class "
            "(class_embed_type null and num_class_embeds) or none"
        )
    if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 2):
        raise TrailError(f"{where}: num_class_embeds {classes!r} is not a number of classes (an integer >= 2)")
    return classes


class DiffusersRun(ImportedFamily):
    """A trail imported from diffusers (`trail.source: diffusers`): `checkpoint-<step>/<unet>/`
    folders of a training script, the EMA a sub-folder of the last one, the scheduler the run's.
    A subclass samples it (`make_sampler`) and reads the run's scheduler config (`scheduler_config`)."""

    name = "diffusers"
    record_keys = ("unet", "ema")
    # num_classes too: its classes come from the UNet's config.
    unread_keys = ("key", "prefix", "factory", "code", "num_classes")
    default_files = "checkpoint-*/{unet}/" + WEIGHTS
    default_pattern = r"checkpoint-(\d+)"
    pattern_on_path = True

    def __init__(self, trail, cfg: dict):
        self.unet_config = trail.model_config
        super().__init__(trail, cfg)

    def check_config(self, cfg: dict) -> None:
        super().check_config(cfg)
        check_unet_fits(self.trail.model_config, cfg, self.trail.root / "manifest.json")

    def build_network(self) -> nn.Module:
        return unet_from_config(self.unet_config, f"{self.trail.root / 'manifest.json'}: model_config")

    def load_checkpoint(self, path: str | Path, device="cpu") -> dict[str, torch.Tensor]:
        return load_tensors(path, device)

    @property
    def num_classes(self) -> int | None:
        return unet_classes(self.unet_config, f"{self.trail.root / 'manifest.json'}: model_config")

    @classmethod
    def config_errors(cls, cfg: dict) -> list[str]:
        t, errors = cfg["trail"], super().config_errors(cfg)
        for key in ("unet", "ema"):  # one sub-folder of a checkpoint folder each
            # Only a plain folder name: '.', '..' or a path would lead out of the checkpoint folder the
            # name is joined to.
            if t[key] is not None and (not t[key] or t[key] in (".", "..") or "/" in t[key] or "\\" in t[key]):
                errors.append(
                    f"trail.{key}: {t[key]!r} must name one sub-folder of a checkpoint folder (e.g. "
                    f"{'unet' if key == 'unet' else 'unet_ema'}), not a path"
                )
        return errors

    @classmethod
    def ema_files(cls, t: dict, root: Path) -> tuple[Path | None, set[Path]]:
        """The EMA: the sub-folder trail.ema of the last checkpoint folder, named for the decay it had."""
        if not t["ema"]:
            return None, set()
        # The last checkpoint's weights: .../checkpoint-<step>/<unet>/<weights>.
        last = cls.checkpoint_files(t, root)[-1][1]
        path = last.parent.parent / t["ema"] / WEIGHTS
        if not path.is_file():
            raise TrailError(
                f"{path}: trail.ema {t['ema']!r} names no EMA folder in the last checkpoint; set trail.ema "
                "to its folder (unet_ema in diffusers' examples) or null"
            )
        if not inside(path, root):
            raise TrailError(
                f"{path}: the EMA's weights lie outside trail.path {root} (a symlink leads out); a "
                "trail's files stay in its folder"
            )
        settings = read_json(path.parent / "config.json", "the EMA's config.json is missing", keys=())
        recorded = settings.get("decay") if isinstance(settings, dict) else None
        # bool is a subclass of int in Python: a `true` decay must not pass as a number.
        if not isinstance(recorded, (int, float, type(None))) or isinstance(recorded, bool):
            raise TrailError(
                f"{path.parent / 'config.json'}: decay {recorded!r} is not a number; not the config "
                "diffusers' EMAModel.save_pretrained writes"
            )
        check_ema_decay(float(t["ema_decay"]), recorded, settings, path.parent / "config.json")
        return path, set()

    @classmethod
    def skipped_folders(cls, t: dict, root: Path) -> list[tuple[str, str]]:
        """The `checkpoint-<step>/` folders (with the default trail.files) that hold no UNet weights,
        each with what it lacks."""
        if t["files"]:
            return []
        wanted = f"{t['unet']}/{WEIGHTS}"
        out = []
        for folder in sorted(p for p in root.glob("checkpoint-*") if p.is_dir()):
            if not (folder / wanted).is_file():
                has = sorted(c.name for c in folder.iterdir())[:4]
                out.append(
                    (
                        folder.name,
                        f"no {wanted} in it (it holds {', '.join(has) if has else 'nothing'}); "
                        "a checkpoint saved without its UNet, or trail.unet names another folder",
                    )
                )
        return out

    @classmethod
    def reader(cls, t: dict):
        return lambda path: load_tensors(path, fix=FOREIGN)

    @classmethod
    def network_state(cls, t: dict, last: Path) -> dict[str, torch.Tensor]:
        config_file = last.parent / "config.json"
        return unet_from_config(read_json(config_file, "the UNet's config.json is missing"), config_file).state_dict()

    @classmethod
    def manifest_extra(cls, cfg: dict, root: Path, last: Path) -> dict:
        """The UNet's config (checked against the config's images and classes) and the run's
        scheduler config (checked by the subclass that samples it)."""
        model_config = read_json(last.parent / "config.json", "the UNet's config.json is missing")
        check_unet_fits(model_config, cfg, last.parent / "config.json")
        check_data_classes(unet_classes(model_config, last.parent / "config.json"), cfg, last.parent / "config.json")
        return {
            "model_config": model_config,
            "scheduler_config": cls.scheduler_config(cfg, root),
            **({"sampler": "cm"} if cfg["trail"]["sampler"] == "cm" else {}),
        }

    @classmethod
    def scheduler_config(cls, cfg: dict, root: Path) -> dict:
        """The run's scheduler config, checked to be one this family samples as the trainer did."""
        raise NotImplementedError


def scheduler_file(t: dict, root: Path) -> Path:
    """The run's scheduler_config.json: trail.scheduler, or where a pipeline's save_pretrained writes it."""
    path = Path(t["scheduler"]).expanduser() if t["scheduler"] else root / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        raise ConfigError(
            f"trail.scheduler: {path} does not exist; give the run's scheduler_config.json (what "
            "the pipeline's save_pretrained writes under scheduler/)"
        )
    return path


def check_scheduler_class(config, consistency: bool, where) -> None:
    """A consistency model's scheduler (CMStochasticIterativeScheduler) is sampled with trail.sampler cm,
    every other scheduler with dm: the other way round is one line, never samples of the wrong kind."""
    name = config.get("_class_name") if isinstance(config, dict) else None
    if name is None or (name == CM_SCHEDULER) == consistency:
        return
    if consistency:
        raise ConfigError(
            f"trail.sampler: cm, but {where} is a {name}'s config, a diffusion model's; set "
            "trail.sampler: dm (the default) or give the consistency run's scheduler config"
        )
    raise ConfigError(
        f"trail.sampler: dm, but {where} is a {CM_SCHEDULER}'s config, a consistency model's "
        "(ConsistencyModelPipeline); set trail.sampler: cm"
    )


EMA_SCHEDULE = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma", "power")


def check_ema_decay(configured: float, recorded, settings, where: Path) -> None:
    """trail.ema_decay names the kept EMA, so it must be the decay the run's EMA had at its last
    update: with warm-up (or diffusers' default schedule) that is below the recorded maximum until
    late in a run. Equal within 5% of 1 - decay (0.998 for 0.99801)."""
    used = effective_decay(settings)
    # Settings without the schedule: only the recorded decay can be compared.
    if used is None:
        if recorded is not None and float(recorded) != configured:
            raise ConfigError(f"trail.ema_decay: {configured} in the config, but {where} records decay {recorded}")
        return
    # Compared on 1 - decay, the EMA's horizon: 0.999 and 0.9995 differ twofold there, though by
    # 0.05% as decays. A decay of 1 has no horizon (nor a log), so it must match exactly.
    if used != configured and (used >= 1 or configured >= 1 or abs(math.log((1 - used) / (1 - configured))) > 0.05):
        schedule = ", ".join(f"{k} {settings[k]}" for k in EMA_SCHEDULE if k in settings)
        raise ConfigError(
            f"trail.ema_decay: {configured} in the config, but the run's EMA averaged with decay "
            f"{used:.6g} at its last update ({where}: {schedule}); set trail.ema_decay: {used:.4g} "
            "so that the kept EMA is named for the decay it had"
        )


def effective_decay(settings) -> float | None:
    """The decay diffusers' EMAModel applied at its last update, from the settings its
    save_pretrained records (None where they are incomplete): after `update_after_step`, with
    warm-up 1 - (1 + step / inv_gamma)^-power, else (1 + step) / (10 + step), capped by `decay`
    and floored by `min_decay`."""
    if not isinstance(settings, dict):
        return None
    try:
        decay, low = float(settings["decay"]), float(settings.get("min_decay", 0.0))
        # Mirrors diffusers' EMAModel.get_decay step for step, its `- 1` included.
        step = max(0, int(settings["optimization_step"]) - int(settings.get("update_after_step", 0)) - 1)
        if step <= 0:
            return 0.0
        if settings.get("use_ema_warmup"):
            value = 1 - (1 + step / float(settings.get("inv_gamma", 1.0))) ** -float(settings.get("power", 2 / 3))
        else:
            value = (1 + step) / (10 + step)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return max(min(value, decay), low)
