"""The diffusers family: its schedulers call the network exactly NFE times for every prediction
type, and its samples are those the trainer's pipelines give with the same scheduler config, weights
and noise: DDPMPipeline at its 1000 steps and DDIMPipeline at 50, with clip_sample on and off;
DPM-Solver++ clips its predicted clean image where the run clips."""

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


def _pixels(images) -> torch.Tensor:
    """A pipeline's numpy images in [0, 1] as lcsc's samples in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_samples_equal_ddpm_pipelines(unet, sampler):
    config = dict(diffusers.DDPMScheduler(clip_sample=False).config)
    s = DiffusersSampler(config, sampler)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=s.cls.from_config(config))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        batch_size=4, generator=torch.Generator().manual_seed(7), num_inference_steps=4, output_type="np"
    ).images
    ours = s.sample(unet, torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(7)), 4)
    torch.testing.assert_close(ours, _pixels(out), atol=1e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("clip", [True, False])
def test_the_trainers_own_pipelines_at_their_step_counts(unet, clip):
    """DDPMPipeline (stochastic, 1000 steps) and DDIMPipeline (50 steps, eta 0) of a run whose
    scheduler config says clip_sample: `clip`; lcsc's noise is drawn as its scorer draws it
    (make_noise), from the seed the pipeline's generator gets."""
    from lcsc.kernel.scoring import make_noise

    torch.set_num_threads(1)  # 2000 calls of a tiny UNet: a second thread only waits (and fights the other tests)
    config = dict(diffusers.DDPMScheduler(clip_sample=clip, clip_sample_range=0.5).config)
    shape, seed = (1, 12, 12), 3
    ddpm = DiffusersSampler(config, "ddpm", max_nfe=1000)
    assert ddpm.noise_steps == 1001
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler.from_config(config))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        batch_size=2, generator=torch.Generator().manual_seed(seed), num_inference_steps=1000, output_type="np"
    ).images
    counting = Counting(unet)
    ours = ddpm.sample(counting, make_noise(2, shape, seed, "cpu", ddpm.noise_steps), 1000)
    assert counting.calls == 1000
    torch.testing.assert_close(ours, _pixels(theirs), atol=1e-5, rtol=0)

    ddim = DiffusersSampler(config, "ddim")
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler.from_config(config))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        batch_size=2, generator=torch.Generator().manual_seed(seed), eta=0.0, num_inference_steps=50, output_type="np"
    ).images
    ours = ddim.sample(unet, make_noise(2, shape, seed, "cpu"), 50)
    torch.testing.assert_close(ours, _pixels(theirs), atol=1e-5, rtol=0)


def test_dpm_solver_clips_the_clean_image_where_the_run_clips(unet):
    """Checked against a second way to clip: the network's noise prediction replaced by the one
    that gives the clipped clean image (the loop DDPMPipeline runs, with DPMSolverMultistepScheduler)."""
    clipping = dict(diffusers.DDPMScheduler(clip_sample=True, clip_sample_range=0.5).config)
    s = DiffusersSampler(clipping, "dpmpp2m")
    assert s.x0_clip == 0.5 and s.settings()["x0_clip"] == 0.5
    noise = torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    ours = s.sample(unet, noise, 6)

    scheduler = diffusers.DPMSolverMultistepScheduler.from_config(clipping)
    scheduler.set_timesteps(6)
    abar = scheduler.alphas_cumprod
    x = noise
    for t in scheduler.timesteps:
        eps = unet(x, t).sample
        ab = abar[int(t)]
        x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-0.5, 0.5)
        x = scheduler.step((x - ab.sqrt() * x0) / (1 - ab).sqrt(), t, x).prev_sample
    # 3e-5: the reference's x0 -> eps -> x0 round trip in float32 (DPM-Solver's alpha_t against sqrt(abar))
    torch.testing.assert_close(ours, x.clamp(-1, 1), atol=3e-5, rtol=0)
    unclipped = DiffusersSampler(dict(clipping, clip_sample=False), "dpmpp2m")
    assert unclipped.x0_clip is None
    assert (ours - unclipped.sample(unet, noise, 6)).abs().max() > 1e-2  # the clip changed these samples
    # thresholding takes clipping's place, in DPM-Solver++'s scheduler itself
    assert DiffusersSampler(dict(clipping, thresholding=True), "dpmpp2m").x0_clip is None


@pytest.mark.parametrize(
    "change, sampler, message",
    [
        ({"variance_type": "learned_range"}, "ddim", "variance_type 'learned_range' .* is not sampled here"),
        ({"variance_type": "fixed_large_log"}, "ddpm", "variance_type 'fixed_large_log' is not one of fixed_small"),
        ({"thresholding": True}, "ddpm", "thresholding: true is not sampled by lcsc's DDPM loop"),
        ({"algorithm_type": "dpmsolver"}, "dpmpp2m", "clip_sample: true with algorithm_type 'dpmsolver'"),
        ({"prediction_type": "flow"}, "ddpm", "prediction_type 'flow' is not one of"),
    ],
)
def test_a_setting_that_would_change_samples_is_honoured_or_refused(change, sampler, message):
    from lcsc.kernel.errors import ConfigError

    config = dict(diffusers.DDPMScheduler().config, **change)
    with pytest.raises(ConfigError, match=message):
        DiffusersSampler(config, sampler, where="run/scheduler_config.json")


def test_noise_drawn_in_advance_is_bounded():
    from lcsc.kernel.errors import ConfigError
    from lcsc.kernel.scoring import make_noise

    with pytest.raises(
        ConfigError, match=r"draws 1001 noise images per sample in advance .* 22.9 GiB for 2000 samples"
    ):
        make_noise(2000, (3, 32, 32), 0, "cpu", 1001)
