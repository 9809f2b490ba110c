"""Diffusion models of diffusers' training scripts (the run's files: `diffusers_run`), sampled by
diffusers' own schedulers built from the run's scheduler config.

Sampling is the loop `DDPMPipeline` runs: `scheduler.set_timesteps(nfe)`, then for every timestep one call of
the network and one step, so the network is called exactly `nfe` times.

Samples are the trainer's: every setting of the run's scheduler config that changes them (the
betas, `prediction_type`, `timestep_spacing`, `steps_offset`, `clip_sample` and its range,
`thresholding`) is honoured or refused in one line (`check_scheduler`, at import and whenever a
sampler is built). DDIM and DDPM honour them all themselves. DPM-Solver++ has no `clip_sample`, so
where the run clips, lcsc clips its predicted clean image at every step as DDPMPipeline does
(`x0_clip` in the sampler's settings, and so in every fitness key and report). `ddpm` is the
trainer's own ancestral sampler: stochastic, it takes one noise image per step, drawn in advance
with the rest of the noise, so its samples depend only on the noise tensor, like every other
sampler's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import largest_nfe
from ..errors import ConfigError, TrailError
from ..io import first_line, json_digest, read_json
from .diffusers_run import DiffusersRun, check_scheduler_class, scheduler_file, unet_call

# diffusion.sampler -> the diffusers scheduler class that samples with it
SCHEDULERS = {"ddim": "DDIMScheduler", "dpmpp2m": "DPMSolverMultistepScheduler", "ddpm": "DDPMScheduler"}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# The schedulers whose config says clip_sample: true when it does not say it (their class default)
CLIPPING_BY_DEFAULT = ("DDPMScheduler", "DDIMScheduler")
# (fixed_large_log is left out: diffusers' own DDPM step takes the square root of a log there)
DDPM_VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large")


def scheduler_class(sampler: str):
    import diffusers

    if sampler not in SCHEDULERS:
        raise ConfigError(
            f"diffusion.sampler: {sampler!r} has no diffusers scheduler here (use {', '.join(SCHEDULERS)})"
        )
    return getattr(diffusers, SCHEDULERS[sampler])


def scheduler_from_config(config, sampler: str, where, nfe: int | None = None):
    """The diffusers scheduler of `sampler` from a scheduler config, with `nfe` steps set; what
    diffusers refuses is a TrailError naming `where` (the file or manifest holding the config)."""
    if not isinstance(config, dict):
        raise TrailError(
            f"{where}: the scheduler config is a JSON {type(config).__name__}, not an object; give "
            "the run's scheduler_config.json (trail.scheduler)"
        )
    cls = scheduler_class(sampler)
    try:
        scheduler = cls.from_config(config)
        if nfe is not None:
            scheduler.set_timesteps(nfe)
    except Exception as exc:
        raise TrailError(
            f"{where}: diffusers' {cls.__name__} refuses this scheduler config ({type(exc).__name__}: "
            f"{first_line(exc)}); give the run's own scheduler_config.json (trail.scheduler)"
        ) from None
    return scheduler


def x0_clip(config: dict) -> float | None:
    """The range the trainer's pipeline clips the predicted clean image to, or None: its
    `clip_sample` (the class default where the config does not say it), unless `thresholding`,
    which takes its place in every diffusers scheduler."""
    clips = config.get("clip_sample", config.get("_class_name", "DDPMScheduler") in CLIPPING_BY_DEFAULT)
    if not clips or config.get("thresholding"):
        return None
    return float(config.get("clip_sample_range", 1.0))


def check_scheduler(config: dict, sampler: str, where) -> None:
    """Every setting of the run's scheduler config that changes samples is honoured by `sampler`,
    or this is one line naming it. The class takes what its constructor names; the rest is
    honoured here (DPM-Solver++'s x0 clip) or meaningless to it (a deterministic sampler adds no
    variance: `variance_type` fixed_* changes only DDPM's)."""
    if not isinstance(config, dict):
        return  # scheduler_from_config's own line says what it is
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ConfigError(f"{where}: prediction_type {prediction!r} is not one of {', '.join(PREDICTION_TYPES)}")
    variance = config.get("variance_type")
    if variance in ("learned", "learned_range"):
        raise ConfigError(
            f"{where}: variance_type {variance!r} (a UNet that predicts its variance) is not "
            "sampled here; lcsc samples UNets with a fixed variance"
        )
    if sampler == "ddpm" and variance not in (None, *DDPM_VARIANCES):
        raise ConfigError(f"{where}: variance_type {variance!r} is not one of {', '.join(DDPM_VARIANCES)}")
    if sampler == "ddpm" and config.get("thresholding"):
        raise ConfigError(
            f"{where}: thresholding: true is not sampled by lcsc's DDPM loop; use diffusion.sampler "
            "ddim or dpmpp2m (their schedulers threshold as the run's does)"
        )
    if (
        sampler == "dpmpp2m"
        and x0_clip(config) is not None
        and config.get("algorithm_type", "dpmsolver++") != "dpmsolver++"
    ):
        raise ConfigError(
            f"{where}: clip_sample: true with algorithm_type {config['algorithm_type']!r}; lcsc clips "
            "the predicted clean image of DPM-Solver++ (algorithm_type dpmsolver++) only"
        )


class DiffusersSampler:
    """Sampling with the run's scheduler: DDIM (eta 0) or DPM-Solver++ 2M, deterministic, or the
    trainer's DDPM ancestral sampler (`noise_steps`: one noise image per step up to `max_nfe`)."""

    def __init__(self, scheduler_config: dict, sampler: str, where="trail.scheduler", max_nfe: int | None = None):
        check_scheduler(scheduler_config, sampler, where)
        # Built once and dropped: a config diffusers refuses fails here, not at the first sample.
        scheduler_from_config(scheduler_config, sampler, where)
        self.config = dict(scheduler_config)
        self.sampler = sampler
        self.where = where
        self.cls = scheduler_class(sampler)
        # lcsc's own x0 clip: DPM-Solver++ where the trainer's pipeline clips (the others clip themselves)
        self.x0_clip = x0_clip(self.config) if sampler == "dpmpp2m" else None
        # DDPM takes the chain's starting image plus one variance noise per step, up to the largest NFE.
        self.noise_steps = None if sampler != "ddpm" else 1 + (max_nfe or 1)

    def scheduler(self, nfe: int):
        return scheduler_from_config(self.config, self.sampler, self.where, nfe)

    def network_calls(self, nfe: int) -> int:
        if nfe < 1:
            raise ValueError(f"nfe must be >= 1, got {nfe}")
        if self.noise_steps is not None and nfe >= self.noise_steps:
            raise ValueError(
                f"DDPM sampling at NFE {nfe}: the noise was drawn for at most {self.noise_steps - 1} "
                "steps (the largest NFE of search.nfe and evaluate.nfe)"
            )
        return len(self.scheduler(nfe).timesteps)

    def settings(self, nfe: int | None = None) -> dict:
        return {
            "sampler": f"diffusers-{self.cls.__name__}",
            "scheduler_config": json_digest(self.config)[:16],
            "x0_clip": self.x0_clip,
        }

    @torch.no_grad()
    def sample(
        self, net: nn.Module, noise: torch.Tensor, nfe: int, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Samples from `noise` with exactly `nfe` calls of the UNet (each given `labels` as its
        `class_labels`, for a class-conditional UNet)."""
        call = unet_call(net, labels)
        if self.sampler == "ddpm":
            return self._ancestral(call, noise, nfe)
        scheduler = self.scheduler(nfe)
        if self.x0_clip is not None:
            _clip_x0(scheduler, self.x0_clip)
        x = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            out = call(scheduler.scale_model_input(x, t), t)
            x = scheduler.step(out, t, x).prev_sample
        return x.clamp(-1, 1)

    def _ancestral(self, call, noise: torch.Tensor, nfe: int) -> torch.Tensor:
        """DDPMScheduler's step (Ho et al. 2020, eq. 7) with the variance noise taken from `noise`
        ([B, steps, C, H, W]: [:, 0] starts the chain, [:, k + 1] is the k-th step's), so that with
        noise drawn as DDPMPipeline draws it from one generator the samples are the pipeline's."""
        self.network_calls(nfe)
        if noise.dim() != 5 or noise.shape[1] < nfe + 1:
            raise ValueError(
                f"DDPM sampling at NFE {nfe} needs noise [B, >= {nfe + 1}, C, H, W], got {tuple(noise.shape)}"
            )
        scheduler = self.scheduler(nfe)
        cfg = scheduler.config
        abar = scheduler.alphas_cumprod.to(noise.device, torch.float32)
        one = torch.ones((), device=noise.device)
        x = noise[:, 0]
        for k, t in enumerate(scheduler.timesteps):
            t = int(t)
            out = call(x, torch.full((x.shape[0],), t, device=x.device))
            prev = int(scheduler.previous_timestep(t))
            # Past the last timestep (prev < 0) there is no alpha_bar: diffusers' DDPM step takes 1 there,
            # the clean image.
            ab, ab_prev = abar[t], (abar[prev] if prev >= 0 else one)
            alpha, beta = ab / ab_prev, 1 - ab / ab_prev
            if cfg.prediction_type == "epsilon":
                x0 = (x - (1 - ab) ** 0.5 * out) / ab**0.5
            elif cfg.prediction_type == "sample":
                x0 = out
            else:  # v_prediction
                x0 = ab**0.5 * x - (1 - ab) ** 0.5 * out
            if cfg.clip_sample:
                x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
            x = (ab_prev**0.5 * beta / (1 - ab)) * x0 + (alpha**0.5 * (1 - ab_prev) / (1 - ab)) * x
            # The step to the clean image adds no noise, as in diffusers' own DDPM step.
            if t > 0:
                x = x + _ddpm_std(cfg.variance_type, beta, ab, ab_prev) * noise[:, k + 1]
        return x.clamp(-1, 1)


def _ddpm_std(variance_type: str, beta, ab, ab_prev):
    """The standard deviation DDPMScheduler adds at a step: the posterior's (fixed_small, clamped
    at 1e-20 as diffusers does; fixed_small_log through its log) or beta_t's (fixed_large)."""
    if variance_type == "fixed_large":
        return beta**0.5
    small = torch.clamp((1 - ab_prev) / (1 - ab) * beta, min=1e-20)
    return torch.exp(0.5 * torch.log(small)) if variance_type == "fixed_small_log" else small**0.5


def _clip_x0(scheduler, bound: float) -> None:
    """DPM-Solver++ works on its predicted clean image (`convert_model_output`); clipping what that
    returns clips x0 at every step, as DDPMScheduler does with clip_sample."""
    convert = scheduler.convert_model_output

    def clipped(*args, **kwargs):
        return convert(*args, **kwargs).clamp(-bound, bound)

    scheduler.convert_model_output = clipped


class DiffusersFamily(DiffusersRun):
    """A diffusion model of a diffusers run, sampled by the run's scheduler config with
    `diffusion.sampler` (DDIM, DPM-Solver++ or the trainer's DDPM)."""

    diffusion_samplers = ("ddim", "dpmpp2m", "ddpm")
    PIPELINE_LOADING = [
        "from diffusers import DDPMPipeline, UNet2DModel",
        "pipe = DDPMPipeline.from_pretrained('pipeline')  # the scheduler the evaluation used",
        "images = pipe(batch_size=16, num_inference_steps=5).images",
        "unet = UNet2DModel.from_pretrained('unet')  # or the network alone",
    ]

    def make_sampler(self, cfg: dict) -> DiffusersSampler:
        return DiffusersSampler(
            self.trail.manifest.get("scheduler_config"),
            cfg["diffusion"]["sampler"],
            f"{self.trail.root / 'manifest.json'}: scheduler_config",
            max_nfe=largest_nfe(cfg),
        )

    @property
    def loading(self) -> list[str]:
        if self.num_classes is None:
            return self.PIPELINE_LOADING
        return [
            "import torch",
            "from diffusers import UNet2DModel, " + SCHEDULERS[self.sampler.sampler],
            "unet = UNet2DModel.from_pretrained('unet')",
            f"scheduler = {SCHEDULERS[self.sampler.sampler]}.from_pretrained('scheduler')  # the evaluation's",
            "labels = torch.arange(16) % unet.config.num_class_embeds  # the classes to sample",
            "scheduler.set_timesteps(5)",
            "x = torch.randn(16, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)",
            "x = x * scheduler.init_noise_sigma",
            "with torch.no_grad():",
            "    for t in scheduler.timesteps:",
            "        eps = unet(scheduler.scale_model_input(x, t), t, class_labels=labels).sample",
            "        x = scheduler.step(eps, t, x).prev_sample",
        ]

    def export(self, cfg: dict, net: nn.Module, state: dict[str, torch.Tensor], out: Path) -> list[str]:
        """A `save_pretrained` UNet folder `unet/`, and `pipeline/` that DDPMPipeline.from_pretrained
        loads, with the scheduler the evaluation sampled with; for a class-conditional UNet, which
        DDPMPipeline cannot condition, `unet/` and that scheduler in `scheduler/`."""
        from diffusers import DDPMPipeline

        net.load_state_dict(state)
        net.save_pretrained(out / "unet")
        scheduler = scheduler_from_config(
            self.trail.manifest["scheduler_config"],
            cfg["diffusion"]["sampler"],
            f"{self.trail.root / 'manifest.json'}: scheduler_config",
        )
        if self.num_classes is not None:
            scheduler.save_pretrained(out / "scheduler")
            return ["unet/", "scheduler/"]
        DDPMPipeline(unet=net, scheduler=scheduler).save_pretrained(out / "pipeline")
        return ["unet/", "pipeline/"]

    @classmethod
    def config_errors(cls, cfg: dict) -> list[str]:
        errors = super().config_errors(cfg)
        if cfg["trail"]["timesteps"]:
            errors.append(
                "trail.timesteps: set, but trail.sampler is dm; the timesteps are a diffusers consistency "
                "model's (trail.sampler: cm), a diffusion model samples with diffusion.sampler"
            )
        return errors

    @classmethod
    def scheduler_config(cls, cfg: dict, root: Path) -> dict:
        return run_scheduler_config(cfg["trail"], root, cfg["diffusion"]["sampler"])


def run_scheduler_config(t: dict, root: Path, sampler: str) -> dict:
    """The run's scheduler config (trail.scheduler, or where DDPMPipeline.save_pretrained writes it),
    accepted by diffusers and sampled by `sampler` as the trainer's pipeline samples it."""
    path = scheduler_file(t, root)
    config = read_json(path, "give the run's scheduler_config.json as trail.scheduler")
    check_scheduler_class(config, consistency=False, where=path)
    # diffusers accepts it: checked here, at import, not at a later stage.
    scheduler_from_config(config, sampler, path, nfe=1)
    # And lcsc samples it as the trainer's pipeline does.
    check_scheduler(config, sampler, path)
    return config


FAMILY = DiffusersFamily
