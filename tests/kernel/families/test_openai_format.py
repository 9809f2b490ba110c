"""openai/consistency_models' networks through `trail.source: state_dict` (docs/your-own-run.md):
their parametrization and samplers, written here from their published formulas (Song et al. 2023,
appendix C; karras_diffusion.py's `denoise`, `onestep` and `multistep` samplers), against lcsc's
consistency sampler with a stand-in network called as theirs is, `model(x, t, y=labels)`."""

import math

import torch
from torch import nn

from lcsc.kernel.families.consistency import ConsistencySampler, Parameterization

SIGMA_MIN, SIGMA_MAX, SIGMA_DATA, RHO, STEPS = 0.002, 80.0, 0.5, 7.0, 40


class TheirUNet(nn.Module):
    """A stand-in for their class-conditional UNetModel: forward(x, timesteps, y)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 1)
        self.calls = []

    def forward(self, x, timesteps, y=None):
        self.calls.append((timesteps.clone(), None if y is None else y.clone()))
        return torch.tanh(x * 0.7 + 0.01 * timesteps[:, None, None, None]) + self.embed(y)[:, :, None, None]


def as_lcsc_calls(net):
    """What the factory of docs/your-own-run.md does to their model: lcsc calls net(x, t, labels),
    theirs takes the labels as y. The forward is replaced on the instance, so the state dict's
    keys stay theirs (a wrapping module would prefix them)."""
    forward = net.forward
    net.forward = lambda x, t, labels=None: forward(x, t, y=labels)
    return net


def their_denoise(model, x_t, sigma, y):
    """karras_diffusion.py's denoise for a consistency model (distillation=True), clip_denoised."""
    c_skip = SIGMA_DATA**2 / ((sigma - SIGMA_MIN) ** 2 + SIGMA_DATA**2)
    c_out = (sigma - SIGMA_MIN) * SIGMA_DATA / (sigma**2 + SIGMA_DATA**2) ** 0.5
    c_in = 1 / (sigma**2 + SIGMA_DATA**2) ** 0.5
    rescaled_t = 1000 * 0.25 * torch.log(sigma + 1e-44)
    out = model(c_in[:, None, None, None] * x_t, rescaled_t, y=y)
    return (c_out[:, None, None, None] * out + c_skip[:, None, None, None] * x_t).clamp(-1, 1)


def their_sigma(index):
    """The sigma of Karras step `index` of `STEPS`, as their multistep sampler's `ts` name it."""
    a, b = SIGMA_MAX ** (1 / RHO), SIGMA_MIN ** (1 / RHO)
    return (a + index / (STEPS - 1) * (b - a)) ** RHO


def test_their_one_and_two_step_samples_are_lcscs_with_the_matching_settings():
    torch.manual_seed(0)
    model = TheirUNet()
    noise = torch.randn(6, 2, 1, 8, 8)  # one noise image per step, as lcsc draws it
    labels = torch.tensor([0, 3, 9, 3, 1, 7])
    b = len(labels)
    # onestep: x_T = sigma_max z, one denoising
    theirs_1 = their_denoise(model, SIGMA_MAX * noise[:, 0], torch.full((b,), SIGMA_MAX), labels)
    # multistep with --ts 0,22,39 (the ImageNet-64 CD command line): denoise at sigma_max, re-noise
    # to sigma(22), denoise; the last index, 39, is sigma_min: no noise after the last call
    s22 = their_sigma(22)
    x = theirs_1 + math.sqrt(s22**2 - SIGMA_MIN**2) * noise[:, 1]
    theirs_2 = their_denoise(model, x, torch.full((b,), s22), labels)
    assert abs(their_sigma(39) - SIGMA_MIN) < 1e-12 and abs(s22 - 1.3823679566) < 1e-9

    sampler = ConsistencySampler(Parameterization(SIGMA_MIN, SIGMA_MAX, SIGMA_DATA, RHO), [s22])
    net = as_lcsc_calls(model)
    assert list(net.state_dict()) == ["embed.weight"]
    model.calls.clear()
    torch.testing.assert_close(sampler.sample(net, noise, 1, labels=labels), theirs_1, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sampler.sample(net, noise, 2, labels=labels), theirs_2, rtol=1e-6, atol=1e-6)
    assert len(model.calls) == 3 and all(torch.equal(y, labels) for _, y in model.calls)
    # the network's time input is theirs: 250 log(sigma) (1000 * 0.25 * log(sigma + 1e-44))
    torch.testing.assert_close(model.calls[2][0], torch.full((b,), 250 * math.log(s22)))
