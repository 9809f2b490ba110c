"""Training runs of other trainers, made offline for the import tests.

`diffusers_run` trains a tiny `UNet2DModel` on digits with diffusers' `DDPMScheduler` and
`EMAModel`, and saves it as diffusers' unconditional training example does: every few steps a
`checkpoint-<step>/` folder with `unet/` and `unet_ema/` (`save_pretrained`) beside accelerate's
state files, and at the end a `DDPMPipeline.save_pretrained` of the EMA weights with the
scheduler in `scheduler/`. `diffusers_cm_run` does the same for a consistency model trained as
diffusers' consistency-training example trains it. `state_dict_run` turns an lcsc trail into openai/consistency_models'
layout: `model<step>.pt` files holding `{"state_dict": {"module.<key>": ...}}` and
`ema_<decay>_<step>.pt` files beside them.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from lcsc.kernel.data import load_split
from lcsc.kernel.tensors import load_tensors
from lcsc.kernel.trail import Trail

UNET = dict(
    sample_size=12,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
)


class Payload:
    """A pickle that, if ever unpickled, creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_payload(path: Path, marker: Path) -> Path:
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": Payload(marker)}, fh)
    return path


def _save_checkpoint(out: Path, unet, ema, opt, rng_state) -> None:
    """A `checkpoint-<step>/` folder as accelerate's save_state writes it with diffusers' hooks."""
    unet.save_pretrained(out / "unet")
    ema.save_pretrained(out / "unet_ema")
    torch.save(opt.state_dict(), out / "optimizer.bin")
    torch.save({"last_epoch": 0}, out / "scheduler.bin")  # the learning-rate scheduler's state
    with open(out / "random_states_0.pkl", "wb") as fh:  # the RNG state: a real pickle
        pickle.dump(rng_state, fh)


def diffusers_run(
    folder: Path,
    steps: int = 30,
    every: int = 10,
    seed: int = 0,
    prediction_type: str = "epsilon",
    ema_decay: float = 0.9999,
    marker: Path | None = None,
    num_classes: int | None = None,
) -> Path:
    """With `num_classes`, a class-conditional UNet (`num_class_embeds`) trained with each digit's class."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = load_split(
        {
            "dataset": "digits",
            "image_size": 12,
            "channels": 1,
            "split_seed": 0,
            "test_fraction": 0.2,
            "folder": None,
            "root": "",
            "download": False,
        },
        "train",
    )
    images = data.images
    unet = UNet2DModel(**UNET, num_class_embeds=num_classes)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    ema = EMAModel(unet.parameters(), decay=ema_decay, model_cls=UNet2DModel, model_config=unet.config)
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(images), (32,), generator=gen)
        x = images[idx]
        noise = torch.randn(x.shape, generator=gen)
        t = torch.randint(0, 1000, (len(x),), generator=gen)
        target = noise if prediction_type == "epsilon" else scheduler.get_velocity(x, noise, t)
        labels = data.labels[idx] % num_classes if num_classes else None  # (fewer classes: folded)
        loss = torch.nn.functional.mse_loss(
            unet(scheduler.add_noise(x, noise, t), t, class_labels=labels).sample, target
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.step(unet.parameters())
        if step % every == 0:
            _save_checkpoint(
                folder / f"checkpoint-{step}", unet, ema, opt, Payload(marker) if marker else {"step": step}
            )
    ema.store(unet.parameters())
    ema.copy_to(unet.parameters())
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    ema.restore(unet.parameters())
    return folder


def diffusers_cm_run(
    folder: Path,
    data,
    steps: int = 40,
    every: int = 10,
    seed: int = 0,
    num_classes: int | None = None,
    num_train_timesteps: int = 40,
    ema_decay: float = 0.5,
) -> Path:
    """A consistency model trained from data as diffusers' consistency-training example trains it
    (its preconditioning: the UNet sees x / sqrt(sigma^2 + sigma_data^2) at the time input
    250 ln(sigma), the boundary condition's c_skip and c_out; a pair of adjacent sigmas of the
    scheduler's discretization per image, the stop-gradient online network as target), saved in
    its layout: `checkpoint-<step>/` with `unet/`, `unet_ema/` and accelerate's state files, and at
    the end a `ConsistencyModelPipeline.save_pretrained` of the EMA weights (its scheduler in
    `scheduler/`). It trains on `data` (a data split: its images' channels are the UNet's); with
    `num_classes`, class-conditional (`num_class_embeds`) on the split's labels."""
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    channels = data.images.shape[1]
    unet = UNet2DModel(**dict(UNET, in_channels=channels, out_channels=channels), num_class_embeds=num_classes)
    scheduler = CMStochasticIterativeScheduler(num_train_timesteps=num_train_timesteps)
    sigmas = scheduler.sigmas.float()  # descending, sigma_max first
    ema = EMAModel(unet.parameters(), decay=ema_decay, model_cls=UNet2DModel, model_config=unet.config)
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)

    def f(x, sigma, labels):
        s = sigma[:, None, None, None]
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition(s)
        c_in = 1 / (s**2 + scheduler.config.sigma_data**2) ** 0.5
        return c_skip * x + c_out * unet(c_in * x, 250 * torch.log(sigma), class_labels=labels).sample

    for step in range(1, steps + 1):
        idx = torch.randint(0, len(data.images), (32,), generator=gen)
        x, labels = data.images[idx], (data.labels[idx] if num_classes else None)
        n = torch.randint(0, num_train_timesteps - 1, (len(x),), generator=gen)
        z = torch.randn(x.shape, generator=gen)
        high, low = sigmas[n], sigmas[n + 1]
        online = f(x + high[:, None, None, None] * z, high, labels)
        with torch.no_grad():
            target = f(x + low[:, None, None, None] * z, low, labels)
        loss = (((online - target) ** 2).flatten(1).sum(1) / (high - low)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.step(unet.parameters())
        if step % every == 0:
            _save_checkpoint(folder / f"checkpoint-{step}", unet, ema, opt, {"step": step})
    ema.store(unet.parameters())
    ema.copy_to(unet.parameters())
    ConsistencyModelPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    ema.restore(unet.parameters())
    return folder


def state_dict_run(manifest: Path, folder: Path, prefix: str = "module.", dtype=None) -> Path:
    """The checkpoints of the lcsc trail `manifest` as `model<step>.pt` state dicts (optionally
    cast to `dtype`), and its last kept EMA as `ema_<decay>_<step>.pt`."""
    trail = Trail.open(manifest)
    folder.mkdir(parents=True, exist_ok=True)
    for i, step in enumerate(trail.steps):
        state = load_tensors(trail.checkpoint_path(i))
        cast = dtype(i) if callable(dtype) else dtype
        torch.save(
            {"state_dict": {prefix + k: v.to(cast) if cast else v for k, v in state.items()}, "step": step},
            folder / f"model{step:06d}.pt",
        )
    decay, path = sorted(trail.ema_paths().items())[-1]
    torch.save(
        {"state_dict": {prefix + k: v for k, v in load_tensors(path).items()}},
        folder / f"ema_{decay}_{trail.steps[-1]:06d}.pt",
    )
    return folder


FACTORY = """from lcsc.kernel.nets import build_unet


def make(image_channels=1, **model):
    return build_unet(model, image_channels)
"""


def write_factory(folder: Path, name: str = "my_nets") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(FACTORY)
    return f"{name}:make"


def parse_args(argv=None):
    import argparse

    parser = argparse.ArgumentParser(
        description="write a small diffusers training run on digits, offline, in "
        "the layout of diffusers' unconditional training example"
    )
    parser.add_argument("out", help="the run's output folder")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=30, help="save a checkpoint every this many steps")
    parser.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction", "sample"])
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    diffusers_run(Path(args.out), steps=args.steps, every=args.every, prediction_type=args.prediction_type)
    print(f"a diffusers run of {args.steps} steps in {args.out}")
