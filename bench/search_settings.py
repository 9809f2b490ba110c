"""Compare search settings on one trained trail: for each setting, score the baselines and run
the search as the pipeline does (the search starts from the best baseline profile or greedy soup),
then score the coefficients it keeps on the evaluation seeds at every NFE of the model's sweep
(the numbers the report would show; the mean over `evaluate.repeats` seeds).

    python bench/search_settings.py --config config/config.yaml --results /tmp/lcsc-bench \
        "default" "sigma=search.sigma=0.03" "big=search.budget=400,search.samples=2000"
    python bench/search_settings.py --model cm_cd --results results --experiment digits-evidence \
        "one=consistency.search_nfe=1" "log=consistency.search_nfe=[1,2]" \
        "arith=consistency.search_nfe=[1,2],search.fitness_mean=arithmetic"

Each setting is NAME or NAME=KEY=VALUE[,KEY=VALUE...] (a value with commas: write it without
spaces inside brackets, as above). Settings that change `train.*` retrain the diffusion model
into their own results folder; a consistency model's trail must exist (the pipeline trains it).
Prints one table row per setting, plus the last checkpoint and each kept EMA.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import yaml

from lcsc.cli import main as lcsc_main
from lcsc.kernel import variants
from lcsc.kernel.config import load_config
from lcsc.kernel.devices import resolve_device
from lcsc.kernel.models import for_model, repeat_seeds
from lcsc.kernel.paths import Layout, dataset_name, feature_tag
from lcsc.kernel.scoring import Scorer


def ensure_trained(cfg_file: str, overrides: dict) -> None:
    sets = [x for k, v in overrides.items() for x in ("--set", f"{k}={v}")]
    cfg = load_config(cfg_file, overrides)
    layout = Layout.of(cfg)
    if not layout.manifest("dm").exists():
        lcsc_main(["train-dm", "--config", cfg_file, *sets])
    if not layout.stats(dataset_name(cfg["data"]), "train", cfg["features"]["kind"]).exists():
        lcsc_main(["train-features", "--config", cfg_file, *sets])
        lcsc_main(["reference-stats", "--config", cfg_file, *sets])


def parse_all(settings: list[str]) -> list[tuple[str, dict]]:
    """Settings split on commas outside brackets (so `k=[1,2]` stays one value)."""
    out = []
    for setting in settings:
        depth, parts, cur = 0, [], ""
        for ch in setting:
            depth += ch == "["
            depth -= ch == "]"
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        name, _, parts[0] = parts[0].partition("=")
        overrides = {}
        for item in filter(None, parts):
            key, _, value = item.partition("=")
            overrides[key] = yaml.safe_load(value)
        out.append((name, overrides))
    return out


def sweep(cfg: dict, layout: Layout, model: str, stats, device, coefficients=None, variant=None) -> dict[int, float]:
    """Mean FID over the evaluation seeds at every NFE of the model's sweep."""
    mcfg = for_model(cfg, model)
    scorer = Scorer.open(
        mcfg,
        layout.manifest(model),
        layout.feature_net(feature_tag(cfg["features"])),
        stats,
        device,
        cfg["evaluate"]["batch_size"],
        model=model,
    )
    flat = (
        scorer.weights_of(coefficients)
        if coefficients is not None
        else variants.weights(scorer, variant, bcfg=mcfg["baselines"])[0]
    )
    seeds = repeat_seeds(cfg["evaluate"]["seed"], cfg["evaluate"]["repeats"])
    out = {}
    for nfe in mcfg["evaluate"]["nfe"]:
        fids = [scorer.fid(flat, nfe, scorer.make_noise(cfg["evaluate"]["samples"], seed))[0] for seed in seeds]
        out[nfe] = sum(fids) / len(fids)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--results", default="/tmp/lcsc-bench")
    ap.add_argument("--experiment", help="the experiment name (default: the config's)")
    ap.add_argument("--model", default="dm", help="dm, cm_cd or cm_ct")
    ap.add_argument("settings", nargs="*", default=["default"])
    args = ap.parse_args()
    base = {"results_dir": args.results, "mlflow.enabled": False}
    if args.experiment:
        base["experiment"] = args.experiment
    rows = []
    baselines_done = set()
    for name, overrides in parse_all(args.settings):
        train_keys = {k: v for k, v in overrides.items() if k.startswith("train.")}
        trail_over = dict(base, **train_keys)
        if train_keys:
            trail_over["experiment"] = "bench-" + "-".join(f"{k.split('.')[-1]}{v}" for k, v in train_keys.items())
        if args.model == "dm":
            ensure_trained(args.config, trail_over)
        all_over = dict(trail_over, **overrides)
        cfg = load_config(args.config, all_over)
        device = resolve_device(cfg)
        layout = Layout.of(cfg)
        if not layout.manifest(args.model).exists():
            raise SystemExit(f"{layout.manifest(args.model)}: no trail; run the pipeline on this config first")
        stats = layout.stats(dataset_name(cfg["data"]), "train", feature_tag(cfg["features"]))
        out = layout.root / "bench" / args.model / name
        sets = [x for k, v in all_over.items() for x in ("--set", f"{k}={json.dumps(v)}")]
        t0 = time.perf_counter()
        common = ["--config", args.config, *sets, "--model", args.model]
        lcsc_main(["baselines", *common, "--out", str(out / "baselines.json")])
        lcsc_main(["search", *common, "--baselines", str(out / "baselines.json"), "--out-dir", str(out)])
        seconds = time.perf_counter() - t0
        result = json.loads((out / "coefficients.json").read_text())
        fids = sweep(cfg, layout, args.model, stats, device, coefficients=result["coefficients"])
        rows.append((name, layout.root.name, fids, result["fitness"], result["rescore_fitness"], seconds))
        print(rows[-1], flush=True)
        if layout.root not in baselines_done:
            baselines_done.add(layout.root)
            decays = for_model(cfg, args.model)["train"]["ema_decays"]
            for variant in [variants.LAST, *[variants.kept_ema(d) for d in decays]]:
                rows.append(
                    (
                        f"[{variant}]",
                        layout.root.name,
                        sweep(cfg, layout, args.model, stats, device, variant=variant),
                        None,
                        None,
                        0.0,
                    )
                )
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    nfes = list(rows[0][2])
    print(
        f"\ndevice: {dev}; {args.model}: FID at each NFE on the evaluation seeds "
        f"(mean of {cfg['evaluate']['repeats']})"
    )
    print(
        f"{'setting':<24} {'trail':<20} "
        + " ".join(f"{'NFE ' + str(n):>8}" for n in nfes)
        + f" {'screen':>8} {'rescore':>8} {'search s':>9}"
    )
    for name, trail, fids, screen, rescore, seconds in rows:

        def f(x):
            return f"{x:8.2f}" if x is not None else f"{'':8}"

        print(
            f"{name:<24} {trail:<20} "
            + " ".join(f(fids[n]) for n in nfes)
            + f" {f(screen)} {f(rescore)} {seconds:9.1f}"
        )


if __name__ == "__main__":
    main()
