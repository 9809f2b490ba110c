"""Discrete-time VP diffusion (Ho et al. 2020): noise schedule, eps-prediction loss and
deterministic ODE samplers that call the network exactly `nfe` times.

Notation: alpha_bar[t] = prod_{s<=t} (1 - beta_s); x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..nets import with_labels
from .base import Family


class VPDiffusion:
    def __init__(
        self, schedule: str = "linear", timesteps: int = 1000, sampler: str = "ddim", clip_denoised: bool = True
    ):
        self.T = timesteps
        self.schedule = schedule
        # One noise image per sample: the starting point of the ODE.
        self.noise_steps = None
        self.sampler = sampler
        self.clip = clip_denoised
        # DDPM's betas, rescaled by 1000/T so that other T end near the same noise.
        if schedule == "linear":
            scale = 1000 / timesteps
            # Clipped below 1: for a small T the rescaled betas would pass 1 (T = 10 gives 2.0 at the end).
            betas = np.clip(np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64), 0, 0.999)
        elif schedule == "cosine":  # Nichol & Dhariwal 2021, eq. 17
            s = 0.008
            f = np.cos((np.arange(timesteps + 1) / timesteps + s) / (1 + s) * math.pi / 2) ** 2
            # Clipped at 0.999 as Nichol & Dhariwal do: near t = T the cosine's ratio goes to 0 and a beta
            # of 1 would leave no signal at all.
            betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999)
        else:
            raise ValueError(f"unknown schedule {schedule!r}")
        self.alpha_bar = torch.from_numpy(np.cumprod(1 - betas))  # float64, [T]

    @classmethod
    def from_config(cls, cfg: dict) -> VPDiffusion:
        return cls(cfg["schedule"], cfg["timesteps"], cfg["sampler"], cfg["clip_denoised"])

    def loss(
        self,
        net: nn.Module,
        x0: torch.Tensor,
        generator: torch.Generator,
        step: int = 0,
        part: slice = slice(None),
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Simple eps-prediction MSE (Ho et al. 2020, eq. 14); the same at every training step.
        With `part`, the noise is drawn for the whole batch and the loss is that slice's; with
        `labels` (the whole batch's), a class-conditional network gets its images' classes."""
        # Drawn for the whole batch on the shared generator and then sliced, so the ranks' slices
        # together are exactly what one process would draw.
        t = torch.randint(0, self.T, (x0.shape[0],), generator=generator)[part].to(x0.device)
        eps = torch.randn(x0.shape, generator=generator)[part].to(x0.device)
        x0 = x0[part]
        net = with_labels(net, None if labels is None else labels[part])
        ab = self.alpha_bar.to(x0.device)[t].float()[:, None, None, None]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        return torch.mean((net(xt, t.float()) - eps) ** 2)

    def timesteps(self, nfe: int) -> list[int]:
        """`nfe` evenly spaced steps from T-1 downwards ("trailing" spacing): the last network
        call is at t ~ T/nfe and the final update jumps to the clean image."""
        if nfe < 1:
            raise ValueError(f"nfe must be >= 1, got {nfe}")
        return [int(round(self.T - k * self.T / nfe)) - 1 for k in range(nfe)]

    def _x0(self, x, eps, ab):
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        return x0.clamp(-1, 1) if self.clip else x0

    def network_calls(self, nfe: int) -> int:
        """Both samplers call the network once per step."""
        return len(self.timesteps(nfe))

    def settings(self, nfe: int | None = None) -> dict:
        """What the samples depend on besides the weights, the noise and the NFE."""
        return {"sampler": self.sampler, "clip_denoised": self.clip, "schedule": self.schedule, "timesteps": self.T}

    @torch.no_grad()
    def sample(
        self, net: nn.Module, noise: torch.Tensor, nfe: int, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Deterministic sampling from x_T = noise with exactly `nfe` calls of `net` (each given
        `labels`, for a class-conditional network)."""
        net = with_labels(net, labels)
        ts = self.timesteps(nfe)
        ab_all = self.alpha_bar.to(noise.device)
        # alpha_bar = 1 after the last step: the final update lands on the clean image.
        abar = [ab_all[t].to(noise.dtype) for t in ts] + [torch.tensor(1.0, dtype=noise.dtype, device=noise.device)]
        x = noise
        if self.sampler == "ddim":  # Song et al. 2021, eq. 12 with eta = 0
            for i, t in enumerate(ts):
                tt = torch.full((x.shape[0],), float(t), device=x.device)
                eps = net(x, tt)
                x0 = self._x0(x, eps, abar[i])
                x = abar[i + 1].sqrt() * x0 + (1 - abar[i + 1]).sqrt() * eps
            return x
        if self.sampler == "dpmpp2m":  # Lu et al. 2022, DPM-Solver++(2M), data prediction
            # DPM-Solver's time variable, lambda = log(alpha / sigma) = 0.5 log(abar / (1 - abar)); the
            # final alpha_bar of 1 needs none, since the last step returns D directly.
            lam = [0.5 * torch.log(a / (1 - a)) for a in abar[:-1]]
            prev_d, prev_h = None, None
            for i, t in enumerate(ts):
                tt = torch.full((x.shape[0],), float(t), device=x.device)
                d = self._x0(x, net(x, tt), abar[i])
                # The last step lands on sigma = 0: first order, x = D.
                if i == len(ts) - 1:
                    return d
                h = lam[i + 1] - lam[i]
                if prev_d is not None:
                    # The 2M correction: the data prediction extrapolated linearly from the previous step's,
                    # weighted by the step-size ratio r (Lu et al. 2022, Algorithm 2).
                    r = prev_h / h
                    d_use = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * prev_d
                else:
                    d_use = d
                sig, sig_next = (1 - abar[i]).sqrt(), (1 - abar[i + 1]).sqrt()
                # expm1 keeps e^-h - 1 accurate when h is small (many steps), where 1 - e^-h would cancel.
                x = (sig_next / sig) * x - abar[i + 1].sqrt() * torch.expm1(-h) * d_use
                prev_d, prev_h = d, h
            return x
        raise ValueError(f"unknown sampler {self.sampler!r}")


class DiffusionFamily(Family):
    """Trails of `lcsc train-dm`: an eps-predicting U-Net sampled by the VP ODE (`diffusion.sampler`)."""

    name = "dm"

    def check_config(self, cfg: dict) -> None:
        self._check_trained(cfg, "diffusion", ("schedule", "timesteps"))
        super().check_config(cfg)

    def make_sampler(self, cfg: dict) -> VPDiffusion:
        return VPDiffusion.from_config(cfg["diffusion"])


FAMILY = DiffusionFamily
