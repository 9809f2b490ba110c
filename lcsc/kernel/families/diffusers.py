"""Trails of diffusers' training scripts: `UNet2DModel`s saved with `save_pretrained`, sampled by
diffusers' own schedulers built from the run's scheduler config.

The network comes from `UNet2DModel.from_config` of the checkpoint's `config.json` (kept in the
manifest as `model_config`), its weights from `diffusion_pytorch_model.safetensors`. Sampling is
the loop `DDPMPipeline` runs: `scheduler.set_timesteps(nfe)`, then for every timestep one call of
the network and one step, so the network is called exactly `nfe` times. diffusers is imported
only when such a trail is used (its import takes seconds).

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

import math
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import FOREIGN
from ..config import largest_nfe
from ..errors import ConfigError, TrailError
from ..io import first_line, inside, json_digest, read_json
from ..tensors import load_tensors
from .base import ImportedFamily, check_data_classes

WEIGHTS = "diffusion_pytorch_model.safetensors"  # what UNet2DModel.save_pretrained writes

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
        raise ConfigError(f"{where}: variance_type {variance!r} (a UNet that predicts its variance) is not "
                          "sampled here; lcsc samples UNets with a fixed variance")
    if sampler == "ddpm" and variance not in (None, *DDPM_VARIANCES):
        raise ConfigError(f"{where}: variance_type {variance!r} is not one of {', '.join(DDPM_VARIANCES)}")
    if sampler == "ddpm" and config.get("thresholding"):
        raise ConfigError(f"{where}: thresholding: true is not sampled by lcsc's DDPM loop; use diffusion.sampler "
                          "ddim or dpmpp2m (their schedulers threshold as the run's does)")
    if sampler == "dpmpp2m" and x0_clip(config) is not None and \
            config.get("algorithm_type", "dpmsolver++") != "dpmsolver++":
        raise ConfigError(f"{where}: clip_sample: true with algorithm_type {config['algorithm_type']!r}; lcsc clips "
                          "the predicted clean image of DPM-Solver++ (algorithm_type dpmsolver++) only")


def check_unet_fits(unet: dict, cfg: dict, where) -> None:
    """The config's images are the UNet's: `data.image_size` its sample_size, `data.channels` its
    in_channels (checked at import, before any stage samples)."""
    unet = unet if isinstance(unet, dict) else {}
    for key, data_key in (("sample_size", "image_size"), ("in_channels", "channels")):
        if key in unet and unet[key] != cfg["data"][data_key]:
            raise ConfigError(f"data.{data_key}: {cfg['data'][data_key]!r} in the config, but the UNet ({where}) has "
                              f"{key} {unet[key]!r}; set data.{data_key}: {unet[key]!r}"
                              + (" (and data.resize if the run resized its images)" if key == "sample_size" else ""))


class DiffusersSampler:
    """Sampling with the run's scheduler: DDIM (eta 0) or DPM-Solver++ 2M, deterministic, or the
    trainer's DDPM ancestral sampler (`noise_steps`: one noise image per step up to `max_nfe`)."""

    def __init__(self, scheduler_config: dict, sampler: str, where="trail.scheduler", max_nfe: int | None = None):
        check_scheduler(scheduler_config, sampler, where)
        scheduler_from_config(scheduler_config, sampler, where)  # refused here, not at the first sample
        self.config = dict(scheduler_config)
        self.sampler = sampler
        self.where = where
        self.cls = scheduler_class(sampler)
        # lcsc's own x0 clip: DPM-Solver++ where the trainer's pipeline clips (the others clip themselves)
        self.x0_clip = x0_clip(self.config) if sampler == "dpmpp2m" else None
        self.noise_steps = None if sampler != "ddpm" else 1 + (max_nfe or 1)

    def scheduler(self, nfe: int):
        return scheduler_from_config(self.config, self.sampler, self.where, nfe)

    def network_calls(self, nfe: int) -> int:
        if nfe < 1:
            raise ValueError(f"nfe must be >= 1, got {nfe}")
        if self.noise_steps is not None and nfe >= self.noise_steps:
            raise ValueError(f"DDPM sampling at NFE {nfe}: the noise was drawn for at most {self.noise_steps - 1} "
                             "steps (the largest NFE of search.nfe and evaluate.nfe)")
        return len(self.scheduler(nfe).timesteps)

    def settings(self, nfe: int | None = None) -> dict:
        return {"sampler": f"diffusers-{self.cls.__name__}", "scheduler_config": json_digest(self.config)[:16],
                "x0_clip": self.x0_clip}

    @torch.no_grad()
    def sample(self, net: nn.Module, noise: torch.Tensor, nfe: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Samples from `noise` with exactly `nfe` calls of the UNet (each given `labels` as its
        `class_labels`, for a class-conditional UNet)."""
        call = _unet_call(net, labels)
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
            raise ValueError(f"DDPM sampling at NFE {nfe} needs noise [B, >= {nfe + 1}, C, H, W], "
                             f"got {tuple(noise.shape)}")
        scheduler = self.scheduler(nfe)
        cfg = scheduler.config
        abar = scheduler.alphas_cumprod.to(noise.device, torch.float32)
        one = torch.ones((), device=noise.device)
        x = noise[:, 0]
        for k, t in enumerate(scheduler.timesteps):
            t = int(t)
            out = call(x, torch.full((x.shape[0],), t, device=x.device))
            prev = int(scheduler.previous_timestep(t))
            ab, ab_prev = abar[t], (abar[prev] if prev >= 0 else one)
            alpha, beta = ab / ab_prev, 1 - ab / ab_prev
            if cfg.prediction_type == "epsilon":
                x0 = (x - (1 - ab) ** 0.5 * out) / ab ** 0.5
            elif cfg.prediction_type == "sample":
                x0 = out
            else:  # v_prediction
                x0 = ab ** 0.5 * x - (1 - ab) ** 0.5 * out
            if cfg.clip_sample:
                x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
            x = (ab_prev ** 0.5 * beta / (1 - ab)) * x0 + (alpha ** 0.5 * (1 - ab_prev) / (1 - ab)) * x
            if t > 0:
                x = x + _ddpm_std(cfg.variance_type, beta, ab, ab_prev) * noise[:, k + 1]
        return x.clamp(-1, 1)


def _unet_call(net: nn.Module, labels: torch.Tensor | None):
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
        raise ConfigError(f"{where}: class_embed_type {kind!r}; lcsc samples UNets with one embedding per class "
                          "(class_embed_type null and num_class_embeds) or none")
    if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 2):
        raise TrailError(f"{where}: num_class_embeds {classes!r} is not a number of classes (an integer >= 2)")
    return classes


def _ddpm_std(variance_type: str, beta, ab, ab_prev):
    """The standard deviation DDPMScheduler adds at a step: the posterior's (fixed_small, clamped
    at 1e-20 as diffusers does; fixed_small_log through its log) or beta_t's (fixed_large)."""
    if variance_type == "fixed_large":
        return beta ** 0.5
    small = torch.clamp((1 - ab_prev) / (1 - ab) * beta, min=1e-20)
    return torch.exp(0.5 * torch.log(small)) if variance_type == "fixed_small_log" else small ** 0.5


def _clip_x0(scheduler, bound: float) -> None:
    """DPM-Solver++ works on its predicted clean image (`convert_model_output`); clipping what that
    returns clips x0 at every step, as DDPMScheduler does with clip_sample."""
    convert = scheduler.convert_model_output

    def clipped(*args, **kwargs):
        return convert(*args, **kwargs).clamp(-bound, bound)

    scheduler.convert_model_output = clipped


class DiffusersFamily(ImportedFamily):
    """A trail imported from diffusers (`trail.source: diffusers`): `checkpoint-<step>/<unet>/`
    folders of a training script, the EMA a sub-folder of the last one, the scheduler the run's."""

    name = "diffusers"
    record_keys = ("unet", "ema")
    unread_keys = ("key", "prefix", "factory", "code", "num_classes")  # (its classes: the UNet's config)
    default_files = "checkpoint-*/{unet}/" + WEIGHTS
    default_pattern = r"checkpoint-(\d+)"
    pattern_on_path = True
    diffusion_samplers = ("ddim", "dpmpp2m", "ddpm")
    PIPELINE_LOADING = ["from diffusers import DDPMPipeline, UNet2DModel",
                        "pipe = DDPMPipeline.from_pretrained('pipeline')  # the scheduler the evaluation used",
                        "images = pipe(batch_size=16, num_inference_steps=5).images",
                        "unet = UNet2DModel.from_pretrained('unet')  # or the network alone"]

    def __init__(self, trail, cfg: dict):
        self.unet_config = trail.model_config
        super().__init__(trail, cfg)

    def check_config(self, cfg: dict) -> None:
        super().check_config(cfg)
        check_unet_fits(self.trail.model_config, cfg, self.trail.root / "manifest.json")

    def make_sampler(self, cfg: dict) -> DiffusersSampler:
        return DiffusersSampler(self.trail.manifest.get("scheduler_config"), cfg["diffusion"]["sampler"],
                                f"{self.trail.root / 'manifest.json'}: scheduler_config", max_nfe=largest_nfe(cfg))

    def build_network(self) -> nn.Module:
        return unet_from_config(self.unet_config, f"{self.trail.root / 'manifest.json'}: model_config")

    def load_checkpoint(self, path: str | Path, device="cpu") -> dict[str, torch.Tensor]:
        return load_tensors(path, device)

    @property
    def num_classes(self) -> int | None:
        return unet_classes(self.unet_config, f"{self.trail.root / 'manifest.json'}: model_config")

    @property
    def loading(self) -> list[str]:
        if self.num_classes is None:
            return self.PIPELINE_LOADING
        return ["import torch",
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
                "        x = scheduler.step(eps, t, x).prev_sample"]

    def export(self, cfg: dict, net: nn.Module, state: dict[str, torch.Tensor], out: Path) -> list[str]:
        """A `save_pretrained` UNet folder `unet/`, and `pipeline/` that DDPMPipeline.from_pretrained
        loads, with the scheduler the evaluation sampled with; for a class-conditional UNet, which
        DDPMPipeline cannot condition, `unet/` and that scheduler in `scheduler/`."""
        from diffusers import DDPMPipeline

        net.load_state_dict(state)
        net.save_pretrained(out / "unet")
        scheduler = scheduler_from_config(self.trail.manifest["scheduler_config"], cfg["diffusion"]["sampler"],
                                          f"{self.trail.root / 'manifest.json'}: scheduler_config")
        if self.num_classes is not None:
            scheduler.save_pretrained(out / "scheduler")
            return ["unet/", "scheduler/"]
        DDPMPipeline(unet=net, scheduler=scheduler).save_pretrained(out / "pipeline")
        return ["unet/", "pipeline/"]

    @classmethod
    def config_errors(cls, cfg: dict) -> list[str]:
        t, errors = cfg["trail"], super().config_errors(cfg)
        for key in ("unet", "ema"):  # one sub-folder of a checkpoint folder each
            if t[key] is not None and (not t[key] or t[key] in (".", "..") or "/" in t[key] or "\\" in t[key]):
                errors.append(f"trail.{key}: {t[key]!r} must name one sub-folder of a checkpoint folder (e.g. "
                              f"{'unet' if key == 'unet' else 'unet_ema'}), not a path")
        return errors

    @classmethod
    def ema_files(cls, t: dict, root: Path) -> tuple[Path | None, set[Path]]:
        """The EMA: the sub-folder trail.ema of the last checkpoint folder, named for the decay it had."""
        if not t["ema"]:
            return None, set()
        last = cls.checkpoint_files(t, root)[-1][1]  # .../checkpoint-<step>/<unet>/<weights>
        path = last.parent.parent / t["ema"] / WEIGHTS
        if not path.is_file():
            raise TrailError(f"{path}: trail.ema {t['ema']!r} names no EMA folder in the last checkpoint; set trail.ema "
                             "to its folder (unet_ema in diffusers' examples) or null")
        if not inside(path, root):
            raise TrailError(f"{path}: the EMA's weights lie outside trail.path {root} (a symlink leads out); a "
                             "trail's files stay in its folder")
        settings = read_json(path.parent / "config.json", "the EMA's config.json is missing", keys=())
        recorded = settings.get("decay") if isinstance(settings, dict) else None
        if not isinstance(recorded, (int, float, type(None))) or isinstance(recorded, bool):
            raise TrailError(f"{path.parent / 'config.json'}: decay {recorded!r} is not a number; not the config "
                             "diffusers' EMAModel.save_pretrained writes")
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
                out.append((folder.name, f"no {wanted} in it (it holds {', '.join(has) if has else 'nothing'}); "
                            "a checkpoint saved without its UNet, or trail.unet names another folder"))
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
        """The UNet's config (checked against the config's images) and the run's scheduler config."""
        model_config = read_json(last.parent / "config.json", "the UNet's config.json is missing")
        check_unet_fits(model_config, cfg, last.parent / "config.json")
        check_data_classes(unet_classes(model_config, last.parent / "config.json"), cfg, last.parent / "config.json")
        return {"model_config": model_config,
                "scheduler_config": run_scheduler_config(cfg["trail"], root, cfg["diffusion"]["sampler"])}


def run_scheduler_config(t: dict, root: Path, sampler: str) -> dict:
    """The run's scheduler config (trail.scheduler, or where DDPMPipeline.save_pretrained writes it),
    accepted by diffusers and sampled by `sampler` as the trainer's pipeline samples it."""
    path = Path(t["scheduler"]).expanduser() if t["scheduler"] else root / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        raise ConfigError(f"trail.scheduler: {path} does not exist; give the run's scheduler_config.json (what "
                          "DDPMPipeline.save_pretrained writes under scheduler/)")
    config = read_json(path, "give the run's scheduler_config.json as trail.scheduler")
    scheduler_from_config(config, sampler, path, nfe=1)  # diffusers accepts it: checked here, not at a later stage
    check_scheduler(config, sampler, path)  # and lcsc samples it as the trainer's pipeline does
    return config


EMA_SCHEDULE = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma", "power")


def check_ema_decay(configured: float, recorded, settings, where: Path) -> None:
    """trail.ema_decay names the kept EMA, so it must be the decay the run's EMA had at its last
    update: with warm-up (or diffusers' default schedule) that is below the recorded maximum until
    late in a run. Equal within 5% of 1 - decay (0.998 for 0.99801)."""
    used = effective_decay(settings)
    if used is None:  # settings without the schedule: only the recorded decay can be compared
        if recorded is not None and float(recorded) != configured:
            raise ConfigError(f"trail.ema_decay: {configured} in the config, but {where} records decay {recorded}")
        return
    if used != configured and (used >= 1 or configured >= 1
                               or abs(math.log((1 - used) / (1 - configured))) > 0.05):
        schedule = ", ".join(f"{k} {settings[k]}" for k in EMA_SCHEDULE if k in settings)
        raise ConfigError(f"trail.ema_decay: {configured} in the config, but the run's EMA averaged with decay "
                          f"{used:.6g} at its last update ({where}: {schedule}); set trail.ema_decay: {used:.4g} "
                          "so that the kept EMA is named for the decay it had")


def effective_decay(settings) -> float | None:
    """The decay diffusers' EMAModel applied at its last update, from the settings its
    save_pretrained records (None where they are incomplete): after `update_after_step`, with
    warm-up 1 - (1 + step / inv_gamma)^-power, else (1 + step) / (10 + step), capped by `decay`
    and floored by `min_decay`."""
    if not isinstance(settings, dict):
        return None
    try:
        decay, low = float(settings["decay"]), float(settings.get("min_decay", 0.0))
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


FAMILY = DiffusersFamily
