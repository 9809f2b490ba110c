"""Consistency models of diffusers' training scripts (`trail.source: diffusers`, `trail.sampler:
cm`): a `UNet2DModel` trained with `CMStochasticIterativeScheduler`, in the folders diffusers'
consistency-training example writes (the run's files: `diffusers_run`), sampled as
`ConsistencyModelPipeline` samples and exported as a folder it loads.

At NFE n the pipeline sets the scheduler's timesteps: n spread evenly over its
`num_train_timesteps` (`set_timesteps(n)`), or the list it is given (`trail.timesteps`, one list
per NFE), each mapped to a Karras sigma, the first sigma_max. Then for every timestep it calls the
UNet once, on x / sqrt(sigma^2 + sigma_data^2) at the time input 250 ln(sigma), takes the
consistency function

    denoised = c_skip(sigma) x + c_out(sigma) F,  clipped to [-1, 1] where `clip_denoised`,

with c_skip and c_out those of the boundary condition (lcsc.kernel.families.consistency), and
noises it back up to the next sigma: x = denoised + s_noise z sqrt(sigma_next^2 - sigma_min^2)
(after the last step sigma_next is sigma_min: nothing is added). The pipeline draws every z from
its generator; lcsc takes the k-th step's z from the noise tensor ([:, 0] starts the chain), drawn
in advance with it, so that the samples depend only on the noise and the labels. Given the same
noise, they are the pipeline's (tests/kernel/families/test_diffusers_cm.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import largest_nfe
from ..errors import ConfigError, TrailError
from ..io import first_line, json_digest, read_json
from ..models import headline_nfe, nfe_list
from .diffusers_run import CM_SCHEDULER, DiffusersRun, check_scheduler_class, scheduler_file, unet_call


def cm_scheduler(config, where, nfe: int | None = None, timesteps: list[int] | None = None):
    """The run's CMStochasticIterativeScheduler with the timesteps of `nfe` steps (or the list
    `timesteps`) set; what diffusers refuses is a TrailError naming `where`."""
    from diffusers import CMStochasticIterativeScheduler

    if not isinstance(config, dict):
        raise TrailError(
            f"{where}: the scheduler config is a JSON {type(config).__name__}, not an object; give "
            "the run's scheduler_config.json (trail.scheduler)"
        )
    try:
        scheduler = CMStochasticIterativeScheduler.from_config(config)
        if timesteps is not None:
            scheduler.set_timesteps(timesteps=timesteps)
        elif nfe is not None:
            scheduler.set_timesteps(nfe)
    except Exception as exc:
        steps = f" the timesteps {timesteps}" if timesteps is not None else f" {nfe} steps" if nfe else ""
        raise TrailError(
            f"{where}: diffusers' {CM_SCHEDULER} refuses this config or{steps} ({type(exc).__name__}: "
            f"{first_line(exc)}); give the run's own scheduler_config.json (trail.scheduler)"
        ) from None
    return scheduler


def timesteps_by_nfe(lists) -> dict[int, list[int]]:
    """trail.timesteps as NFE -> timesteps (the NFE of a list is its length)."""
    return {len(ts): [int(t) for t in ts] for ts in lists or []}


class ConsistencyPipelineSampler:
    """ConsistencyModelPipeline's loop with the scheduler of the run's config: exactly NFE network
    calls, the noise of every step taken from the noise tensor [B, S, C, H, W] (S >= NFE)."""

    def __init__(self, scheduler_config: dict, where, timesteps=None, max_nfe: int | None = None):
        check_scheduler_class(scheduler_config, consistency=True, where=where)
        cm_scheduler(scheduler_config, where)  # refused here, not at the first sample
        self.config = dict(scheduler_config)
        self.where = where
        self.timesteps = timesteps_by_nfe(timesteps)
        self.noise_steps = max(1, max_nfe or 1)

    def scheduler(self, nfe: int):
        return cm_scheduler(self.config, self.where, nfe, self.timesteps.get(nfe))

    def _sampling(self, nfe: int):
        """The scheduler that samples at `nfe`; an NFE it cannot sample at is a ValueError."""
        if not 1 <= nfe <= self.noise_steps:
            raise ValueError(
                f"consistency sampling at NFE {nfe}: the noise was drawn for 1 to {self.noise_steps} "
                "steps (the largest NFE of consistency.search_nfe and evaluate_nfe)"
            )
        try:
            return self.scheduler(nfe)
        except TrailError as exc:
            # A sampler's contract (lcsc.kernel.families.base) is a ValueError for an NFE it cannot sample at.
            raise ValueError(str(exc)) from None

    def network_calls(self, nfe: int) -> int:
        return len(self._sampling(nfe).timesteps)

    def settings(self, nfe: int | None = None) -> dict:
        chosen = self.timesteps.get(nfe) if nfe is not None else [self.timesteps[n] for n in sorted(self.timesteps)]
        return {
            "sampler": f"diffusers-{CM_SCHEDULER}",
            "scheduler_config": json_digest(self.config)[:16],
            "timesteps": chosen or None,
        }

    @torch.no_grad()
    def sample(
        self, net: nn.Module, noise: torch.Tensor, nfe: int, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Samples from `noise` with exactly `nfe` calls of the UNet (each given `labels` as its
        `class_labels`, for a class-conditional UNet)."""
        scheduler = self._sampling(nfe)
        steps = len(scheduler.timesteps)
        if noise.dim() != 5 or noise.shape[1] < steps:
            raise ValueError(
                f"consistency sampling at NFE {nfe} needs noise [B, >= {steps}, C, H, W], got {tuple(noise.shape)}"
            )
        cfg, call = scheduler.config, unet_call(net, labels)
        x = noise[:, 0] * scheduler.init_noise_sigma
        for k, t in enumerate(scheduler.timesteps):
            # the scheduler's own tensors and operations in its order, so the samples are the pipeline's
            sigma = scheduler.sigmas[k]
            out = call(x / ((sigma**2 + cfg.sigma_data**2) ** 0.5), t)
            c_skip, c_out = scheduler.get_scalings_for_boundary_condition(sigma)
            x = c_out * out + c_skip * x
            if cfg.clip_denoised:
                x = x.clamp(-1, 1)
            if k + 1 < steps:
                sigma_hat = scheduler.sigmas[k + 1].clamp(min=cfg.sigma_min, max=cfg.sigma_max)
                x = x + noise[:, k + 1] * cfg.s_noise * (sigma_hat**2 - cfg.sigma_min**2) ** 0.5
        return x.clamp(-1, 1)


class DiffusersConsistencyFamily(DiffusersRun):
    """A consistency model of a diffusers run (`unet/` or `unet_ema/` of its checkpoint folders),
    sampled as ConsistencyModelPipeline samples with the run's CMStochasticIterativeScheduler."""

    def make_sampler(self, cfg: dict) -> ConsistencyPipelineSampler:
        self.loading_nfe = headline_nfe(cfg["search"]["nfe"]) if "search" in cfg else 1
        return ConsistencyPipelineSampler(
            self.trail.manifest.get("scheduler_config"),
            f"{self.trail.root / 'manifest.json'}: scheduler_config",
            cfg["trail"]["timesteps"],
            max_nfe=largest_nfe(cfg),
        )

    @property
    def loading(self) -> list[str]:
        timesteps = self.sampler.timesteps.get(self.loading_nfe)
        steps = (
            f"num_inference_steps=None, timesteps={timesteps}"
            if timesteps
            else f"num_inference_steps={self.loading_nfe}"
        )
        lines = [
            "from diffusers import ConsistencyModelPipeline",
            "pipe = ConsistencyModelPipeline.from_pretrained('pipeline')  # the scheduler the evaluation used",
        ]
        if self.num_classes is None:
            return [*lines, f"images = pipe(batch_size=16, {steps}).images"]
        return [
            "import torch",
            *lines,
            "labels = torch.arange(16) % pipe.unet.config.num_class_embeds  # the classes to sample",
            f"images = pipe(batch_size=16, class_labels=labels, {steps}).images",
        ]

    def export(self, cfg: dict, net: nn.Module, state: dict[str, torch.Tensor], out: Path) -> list[str]:
        """`pipeline/`, which ConsistencyModelPipeline.from_pretrained loads: the UNet and the run's scheduler."""
        from diffusers import ConsistencyModelPipeline

        net.load_state_dict(state)
        scheduler = cm_scheduler(
            self.trail.manifest["scheduler_config"], f"{self.trail.root / 'manifest.json'}: scheduler_config"
        )
        ConsistencyModelPipeline(unet=net, scheduler=scheduler).save_pretrained(out / "pipeline")
        return ["pipeline/"]

    @classmethod
    def config_errors(cls, cfg: dict) -> list[str]:
        errors = super().config_errors(cfg)
        lists = cfg["trail"]["timesteps"] or []
        for timesteps in lists:
            if any(a <= b for a, b in zip(timesteps, timesteps[1:])):
                errors.append(
                    f"trail.timesteps: {timesteps} must decrease (ConsistencyModelPipeline's timesteps "
                    "run from the noisiest, e.g. [22, 0])"
                )
        lengths = [len(ts) for ts in lists]
        twice = sorted({n for n in lengths if lengths.count(n) > 1})
        if twice:
            errors.append(
                f"trail.timesteps: {lengths.count(twice[0])} lists of {twice[0]} steps; give one list "
                "per NFE (its length)"
            )
        return errors

    @classmethod
    def scheduler_config(cls, cfg: dict, root: Path) -> dict:
        """The run's CMStochasticIterativeScheduler config, with which diffusers sets the timesteps of
        every NFE the config samples at (checked here, not at a later stage)."""
        t, c = cfg["trail"], cfg["consistency"]
        path = scheduler_file(t, root)
        config = read_json(path, "give the run's scheduler_config.json as trail.scheduler")
        check_scheduler_class(config, consistency=True, where=path)
        most = cm_scheduler(config, path).config.num_train_timesteps
        chosen = timesteps_by_nfe(t["timesteps"])
        for key, nfes in (("search_nfe", nfe_list(c["search_nfe"])), ("evaluate_nfe", c["evaluate_nfe"])):
            for nfe in nfes:
                if nfe > most and nfe not in chosen:
                    raise ConfigError(
                        f"consistency.{key}: NFE {nfe}, but the run's scheduler ({path}) has "
                        f"num_train_timesteps {most}: ConsistencyModelPipeline samples at most that "
                        "many steps"
                    )
        for nfe, timesteps in chosen.items():
            if max(timesteps) >= most:
                raise ConfigError(
                    f"trail.timesteps: {timesteps} reaches {max(timesteps)}, but the run's scheduler "
                    f"({path}) has num_train_timesteps {most}; every timestep must be below it"
                )
            # Built only to check it: a list diffusers cannot set fails at import, not at a later stage.
            cm_scheduler(config, path, nfe, timesteps)
        return config


FAMILY = DiffusersConsistencyFamily
