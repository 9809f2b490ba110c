"""Consistency models: the parameterization's boundary condition, exact NFE, the training losses,
the teacher's change of coordinates, and the family's checks of the config against its trail."""

import math

import pytest
import torch

from helpers import Counting, cm_config
from lcsc.kernel.errors import ConfigError
from lcsc.kernel.families.consistency import (
    ConsistencySampler,
    Parameterization,
    VPTeacher,
    curriculum,
    distance,
    lognormal_probs,
)
from lcsc.kernel.families.diffusion import VPDiffusion
from lcsc.kernel.nets import build_unet
from lcsc.kernel.scoring import make_noise
from lcsc.kernel.trail import Trail


def _net(seed=0):
    torch.manual_seed(seed)
    net = build_unet(
        {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention": False, "dropout": 0.0}, 1
    )
    with torch.no_grad():  # large weights: the skip connection alone could not hide the output
        for p in net.parameters():
            p.mul_(3.0)
    return net.eval()


def test_boundary_condition_holds_exactly():
    param = Parameterization()
    net = _net()
    x = torch.randn(6, 1, 12, 12) * 3
    with torch.no_grad():
        at_min = param(net, x, torch.full((6,), param.sigma_min))
        above = param(net, x, torch.full((6,), 0.01))
    assert torch.equal(at_min, x)  # bit for bit, whatever the weights
    assert not torch.allclose(above, x, atol=1e-3)  # the network does act above sigma_min


@pytest.mark.parametrize("nfe", [1, 2, 3])
def test_sampling_calls_the_network_exactly_nfe_times(nfe):
    net = Counting(_net())
    sampler = ConsistencySampler(Parameterization(), [2.0, 0.5])
    noise = make_noise(5, (1, 12, 12), 0, "cpu", steps=sampler.max_nfe)
    x = sampler.sample(net, noise, nfe)
    assert net.calls == nfe
    assert x.shape == (5, 1, 12, 12) and x.abs().max() <= 1
    with pytest.raises(ValueError, match="1 to 3 NFE"):
        sampler.sample(net, noise, 4)


def test_two_step_sampling_uses_the_intermediate_sigma_and_the_second_noise():
    seen = []

    def spy(x, t):
        seen.append(t[0].item())
        return torch.zeros_like(x)

    param = Parameterization()
    sampler = ConsistencySampler(param, [0.821])
    noise = make_noise(3, (1, 4, 4), 0, "cpu", steps=2)
    x1 = sampler.sample(spy, noise, 1)
    x2 = sampler.sample(spy, noise, 2)
    assert seen[0] == pytest.approx(250 * math.log(80.0)) and seen[2] == pytest.approx(250 * math.log(0.821))
    # with F = 0, f(x, s) = c_skip(s) x: the second step re-noises x1 with z_1 to sigma 0.821
    s = 0.821
    c_skip = 0.25 / ((s - 0.002) ** 2 + 0.25)
    expected = (c_skip * (x1 + math.sqrt(s**2 - 0.002**2) * noise[:, 1])).clamp(-1, 1)
    assert torch.allclose(x2, expected, atol=1e-6)


def test_curriculum_and_lognormal_pairs():
    total = 600
    ns = [curriculum(k, total, 10, 1280) for k in range(total)]
    assert ns[0] == 11 and ns[-1] == 1281  # s0 + 1 to s1 + 1
    assert sorted(set(ns)) == [11, 21, 41, 81, 161, 321, 641, 1281]  # doubling in 8 equal stages
    assert ns.index(21) == total // 8
    sigmas = Parameterization().karras(ns[0])
    assert sigmas[0].item() == pytest.approx(0.002) and sigmas[-1].item() == pytest.approx(80.0)
    p = lognormal_probs(sigmas, -1.1, 2.0)
    assert p.shape == (10,) and p.sum().item() == pytest.approx(1.0) and (p >= 0).all()
    # each pair's probability is the lognormal mass between its sigmas, by the normal CDF of log sigma
    cdf = [0.5 * (1 + math.erf((math.log(x) + 1.1) / (2.0 * math.sqrt(2)))) for x in sigmas.tolist()]
    mass = [b - a for a, b in zip(cdf, cdf[1:])]
    assert p.tolist() == pytest.approx([m / sum(mass) for m in mass], rel=1e-6)


def test_pseudo_huber_distance():
    a, b = torch.zeros(2, 1, 10, 10), torch.zeros(2, 1, 10, 10)
    b[0, 0, 0, 0] = 3.0
    c = 0.00054 * 10
    d = distance(a, b, "pseudo_huber", None)
    assert d[0].item() == pytest.approx(math.sqrt(9 + c * c) - c) and d[1].item() == 0
    assert distance(a, b, "l2", None)[0].item() == pytest.approx(9.0)


def test_teacher_matches_the_vp_model_at_its_own_steps():
    diffusion = VPDiffusion()
    net = _net()
    teacher = VPTeacher(net, diffusion.alpha_bar, clip=False)
    t = torch.tensor([0.0, 10.0, 500.0, 999.0])
    ab = diffusion.alpha_bar[t.long()].float()
    sigma = ((1 - ab) / ab).sqrt()
    assert torch.allclose(teacher.time_of(sigma), t, atol=2e-3)
    x_ve = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        eps = net(x_ve * ab.sqrt()[:, None, None, None], teacher.time_of(sigma))
    x0_vp = (x_ve * ab.sqrt()[:, None, None, None] - (1 - ab).sqrt()[:, None, None, None] * eps) / ab.sqrt()[
        :, None, None, None
    ]
    assert torch.allclose(teacher.denoise(x_ve, sigma), x0_vp, atol=1e-4)


def test_teacher_step_is_exact_for_a_perfect_denoiser_of_one_point():
    """With one data point, D(x, sigma) = that point and the ODE is a straight line to it."""
    point = torch.full((1, 1, 4, 4), 0.3)

    class Oracle(VPTeacher):
        def __init__(self):
            pass

        def denoise(self, x, sigma, labels=None):
            return point.expand_as(x)

    z = torch.randn(2, 1, 4, 4)
    s, sn = torch.tensor([5.0, 5.0]), torch.tensor([1.0, 1.0])
    for solver in ("euler", "heun"):
        out = Oracle().step(point + 5.0 * z, s, sn, solver)
        assert torch.allclose(out, point + 1.0 * z, atol=1e-5)


def test_sampling_a_cm_trail_checks_the_parameterization(tmp_path):
    from lcsc.kernel.families import family_for

    trail = Trail(tmp_path, {"kind": "cm", "consistency": Parameterization().settings()})
    cfg = cm_config(tmp_path)
    assert isinstance(family_for(trail, cfg).sampler, ConsistencySampler)
    bad = dict(cfg, consistency=dict(cfg["consistency"], sigma_max=60.0))
    with pytest.raises(ConfigError, match="name the model, e.g. --model cm_cd"):
        family_for(
            Trail(tmp_path, dict(trail.manifest, mode="cd")), {k: v for k, v in cfg.items() if k != "consistency"}
        )
    with pytest.raises(ConfigError, match="consistency.sigma_max: 60.0 in the config, but the trail"):
        family_for(trail, bad)
