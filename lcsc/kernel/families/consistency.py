"""Consistency models (Song et al. 2023, "Consistency Models"; Song & Dhariwal 2023, "Improved
Techniques for Training Consistency Models", iCT): the parameterization, the two training losses
(distillation from the diffusion teacher, CD, and training from data, CT) and multistep sampling
that calls the network exactly NFE times.

Noise levels are those of a variance-exploding process: x_sigma = x + sigma * z, with sigma in
[sigma_min, sigma_max] (0.002 and 80 by default; data scaled to [-1, 1], sigma_data = 0.5).

Parameterization. The network F (the same U-Net as the diffusion model, conditioned on
c_noise(sigma) = 250 ln(sigma)) is wrapped as

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))
    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)
    c_out  = (sigma - sigma_min) sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)

At sigma = sigma_min, c_skip = 1 and c_out = 0 exactly, so the boundary condition
f(x, sigma_min) = x holds exactly, whatever the weights. Checkpoints hold F's weights only: a CM
trail has the same files and manifest as a diffusion trail, and LCSC combines it the same way.

Discretization. Karras et al.'s sigmas with rho = 7: sigma_i = (sigma_min^(1/rho) + (i-1)/(N-1)
(sigma_max^(1/rho) - sigma_min^(1/rho)))^rho, i = 1..N. CT grows N during training by iCT's
curriculum, N(k) = min(s0 2^floor(k/K'), s1) + 1 with K' = floor(K / (log2(s1/s0) + 1)); CD keeps
N fixed. Both pick the pair (sigma_n, sigma_{n+1}) by iCT's lognormal distribution over the
discretization, p(n) ~ erf((ln sigma_{n+1} - P_mean) / (sqrt(2) P_std)) - erf((ln sigma_n -
P_mean) / (sqrt(2) P_std)).

Loss. lambda(sigma_n) d(f(x_{n+1}, sigma_{n+1}), f^-(x_n, sigma_n)) with iCT's weighting
lambda = 1 / (sigma_{n+1} - sigma_n) and pseudo-Huber distance d(a, b) = sqrt(|a - b|^2 + c^2) - c,
c = 0.00054 sqrt(dim) (or a squared L2 distance). The target f^- is the online network under
stop-gradient (iCT's choice, a target EMA rate of 0), for CD too. CT draws x_n = x + sigma_n z and
x_{n+1} = x + sigma_{n+1} z with the same z; CD draws x_{n+1} = x + sigma_{n+1} z and takes x_n one
Heun (or Euler) step of the teacher's probability-flow ODE, dx/dsigma = (x - D(x, sigma)) / sigma.

The teacher is the discrete-time VP diffusion model (eps prediction): x_sigma corresponds to the
VP state x_sigma / sqrt(1 + sigma^2) at alpha_bar = 1 / (1 + sigma^2), and the network's time input
is the fractional step whose alpha_bar matches (log-sigma interpolated over the schedule, clamped
to [0, T-1]); D = x - sigma eps.

Sampling. One step: f(sigma_max z_0, sigma_max). Multistep: after each step, noise the estimate
back up to the next intermediate sigma s, x = x_0 + sqrt(s^2 - sigma_min^2) z_k, and apply f(x, s)
again; NFE n uses the first n - 1 of `sampling_sigmas`. Every z_k is drawn in advance, so the
samples depend only on the noise tensor (common random numbers for the search).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from ..nets import with_labels
from .base import Family


class Parameterization:
    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5, rho: float = 7.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.sigma_data, self.rho = sigma_min, sigma_max, sigma_data, rho

    @classmethod
    def from_config(cls, ccfg: dict) -> Parameterization:
        return cls(ccfg["sigma_min"], ccfg["sigma_max"], ccfg["sigma_data"], ccfg["rho"])

    def settings(self) -> dict:
        return {
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "sigma_data": self.sigma_data,
            "rho": self.rho,
        }

    def __call__(self, net: nn.Module, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """f(x, sigma) for a batch x [B, C, H, W] and per-image sigma [B]."""
        sigma = sigma.to(x.dtype)
        s = sigma[:, None, None, None]
        sd2 = self.sigma_data**2
        # delta is exactly 0 at sigma_min (same dtype on both sides), which makes c_skip exactly 1 and
        # c_out exactly 0: the boundary condition holds whatever the weights.
        delta = s - torch.tensor(self.sigma_min, dtype=x.dtype, device=x.device)
        c_skip = sd2 / (delta**2 + sd2)
        c_out = delta * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1 / (s**2 + sd2).sqrt()
        c_noise = 250.0 * torch.log(sigma)
        return c_skip * x + c_out * net(c_in * x, c_noise)

    def karras(self, n: int) -> torch.Tensor:
        """The N = n Karras sigmas, ascending, float64."""
        if n < 2:
            raise ValueError(f"a discretization needs at least 2 sigmas, got {n}")
        a, b = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (a + torch.arange(n, dtype=torch.float64) / (n - 1) * (b - a)) ** self.rho


def curriculum(step: int, total: int, s0: int, s1: int) -> int:
    """iCT's number of discretization sigmas N at training step `step` (0-based) of `total`."""
    # At least 1: a run shorter than the curriculum's stages would otherwise divide by zero.
    k_prime = max(1, math.floor(total / (math.log2(s1 // s0) + 1)))
    return min(s0 * 2 ** (step // k_prime), s1) + 1


def lognormal_probs(sigmas: torch.Tensor, p_mean: float, p_std: float) -> torch.Tensor:
    """iCT's probabilities of each pair (sigma_n, sigma_{n+1}) of an ascending discretization."""
    erf = torch.special.erf((torch.log(sigmas) - p_mean) / (math.sqrt(2) * p_std))
    p = (erf[1:] - erf[:-1]).clamp_min(0)
    return p / p.sum()


def distance(a: torch.Tensor, b: torch.Tensor, kind: str, c: float | None) -> torch.Tensor:
    """Per-image distance: pseudo-Huber (c None: 0.00054 sqrt(dim)) or squared L2."""
    sq = ((a - b) ** 2).flatten(1).sum(1)
    if kind == "l2":
        return sq
    if kind != "pseudo_huber":
        raise ValueError(f"unknown consistency loss {kind!r}")
    c = 0.00054 * math.sqrt(a[0].numel()) if c is None else c
    return (sq + c * c).sqrt() - c


class VPTeacher:
    """The discrete-time VP eps-model as a denoiser D(x, sigma) in VE coordinates."""

    def __init__(self, net: nn.Module, alpha_bar: torch.Tensor, clip: bool = True):
        self.net = net
        self.clip = clip
        # sigma of each discrete step, increasing with t: the map sigma -> fractional t
        self.log_sigmas = torch.log(((1 - alpha_bar) / alpha_bar).sqrt()).float()

    def time_of(self, sigma: torch.Tensor) -> torch.Tensor:
        ls = self.log_sigmas.to(sigma.device)
        # Clamped into the schedule's range, so a sigma beyond the teacher's first or last step maps
        # to t = 0 or T - 1 rather than being extrapolated.
        x = torch.log(sigma.float()).clamp(ls[0], ls[-1])
        i = torch.searchsorted(ls, x).clamp(1, len(ls) - 1)
        lo, hi = ls[i - 1], ls[i]
        return (i - 1).float() + (x - lo) / (hi - lo)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        s = sigma.to(x.dtype)[:, None, None, None]
        eps = with_labels(self.net, labels)(x / (1 + s**2).sqrt(), self.time_of(sigma))
        d = x - s * eps
        return d.clamp(-1, 1) if self.clip else d

    @torch.no_grad()
    def step(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        solver: str,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One step of the probability-flow ODE from sigma down to sigma_next (> 0), for images of
        classes `labels` (a class-conditional teacher)."""
        s, sn = sigma[:, None, None, None], sigma_next[:, None, None, None]
        d1 = (x - self.denoise(x, sigma, labels)) / s
        x_euler = x + (sn - s) * d1
        if solver == "euler":
            return x_euler
        if solver != "heun":
            raise ValueError(f"unknown teacher solver {solver!r}")
        d2 = (x_euler - self.denoise(x_euler, sigma_next, labels)) / sn
        return x + (sn - s) * (d1 + d2) / 2


class ConsistencyLoss:
    """The CD or CT loss as the training loop calls it: loss(net, x0, generator, step)."""

    def __init__(self, ccfg: dict, mode: str, iterations: int, teacher: VPTeacher | None = None):
        if mode not in ("cd", "ct"):
            raise ValueError(f"unknown consistency mode {mode!r}")
        if mode == "cd" and teacher is None:
            raise ValueError("consistency distillation needs a teacher")
        self.param = Parameterization.from_config(ccfg)
        self.mode, self.iterations, self.teacher = mode, iterations, teacher
        self.ccfg = ccfg

    def num_sigmas(self, step: int) -> int:
        if self.mode == "cd":
            return self.ccfg["cd"]["steps"]
        ct = self.ccfg["ct"]
        return curriculum(step, self.iterations, ct["s0"], ct["s1"])

    def __call__(
        self,
        net: nn.Module,
        x0: torch.Tensor,
        gen: torch.Generator,
        step: int = 0,
        part: slice = slice(None),
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """With `part`, the noise is drawn for the whole batch and the loss is that slice's; with
        `labels` (the whole batch's), the networks (and the teacher) get the images' classes."""
        sigmas = self.param.karras(self.num_sigmas(step))
        probs = lognormal_probs(sigmas, self.ccfg["p_mean"], self.ccfg["p_std"])
        # Drawn for the whole batch on the shared generator and then sliced, so the ranks' slices
        # together are exactly what one process would draw.
        n = torch.multinomial(probs, x0.shape[0], replacement=True, generator=gen)[part]
        z = torch.randn(x0.shape, generator=gen)[part].to(x0.device)
        x0 = x0[part]
        labels = None if labels is None else labels[part]
        net = with_labels(net, labels)
        s_lo = sigmas[n].to(x0.device, torch.float32)
        s_hi = sigmas[n + 1].to(x0.device, torch.float32)
        x_hi = x0 + s_hi[:, None, None, None] * z
        if self.mode == "ct":
            x_lo = x0 + s_lo[:, None, None, None] * z
        else:
            x_lo = self.teacher.step(x_hi, s_hi, s_lo, self.ccfg["cd"]["solver"], labels)
        online = self.param(net, x_hi, s_hi)
        # The target is the online network under stop-gradient (iCT's target EMA rate of 0):
        # gradients flow through the x_{n+1} branch only.
        with torch.no_grad():
            target = self.param(net, x_lo, s_lo)
        weight = 1 / (s_hi - s_lo)
        return (weight * distance(online, target, self.ccfg["loss"], self.ccfg["huber_c"])).mean()


class ConsistencySampler:
    """Samples with exactly `nfe` network calls from noise [B, S, C, H, W] (S >= nfe: z_0, z_1, ...)."""

    def __init__(self, param: Parameterization, sampling_sigmas: list[float]):
        self.param = param
        self.sigmas = [float(s) for s in sampling_sigmas]
        bad = [s for s in self.sigmas if not param.sigma_min < s < param.sigma_max]
        if bad:
            raise ConfigError(
                f"consistency.sampling_sigmas: {bad} lie outside (sigma_min, sigma_max) = "
                f"({param.sigma_min}, {param.sigma_max})"
            )
        if any(a <= b for a, b in zip(self.sigmas, self.sigmas[1:])):
            raise ConfigError(f"consistency.sampling_sigmas: {self.sigmas} must decrease")

    @property
    def max_nfe(self) -> int:
        return 1 + len(self.sigmas)

    def network_calls(self, nfe: int) -> int:
        """One call per step: the first from pure noise, each later one after re-noising."""
        if not 1 <= nfe <= self.max_nfe:
            raise ValueError(
                f"a consistency model samples with 1 to {self.max_nfe} NFE here "
                f"(1 + len(consistency.sampling_sigmas)), not {nfe}"
            )
        return nfe

    @property
    def noise_steps(self) -> int:
        """Noise images per sample: one for each step up to the largest NFE."""
        return self.max_nfe

    def settings(self, nfe: int | None = None) -> dict:
        """What samples at `nfe` (None: any NFE) depend on besides weights and noise."""
        sigmas = self.sigmas if nfe is None else self.sigmas[: nfe - 1]
        return {"sampler": "consistency", **self.param.settings(), "sampling_sigmas": sigmas}

    @torch.no_grad()
    def sample(
        self, net: nn.Module, noise: torch.Tensor, nfe: int, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.network_calls(nfe)  # an NFE it cannot sample at is refused
        # A class-conditional network: every call gets the labels.
        net = with_labels(net, labels)
        if noise.dim() != 5 or noise.shape[1] < nfe:
            raise ValueError(
                f"consistency sampling at NFE {nfe} needs noise [B, >= {nfe}, C, H, W], got {tuple(noise.shape)}"
            )
        b = noise.shape[0]
        sigma = torch.full((b,), self.param.sigma_max, device=noise.device)
        x = self.param(net, self.param.sigma_max * noise[:, 0], sigma).clamp(-1, 1)
        for k in range(1, nfe):
            s = self.sigmas[k - 1]
            # The estimate sits at sigma_min's level, not at 0, so the noise added to reach s has variance
            # s^2 - sigma_min^2 (Song et al. 2023, Algorithm 1).
            x = x + math.sqrt(s**2 - self.param.sigma_min**2) * noise[:, k]
            x = self.param(net, x, torch.full((b,), s, device=noise.device)).clamp(-1, 1)
        return x


class ConsistencyFamily(Family):
    """Trails of `lcsc train-cm`: the U-Net F inside f(x, sigma), sampled in one or a few steps at
    the config's `consistency.sampling_sigmas`, with the parameterization the trail was trained with."""

    name = "cm"

    def make_sampler(self, cfg: dict) -> ConsistencySampler:
        manifest = self.trail.manifest
        where = self.trail.root / "manifest.json"
        trained = manifest["consistency"]
        ccfg = cfg.get("consistency")
        if ccfg is None:
            raise ConfigError(
                f"{where} is a consistency model's trail ({manifest.get('mode')}); name the "
                f"model, e.g. --model cm_{manifest.get('mode')}"
            )
        for key, value in trained.items():
            if ccfg[key] != value:
                raise ConfigError(
                    f"consistency.{key}: {ccfg[key]!r} in the config, but the trail {where} was trained with {value!r}"
                )
        return ConsistencySampler(Parameterization(**trained), ccfg["sampling_sigmas"])


FAMILY = ConsistencyFamily
