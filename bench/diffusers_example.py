"""The training run of docs/your-own-run.md's worked example, made offline.

It follows diffusers' unconditional example (`examples/unconditional_image_generation/
train_unconditional.py`) in its defaults and its layout, with a smaller UNet and a few flags a
user would pass:
- the data: a flat folder of PNG images (scikit-learn's 8x8 digits written as files), read as RGB
  and resized to `--resolution` with bilinear interpolation and a centre crop, then scaled to
  [-1, 1], as the script's transforms do;
- `DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")` (so `clip_sample: true`);
- `EMAModel(..., decay=--ema_max_decay, use_ema_warmup=True, inv_gamma=1.0, power=3/4)`;
- AdamW (betas 0.95/0.999, weight decay 1e-6) with a cosine schedule after `--lr_warmup_steps`;
- every `--checkpointing_steps` a `checkpoint-<step>/` folder with `unet/`, `unet_ema/`, and
  accelerate's optimizer, scheduler and RNG files; at the end the EMA weights as a
  `DDPMPipeline` in the output folder.

    .venv/bin/python bench/diffusers_example.py runs/digits16 --images runs/digits-png
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_images(folder: Path) -> int:
    """scikit-learn's digits as 8-bit grey PNG files, one folder, no labels."""
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    images = load_digits().images
    for i, im in enumerate(images):
        Image.fromarray(np.round(im * 255 / 16).astype(np.uint8), mode="L").save(folder / f"{i:04d}.png")
    return len(images)


def load_images(folder: Path, resolution: int) -> torch.Tensor:
    """The folder as the training script's transforms give it: RGB, bilinear resize of the short
    side, centre crop, [-1, 1]."""
    out = []
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = resolution / min(im.size)
            w, h = max(resolution, round(im.width * scale)), max(resolution, round(im.height * scale))
            im = im.resize((w, h), Image.BILINEAR)
            left, top = (w - resolution) // 2, (h - resolution) // 2
            im = im.crop((left, top, left + resolution, top + resolution))
            out.append(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1)
    return torch.from_numpy(np.stack(out))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("output_dir", type=Path)
    p.add_argument("--images", type=Path, required=True, help="the image folder (written first if absent)")
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--train_batch_size", type=int, default=16)
    p.add_argument("--max_train_steps", type=int, default=3000)
    p.add_argument("--checkpointing_steps", type=int, default=150)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--lr_warmup_steps", type=int, default=500)
    p.add_argument("--ema_max_decay", type=float, default=0.9999)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    if not args.images.is_dir():
        print(f"wrote {write_images(args.images)} images to {args.images}")
    data = load_images(args.images, args.resolution)
    torch.manual_seed(args.seed)
    unet = UNet2DModel(
        sample_size=args.resolution,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    ema = EMAModel(
        unet.parameters(),
        decay=args.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=1.0,
        power=3 / 4,
        model_cls=UNet2DModel,
        model_config=unet.config,
    )
    opt = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr = get_cosine_schedule_with_warmup(opt, args.lr_warmup_steps, args.max_train_steps)
    gen = torch.Generator().manual_seed(args.seed)
    n_params = sum(t.numel() for t in unet.parameters())
    print(
        f"{len(data)} images at {args.resolution} px, UNet2DModel of {n_params} parameters, "
        f"{args.max_train_steps} steps",
        flush=True,
    )
    start = time.time()
    for step in range(1, args.max_train_steps + 1):
        x = data[torch.randint(0, len(data), (args.train_batch_size,), generator=gen)]
        noise = torch.randn(x.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x),), generator=gen)
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x, noise, t), t).sample, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr.step()
        ema.step(unet.parameters())
        if step % args.checkpointing_steps == 0:
            out = args.output_dir / f"checkpoint-{step}"
            unet.save_pretrained(out / "unet")
            ema.save_pretrained(out / "unet_ema")
            torch.save(opt.state_dict(), out / "optimizer.bin")
            torch.save(lr.state_dict(), out / "scheduler.bin")
            with open(out / "random_states_0.pkl", "wb") as fh:  # accelerate writes a pickle here
                pickle.dump({"step": step}, fh)
            print(
                f"step {step}: loss {loss.item():.4f}, ema decay {ema.cur_decay_value:.5f}, "
                f"{step / (time.time() - start):.1f} it/s",
                flush=True,
            )
    ema.copy_to(unet.parameters())
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(args.output_dir)
    (args.output_dir / "train_args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    print(f"done in {time.time() - start:.0f} s: {args.output_dir}")


if __name__ == "__main__":
    main()
