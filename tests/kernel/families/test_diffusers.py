"""The diffusers family: its schedulers call the network exactly NFE times for every prediction
type, and its samples are those DDPMPipeline gives with the same scheduler, weights and noise."""

import pytest
import torch

from foreign_trails import UNET
from helpers import Counting
from lcsc.kernel.families.diffusers import DiffusersSampler

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(**UNET).eval()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_network_calls_equal_nfe(unet, sampler, prediction_type):
    config = dict(diffusers.DDPMScheduler(prediction_type=prediction_type).config)
    s = DiffusersSampler(config, sampler)
    noise = torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    for nfe in (1, 2, 3, 5, 8):
        net = Counting(unet)
        x = s.sample(net, noise, nfe)
        assert net.calls == nfe == s.network_calls(nfe)
        assert x.shape == noise.shape and torch.isfinite(x).all() and x.abs().max() <= 1


def test_unknown_prediction_type_is_a_config_error():
    from lcsc.kernel.errors import ConfigError

    with pytest.raises(ConfigError, match="prediction_type 'flow' is not one of epsilon, v_prediction, sample"):
        DiffusersSampler({"prediction_type": "flow"}, "ddim")


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_samples_equal_ddpm_pipelines(unet, sampler):
    config = dict(diffusers.DDPMScheduler().config)
    s = DiffusersSampler(config, sampler)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=s.cls.from_config(config))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=4, generator=torch.Generator().manual_seed(7), num_inference_steps=4, output_type="np").images
    theirs = torch.from_numpy(out).permute(0, 3, 1, 2) * 2 - 1
    ours = s.sample(unet, torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(7)), 4)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
