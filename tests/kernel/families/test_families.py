"""The model families behind one interface: family_for picks one by the manifest's kind, and every
sampler calls the network exactly network_calls(nfe) times, from noise of the family's shape."""

import pytest
import torch

from conftest import tiny_config
from helpers import Counting
from lcsc.kernel.errors import ConfigError, TrailError
from lcsc.kernel.families import SOURCES, TRAINED, family_for, sources
from lcsc.kernel.families.consistency import ConsistencyFamily, ConsistencySampler, Parameterization
from lcsc.kernel.families.diffusers import DiffusersFamily
from lcsc.kernel.families.diffusion import DiffusionFamily, VPDiffusion
from lcsc.kernel.scoring import make_noise
from lcsc.kernel.trail import Trail


def _cfg(tmp_path, **overrides):
    return tiny_config(
        tmp_path,
        consistency={"modes": ["cd", "ct"], "sampling_sigmas": [5.0, 0.821], "evaluate_nfe": [1, 2, 3]},
        **overrides,
    )


def _trail(tmp_path, cfg, **manifest) -> Trail:
    """A trail's manifest as train-dm or train-cm writes it (its files are not needed here)."""
    base = {
        "model_config": cfg["model"],
        "data": cfg["data"],
        "diffusion": {k: cfg["diffusion"][k] for k in ("schedule", "timesteps")},
    }
    return Trail(tmp_path, {**base, **manifest})


def _cm_trail(tmp_path, cfg, mode="ct") -> Trail:
    return _trail(tmp_path, cfg, kind="cm", mode=mode, consistency=Parameterization().settings())


def test_family_for_picks_the_family_by_the_manifests_kind(tmp_path):
    cfg = _cfg(tmp_path)
    assert list(TRAINED) == ["dm", "cm"] and sources() == ["lcsc", "diffusers", "state_dict"]
    assert SOURCES["diffusers"] == DiffusersFamily.__module__
    for manifest in ({"kind": "dm"}, {}):  # a manifest without a kind is a diffusion trail
        family = family_for(_trail(tmp_path, cfg, **manifest), cfg)
        assert type(family) is DiffusionFamily and isinstance(family.sampler, VPDiffusion)
    family = family_for(_cm_trail(tmp_path, cfg), cfg)
    assert type(family) is ConsistencyFamily and isinstance(family.sampler, ConsistencySampler)
    assert family.sampler.sigmas == [5.0, 0.821]
    # a kind that no family has, or an imported trail's kind where the config trains its own: the
    # family is the config's, and a manifest that says otherwise is refused
    for kind in ("gan", "DM", None, "state_dict", "diffusers"):
        with pytest.raises(TrailError) as err:
            family_for(_trail(tmp_path, cfg, kind=kind), cfg)
        assert str(err.value) == (
            f"{tmp_path / 'manifest.json'}: a trail of kind {kind!r}, but the config's "
            "trail.source is 'lcsc', whose trails are of kind 'dm' or 'cm'; this manifest was "
            "not written for this config: rerun the stage that wrote it"
        )


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_network_calls_are_the_calls_a_diffusion_network_sees(tmp_path, sampler):
    cfg = _cfg(tmp_path, diffusion={"sampler": sampler})
    family = family_for(_trail(tmp_path, cfg, kind="dm"), cfg)
    assert family.noise_shape == (1, 12, 12) and family.noise_steps is None
    noise = make_noise(3, family.noise_shape, 0, "cpu", family.noise_steps)
    assert noise.shape == (3, 1, 12, 12)
    net = family.build_network().eval()
    for nfe in (1, 2, 3, 4, 7, 10):
        counting = Counting(net)
        out = family.sampler.sample(counting, noise, nfe)
        assert counting.calls == family.sampler.network_calls(nfe) == nfe, (sampler, nfe)
        assert out.shape == noise.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="nfe must be >= 1"):
        family.sampler.network_calls(0)


def test_network_calls_are_the_calls_a_consistency_network_sees(tmp_path):
    cfg = _cfg(tmp_path)
    family = family_for(_cm_trail(tmp_path, cfg), cfg)
    # one noise image per step up to the largest NFE: 1 + len(sampling_sigmas)
    assert family.noise_shape == (1, 12, 12) and family.noise_steps == 3
    noise = make_noise(3, family.noise_shape, 0, "cpu", family.noise_steps)
    assert noise.shape == (3, 3, 1, 12, 12)
    net = family.build_network().eval()
    for nfe in (1, 2, 3):
        counting = Counting(net)
        out = family.sampler.sample(counting, noise, nfe)
        assert counting.calls == family.sampler.network_calls(nfe) == nfe
        assert out.shape == (3, 1, 12, 12) and out.abs().max() <= 1
    for nfe in (0, 4):
        with pytest.raises(ValueError, match="samples with 1 to 3 NFE here"):
            family.sampler.network_calls(nfe)
    with pytest.raises(ValueError, match=r"needs noise \[B, >= 3, C, H, W\], got \(3, 2, 1, 12, 12\)"):
        family.sampler.sample(net, noise[:, :2], 3)
    # what samples at an NFE depend on: the sigmas that NFE uses, not those of larger ones
    assert family.sampler.settings(1)["sampling_sigmas"] == []
    assert family.sampler.settings(2)["sampling_sigmas"] == [5.0]
    assert family.sampler.settings()["sampling_sigmas"] == [5.0, 0.821]


def test_a_family_checks_the_config_against_the_data_it_was_trained_on(tmp_path):
    cfg = _cfg(tmp_path)
    for trail in (_trail(tmp_path, cfg, kind="dm"), _cm_trail(tmp_path, cfg)):
        for key, value in (("channels", 3), ("image_size", 16)):
            other = dict(cfg, data=dict(cfg["data"], **{key: value}))
            with pytest.raises(ConfigError) as err:
                family_for(trail, other)
            assert str(err.value) == (
                f"data.{key}: {value!r} in the config, but the trail "
                f"{tmp_path / 'manifest.json'} was trained with {cfg['data'][key]!r}"
            )
    # a diffusion family checks the noise schedule it was trained with; the sampler is the config's
    other = dict(cfg, diffusion=dict(cfg["diffusion"], timesteps=500))
    with pytest.raises(ConfigError, match="diffusion.timesteps: 500 in the config"):
        family_for(_trail(tmp_path, cfg, kind="dm"), other)
    assert family_for(_cm_trail(tmp_path, cfg), other).noise_steps == 3  # a CM trail does not sample with it
