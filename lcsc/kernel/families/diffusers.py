"""Trails of diffusers' training scripts: `UNet2DModel`s saved with `save_pretrained`, sampled by
diffusers' own schedulers built from the run's scheduler config.

The network comes from `UNet2DModel.from_config` of the checkpoint's `config.json` (kept in the
manifest as `model_config`), its weights from `diffusion_pytorch_model.safetensors`. Sampling is
the loop `DDPMPipeline` runs: `scheduler.set_timesteps(nfe)`, then for every timestep one call of
the network and one `scheduler.step`, so the network is called exactly `nfe` times and the
prediction type (epsilon, v_prediction, sample) is the scheduler config's. diffusers is imported
only when such a trail is used (its import takes seconds).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, TrailError
from ..io import first_line, json_digest
from ..tensors import load_tensors
from .base import Family

# diffusion.sampler -> the diffusers scheduler class that samples with it
SCHEDULERS = {"ddim": "DDIMScheduler", "dpmpp2m": "DPMSolverMultistepScheduler"}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def scheduler_class(sampler: str):
    import diffusers

    if sampler not in SCHEDULERS:
        raise ConfigError(f"diffusion.sampler: {sampler!r} has no diffusers scheduler here (use {', '.join(SCHEDULERS)})")
    return getattr(diffusers, SCHEDULERS[sampler])


def unet_from_config(config, where) -> nn.Module:
    """A UNet2DModel built from its config (a dict: diffusers takes anything else for a path or a
    Hub name and goes online); what diffusers refuses is a TrailError naming `where`."""
    from diffusers import UNet2DModel

    if not isinstance(config, dict):
        raise TrailError(f"{where}: the UNet's config is a JSON {type(config).__name__}, not an object; not a "
                         "config.json that UNet2DModel.save_pretrained writes")
    try:
        return UNet2DModel.from_config(config)
    except Exception as exc:
        raise TrailError(f"{where}: diffusers refuses this UNet config ({type(exc).__name__}: {first_line(exc)}); "
                         "not a config.json that UNet2DModel.save_pretrained writes") from None


def scheduler_from_config(config, sampler: str, where, nfe: int | None = None):
    """The diffusers scheduler of `sampler` from a scheduler config, with `nfe` steps set; what
    diffusers refuses is a TrailError naming `where` (the file or manifest holding the config)."""
    if not isinstance(config, dict):
        raise TrailError(f"{where}: the scheduler config is a JSON {type(config).__name__}, not an object; give "
                         "the run's scheduler_config.json (trail.scheduler)")
    cls = scheduler_class(sampler)
    try:
        scheduler = cls.from_config(config)
        if nfe is not None:
            scheduler.set_timesteps(nfe)
    except Exception as exc:
        raise TrailError(f"{where}: diffusers' {cls.__name__} refuses this scheduler config ({type(exc).__name__}: "
                         f"{first_line(exc)}); give the run's own scheduler_config.json (trail.scheduler)") from None
    return scheduler


class DiffusersSampler:
    """Deterministic sampling with a diffusers scheduler (DDIM with eta 0, or DPM-Solver++ 2M)."""

    noise_steps = None  # one noise image per sample

    def __init__(self, scheduler_config: dict, sampler: str, where="trail.scheduler"):
        scheduler_from_config(scheduler_config, sampler, where)  # refused here, not at the first sample
        prediction = scheduler_config.get("prediction_type", "epsilon")
        if prediction not in PREDICTION_TYPES:
            raise ConfigError(f"trail.scheduler: prediction_type {prediction!r} is not one of "
                              f"{', '.join(PREDICTION_TYPES)}")
        self.config = dict(scheduler_config)
        self.sampler = sampler
        self.where = where
        self.cls = scheduler_class(sampler)

    def scheduler(self, nfe: int):
        return scheduler_from_config(self.config, self.sampler, self.where, nfe)

    def network_calls(self, nfe: int) -> int:
        if nfe < 1:
            raise ValueError(f"nfe must be >= 1, got {nfe}")
        return len(self.scheduler(nfe).timesteps)

    def settings(self, nfe: int | None = None) -> dict:
        return {"sampler": f"diffusers-{self.cls.__name__}", "scheduler_config": json_digest(self.config)[:16]}

    @torch.no_grad()
    def sample(self, net: nn.Module, noise: torch.Tensor, nfe: int) -> torch.Tensor:
        scheduler = self.scheduler(nfe)
        x = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            out = net(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(out, t, x).prev_sample
        return x.clamp(-1, 1)


class DiffusersFamily(Family):
    """A trail imported from diffusers (`trail.source: diffusers`)."""

    name = "diffusers"

    def __init__(self, trail, cfg: dict):
        self.unet_config = trail.model_config
        super().__init__(trail, cfg)

    def check_config(self, cfg: dict) -> None:
        super().check_config(cfg)
        unet = self.trail.model_config
        for key, data_key in (("sample_size", "image_size"), ("in_channels", "channels")):
            if key in unet and unet[key] != cfg["data"][data_key]:
                raise ConfigError(f"data.{data_key}: {cfg['data'][data_key]!r} in the config, but the imported UNet "
                                  f"({self.trail.root / 'manifest.json'}) has {key} {unet[key]!r}")

    def make_sampler(self, cfg: dict) -> DiffusersSampler:
        return DiffusersSampler(self.trail.manifest.get("scheduler_config"), cfg["diffusion"]["sampler"],
                                f"{self.trail.root / 'manifest.json'}: scheduler_config")

    def build_network(self) -> nn.Module:
        return unet_from_config(self.unet_config, f"{self.trail.root / 'manifest.json'}: model_config")

    def load_checkpoint(self, path: str | Path, device="cpu") -> dict[str, torch.Tensor]:
        return load_tensors(path, device)
