"""One evaluator for every variant: weights -> samples at an NFE -> FID against reference stats.

The search scores candidates with it on fixed noise; the evaluate stage scores each variant
(last, each EMA, uniform, lcsc) at every NFE of the sweep on seeds the search never saw.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import profiles
from .config import ConfigError
from .consistency import ConsistencySampler, Parameterization
from .diffusion import VPDiffusion
from .features import load_features
from .fid import Reference, load_stats
from .io import load_tensors, read_json, sha256, write_json
from .nets import build_unet
from .progress import progress
from .trail import ChunkedTrail, FlatLoader, Trail, check_state, combine, flatten_state

WORST_FID = 1e6  # fitness of a candidate whose samples are not finite


def make_noise(n: int, shape: tuple[int, ...], seed: int, device, steps: int | None = None) -> torch.Tensor:
    """Latent noise drawn on the CPU from `seed`: the same on every machine and device.

    With `steps`, [n, steps, *shape]: one noise image per sampling step (a consistency model's
    multistep sampling), drawn step by step, so [:, 0] equals the noise without `steps` and the
    first k steps do not depend on how many there are."""
    gen = torch.Generator().manual_seed(seed)
    if steps is None:
        return torch.randn((n, *shape), generator=gen).to(device)
    return torch.randn((steps, n, *shape), generator=gen).transpose(0, 1).contiguous().to(device)


def make_sampler(cfg: dict, trail: Trail):
    """The sampler of the trail's model kind: the VP diffusion ODE, or consistency sampling."""
    if trail.manifest.get("kind") != "cm":
        return VPDiffusion.from_config(cfg["diffusion"])
    trained = trail.manifest["consistency"]
    ccfg = cfg.get("consistency")
    if ccfg is None:
        raise ConfigError(f"{trail.root / 'manifest.json'} is a consistency model's trail "
                          f"({trail.manifest.get('mode')}); name the model, e.g. --model cm_{trail.manifest.get('mode')}")
    for key, value in trained.items():
        if ccfg[key] != value:
            raise ConfigError(f"consistency.{key}: {ccfg[key]!r} in the config, but the trail "
                             f"{trail.root / 'manifest.json'} was trained with {value!r}")
    return ConsistencySampler(Parameterization(**trained), ccfg["sampling_sigmas"])


class Scorer:
    def __init__(self, cfg: dict, trail: Trail, features: str | Path, stats: str | Path,
                 device: torch.device, batch_size: int, chunk_mb: float | None = None):
        self.device = torch.device(device)
        self.chunk_mb = chunk_mb
        self.batch_size = batch_size
        self.trail = trail
        self.channels = cfg["data"]["channels"]
        self.shape = (self.channels, cfg["data"]["image_size"], cfg["data"]["image_size"])
        for section, keys in (("diffusion", ("schedule", "timesteps")), ("data", ("image_size", "channels"))):
            trained = trail.manifest.get(section, {})
            for key in keys:
                if key in trained and trained[key] != cfg[section][key]:
                    raise ConfigError(f"{section}.{key}: {cfg[section][key]!r} in the config, but the trail "
                                     f"{trail.root / 'manifest.json'} was trained with {trained[key]!r}")
        self.model = build_unet(trail.model_config, self.channels).to(device).eval()
        self.loader = FlatLoader(self.model)
        self.sampler = make_sampler(cfg, trail)
        self.features = load_features(features, device)
        self.ref_mu, self.ref_sigma = load_stats(stats, self.features.hash)
        self.reference = Reference(self.ref_mu, self.ref_sigma, self.device)  # its factor, once
        self.stats_hash = sha256(stats)[:16]
        self._W: torch.Tensor | None = None
        if chunk_mb is None and self.device.type == "cuda":  # decided once: stream only what does not fit
            free, _ = torch.cuda.mem_get_info(self.device)
            self.chunk_mb = 256.0 if self.trail_bytes > free / 2 else None

    def make_noise(self, samples: int, seed: int) -> torch.Tensor:
        return make_noise(samples, self.shape, seed, self.device, self.sampler.noise_steps)

    @property
    def trail_bytes(self) -> int:
        return len(self.trail) * self.loader.numel * 4

    def trail_placement(self) -> str:
        """Where the stacked trail lives: whole on the device, or (with `chunk_mb`, given or chosen
        because the trail needs more than half the free device memory) streamed from host memory."""
        mb = self.trail_bytes / 2**20
        if self.chunk_mb:
            return f"{len(self.trail)} x {self.loader.numel} float32 = {mb:.1f} MB in host memory, " \
                   f"streamed to {self.device} in chunks of {self.chunk_mb:g} MB"
        return f"{len(self.trail)} x {self.loader.numel} float32 = {mb:.1f} MB on {self.device}"

    @property
    def W(self) -> "torch.Tensor | ChunkedTrail":
        """The trail stacked as [K, P], loaded on first use: on the device, or chunked in host memory."""
        if self._W is None:
            if self.chunk_mb:
                self._W = ChunkedTrail(self.trail.stack(self.loader.shapes), self.chunk_mb, self.device)
            else:
                self._W = self.trail.stack(self.loader.shapes, device=self.device)
        return self._W

    def weights_of(self, coefficients) -> torch.Tensor:
        return combine(self.W, coefficients)

    def score(self, coefficients, nfe: int, noise: torch.Tensor) -> tuple[float, torch.Tensor]:
        """FID of the combination c @ W, written straight into the model's parameters."""
        self.loader.combine_into(self.W, coefficients)
        return self.fid(None, nfe, noise)

    def weights_from_file(self, path: str | Path) -> torch.Tensor:
        state = load_tensors(path, self.device)
        check_state(state, self.loader.shapes, path)
        return flatten_state(state, self.loader.keys)

    @torch.no_grad()
    def sample(self, flat: torch.Tensor | None, nfe: int, noise: torch.Tensor) -> torch.Tensor:
        """Samples of the weights `flat` (None: the weights already in the model)."""
        if flat is not None:
            self.loader.load(flat)
        out = [self.sampler.sample(self.model, noise[i:i + self.batch_size], nfe)
               for i in range(0, len(noise), self.batch_size)]
        return torch.cat(out)

    def fid(self, flat: torch.Tensor | None, nfe: int, noise: torch.Tensor) -> tuple[float, torch.Tensor]:
        images = self.sample(flat, nfe, noise)
        if not torch.isfinite(images).all():
            warnings.warn(f"non-finite samples at NFE {nfe}: scored as FID {WORST_FID:g}", stacklevel=2)
            return WORST_FID, images
        features = self.features(images, self.batch_size)
        if not torch.isfinite(features).all():
            warnings.warn(f"non-finite features at NFE {nfe}: scored as FID {WORST_FID:g}", stacklevel=2)
            return WORST_FID, images
        return self.reference.fid(features), images


def variant_weights(scorer: Scorer, variant: str, coefficients: str | Path | None = None,
                    baselines: str | Path | None = None,
                    baselines_cfg: dict | None = None) -> tuple[torch.Tensor, list | None]:
    """Flat weights of a named variant, and its coefficients over the trail where it has them.

    `lcsc` comes from the search's coefficients file, `ema_<decay>` from the EMA kept during
    training, profiles from the baselines stage's file (or, without one, from `baselines_cfg`).
    """
    if variant == "lcsc":
        if coefficients is None:
            raise ConfigError("variant 'lcsc' needs the search's coefficients file")
        found = read_json(coefficients, "rerun the search (or pass the right --coefficients)",
                          keys=("coefficients", "trail_sha256"))
        scorer.trail.check_fingerprint(found.get("trail_sha256"), coefficients)
        c = np.asarray(found["coefficients"])
        return scorer.weights_of(c), c.tolist()
    if variant.startswith("ema_") and not variant.endswith("_profile"):
        return scorer.weights_from_file(scorer.trail.weights_path(variant)), None
    if baselines is not None:
        scored = read_json(baselines, "rerun the baselines stage (or pass the right --baselines)",
                           keys=("profiles", "trail_sha256"))
        scorer.trail.check_fingerprint(scored.get("trail_sha256"), baselines)
        known = scored["profiles"]
    else:
        if baselines_cfg is None:
            raise ConfigError(f"variant {variant!r} needs the baselines file or the baselines config")
        known = {n: {"coefficients": c} for n, c in profiles.trail_profiles(scorer.trail.steps, baselines_cfg).items()}
    if variant not in known:
        where = f"in {baselines}" if baselines else "without the baselines stage's file"
        raise ConfigError(f"unknown variant {variant!r} ({where} the variants are: "
                         f"lcsc, ema_<decay> kept in training, {', '.join(known)})")
    c = np.asarray(known[variant]["coefficients"], dtype=np.float64)
    return scorer.weights_of(c), c.tolist()


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> None:
    """Images in [-1, 1] as one PNG grid."""
    from PIL import Image

    from .io import atomic_path

    x = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    n, c, h, w = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    grid = torch.full((c, ncol * (h + 1) + 1, nrow * (w + 1) + 1), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = x[i]
    arr = grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr).resize((arr.shape[1] * 4, arr.shape[0] * 4), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def run_evaluate(cfg: dict, model: str, variant: str, manifest: str | Path, features: str | Path,
                 stats: str | Path, out: str | Path, grid: str | Path, device: torch.device,
                 coefficients: str | Path | None = None, run=None,
                 baselines: str | Path | None = None) -> dict:
    ecfg = cfg["evaluate"]
    scorer = Scorer(cfg, Trail.open(manifest), features, stats, device, ecfg["batch_size"])
    flat, coeffs = variant_weights(scorer, variant, coefficients, baselines, cfg["baselines"])
    noise = scorer.make_noise(ecfg["samples"], ecfg["seed"])
    fids, seconds = {}, {}
    bar = progress(total=len(ecfg["nfe"]), desc=f"evaluate {model}/{variant}")
    for nfe in sorted(ecfg["nfe"]):
        t0 = time.perf_counter()
        fids[nfe], images = scorer.fid(flat, nfe, noise)
        seconds[nfe] = time.perf_counter() - t0
        if nfe == cfg["search"]["nfe"]:
            save_grid(images[:ecfg["grid"]], grid)
        bar.set_postfix(nfe=nfe, fid=f"{fids[nfe]:.2f}")
        bar.update(1)
        if run is not None:
            run.log_metrics({"fid": fids[nfe], "seconds": seconds[nfe]}, step=nfe)
    bar.close()
    result = {"model": model, "variant": variant, "samples": ecfg["samples"], "seed": ecfg["seed"],
              "fid": {str(k): v for k, v in fids.items()},
              "seconds": {str(k): round(v, 3) for k, v in seconds.items()},
              "coefficients": coeffs, "trail_steps": scorer.trail.steps}
    write_json(out, result)
    return result
