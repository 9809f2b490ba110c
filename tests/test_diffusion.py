import pytest
import torch
from torch import nn

from lcsc.diffusion import VPDiffusion
from lcsc.nets import UNet


class Counting(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x, t):
        self.calls += 1
        return self.net(x, t)


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
