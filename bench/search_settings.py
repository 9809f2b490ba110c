"""Compare search settings on one trained trail: for each setting, run the search and score the
coefficients it keeps on the evaluation seeds (the numbers the report would show).

    python bench/search_settings.py --config config/config.yaml --results /tmp/lcsc-bench \
        "default" "sigma=search.sigma=0.03" "big=search.budget=400,search.samples=2000"

Each setting is NAME or NAME=KEY=VALUE[,KEY=VALUE...]. Settings that change `train.*` retrain into
their own results folder. Prints one table row per setting, plus the last checkpoint and each EMA.
"""

from __future__ import annotations

import argparse
import time

import torch
import yaml

from lcsc.cli import main as lcsc_main
from lcsc.kernel import variants
from lcsc.kernel.config import load_config
from lcsc.kernel.devices import resolve_device
from lcsc.kernel.paths import Layout, dataset_name, search_files
from lcsc.kernel.scoring import Scorer
from lcsc.stages import search


def parse(setting: str) -> tuple[str, dict]:
    name, _, rest = setting.partition("=")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def ensure_trained(cfg_file: str, overrides: dict) -> None:
    sets = [x for k, v in overrides.items() for x in ("--set", f"{k}={v}")]
    cfg = load_config(cfg_file, overrides)
    layout = Layout.of(cfg)
    if not layout.manifest("dm").exists():
        lcsc_main(["train-dm", "--config", cfg_file, *sets])
    if not layout.stats(dataset_name(cfg["data"]), "train", cfg["features"]["kind"]).exists():
        lcsc_main(["train-features", "--config", cfg_file, *sets])
        lcsc_main(["reference-stats", "--config", cfg_file, *sets])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--results", default="/tmp/lcsc-bench")
    ap.add_argument("settings", nargs="*", default=["default"])
    args = ap.parse_args()
    base = {"results_dir": args.results, "mlflow.enabled": False}
    rows = []
    baselines_done = set()
    for setting in args.settings:
        name, overrides = parse(setting)
        train_keys = {k: v for k, v in overrides.items() if k.startswith("train.")}
        trail_over = dict(base, **train_keys)
        if train_keys:
            trail_over["experiment"] = "bench-" + "-".join(f"{k.split('.')[-1]}{v}" for k, v in train_keys.items())
        ensure_trained(args.config, trail_over)
        cfg = load_config(args.config, dict(trail_over, **overrides))
        device = resolve_device(cfg)
        layout = Layout.of(cfg)
        stats = layout.stats(dataset_name(cfg["data"]), "train", cfg["features"]["kind"])
        out = layout.root / "bench" / name
        t0 = time.perf_counter()
        paths = search.Paths(manifest=layout.manifest("dm"), features=layout.feature_net("classifier"), stats=stats,
                             **search_files(out))
        result = search.run(cfg, paths, "dm", device)
        seconds = time.perf_counter() - t0
        scorer = Scorer.open(cfg, layout.manifest("dm"), layout.feature_net("classifier"), stats, device,
                             cfg["evaluate"]["batch_size"])
        noise = scorer.make_noise(cfg["evaluate"]["samples"], cfg["evaluate"]["seed"])
        nfe = cfg["search"]["nfe"]
        fid, _ = scorer.fid(scorer.weights_of(result["coefficients"]), nfe, noise)
        rows.append((name, layout.root.name, fid, result["fitness"], result["rescore_fitness"], seconds))
        if layout.root not in baselines_done:
            baselines_done.add(layout.root)
            for variant in [variants.LAST, *[variants.kept_ema(d) for d in cfg["train"]["ema_decays"]]]:
                flat, _ = variants.weights(scorer, variant, bcfg=cfg["baselines"])
                rows.append((f"[{variant}]", layout.root.name, scorer.fid(flat, nfe, noise)[0], None, None, 0.0))
        print(rows[-1], flush=True)
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\ndevice: {dev}; FID at the search NFE on evaluation seeds")
    print(f"{'setting':<24} {'trail':<28} {'eval FID':>9} {'screen':>8} {'rescore':>8} {'search s':>9}")
    for name, trail, fid, screen, rescore, seconds in rows:
        f = lambda x: f"{x:8.2f}" if x is not None else f"{'':8}"
        print(f"{name:<24} {trail:<28} {fid:9.2f} {f(screen)} {f(rescore)} {seconds:9.1f}")


if __name__ == "__main__":
    main()
