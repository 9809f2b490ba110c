"""VP diffusion: exact NFE, the exact denoiser, the samplers' order of convergence, the loss."""

import pytest
import torch
from torch import nn

from helpers import Counting
from lcsc.kernel.families.diffusion import VPDiffusion
from lcsc.kernel.nets import UNet


class OracleEps(nn.Module):
    """The exact eps-predictor for data that is a point mass at x0."""

    def __init__(self, diffusion, x0):
        super().__init__()
        self.ab, self.x0 = diffusion.alpha_bar, x0

    def forward(self, x, t):
        ab = self.ab[t.long()].to(x.dtype)[:, None, None, None]
        return (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
@pytest.mark.parametrize("nfe", [1, 2, 3, 5, 9, 15])
def test_sampler_calls_network_exactly_nfe_times(sampler, nfe):
    d = VPDiffusion(sampler=sampler)
    net = Counting(UNet(1, 8, (1, 2)))
    out = d.sample(net, torch.randn(3, 1, 8, 8), nfe)
    assert net.calls == nfe
    assert out.shape == (3, 1, 8, 8)
    assert len(set(d.timesteps(nfe))) == nfe


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_exact_denoiser_lands_on_the_data_point(schedule, sampler):
    d = VPDiffusion(schedule=schedule, sampler=sampler, clip_denoised=False)
    x0 = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 2 - 1
    for nfe in (1, 2, 4, 10):
        out = d.sample(OracleEps(d, x0), torch.randn(5, 1, 4, 4, dtype=torch.float64), nfe)
        torch.testing.assert_close(out, x0.expand_as(out), atol=1e-9, rtol=0)


class GaussianEps(nn.Module):
    """The exact eps-predictor for data N(m, s^2) per pixel: E[eps | x_t] = sigma (x_t - a m) / (a^2 s^2 + sigma^2)."""

    def __init__(self, diffusion, m, s):
        super().__init__()
        self.ab, self.m, self.s = diffusion.alpha_bar, m, s

    def forward(self, x, t):
        ab = self.ab[t.long()].to(x.dtype)[:, None, None, None]
        a, sig = ab.sqrt(), (1 - ab).sqrt()
        return sig * (x - a * self.m) / (a * a * self.s**2 + sig * sig)


def test_samplers_converge_to_the_exact_ode_solution_at_their_order():
    """For Gaussian data the probability-flow ODE keeps x standardised: from x_T it ends at
    m + s (x_T - a_T m) / sqrt(a_T^2 s^2 + sigma_T^2). DDIM is first order (error halves when NFE
    doubles); DPM-Solver++(2M) second order (error drops about 4x)."""
    m, s = 0.3, 0.5
    errors = {}
    for sampler in ("ddim", "dpmpp2m"):
        d = VPDiffusion(sampler=sampler, clip_denoised=False)
        x_T = torch.randn(16, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        ab = d.alpha_bar[d.timesteps(1)[0]]
        exact = m + s * (x_T - ab.sqrt() * m) / (ab * s * s + 1 - ab).sqrt()
        errors[sampler] = [float((d.sample(GaussianEps(d, m, s), x_T, n) - exact).abs().max()) for n in (16, 32, 64)]
    ddim, dpm = errors["ddim"], errors["dpmpp2m"]
    assert 1.7 < ddim[1] / ddim[2] < 2.3 and 1.7 < ddim[0] / ddim[1] < 2.3
    assert dpm[1] / dpm[2] > 3.5 and dpm[0] / dpm[1] > 3.5
    assert dpm[2] < 0.005 < ddim[2]


def test_sampling_is_deterministic():
    d = VPDiffusion()
    torch.manual_seed(0)
    net = UNet(1, 8, (1, 2)).eval()
    noise = torch.randn(4, 1, 8, 8)
    assert torch.equal(d.sample(net, noise, 4), d.sample(net, noise, 4))


def test_schedules_are_decreasing_in_unit_interval():
    for schedule in ("linear", "cosine"):
        ab = VPDiffusion(schedule=schedule).alpha_bar
        assert (ab[1:] < ab[:-1]).all() and 0 < ab[-1] < ab[0] < 1


@pytest.mark.slow
def test_loss_falls_on_a_tiny_run():
    torch.manual_seed(0)
    d = VPDiffusion()
    net = UNet(1, 8, (1, 2))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss = d.loss(net, x, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
