"""Stage evaluate: the FID of one variant at every NFE of the sweep, on seeds the search never
saw, and a grid of its samples at the search NFE (the first, with several)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..kernel import variants
from ..kernel.devices import peak_memory
from ..kernel.images import save_grid
from ..kernel.io import write_json
from ..kernel.models import headline_nfe
from ..kernel.progress import progress
from ..kernel.scoring import Scorer

NAME = "evaluate"


@dataclass(frozen=True)
class Paths:
    manifest: Path
    features: Path
    stats: Path
    result: Path  # the FIDs (JSON)
    grid: Path  # the sample grid (PNG)
    coefficients: Path | None = None  # the search's, for lcsc
    baselines: Path | None = None  # the baselines stage's, for a profile (else computed from the config)


def run(cfg: dict, paths: Paths, model: str, variant: str, device: torch.device, stage_run=None) -> dict:
    ecfg = cfg["evaluate"]
    scorer = Scorer.open(cfg, paths.manifest, paths.features, paths.stats, device, ecfg["batch_size"], model=model)
    flat, coeffs = variants.weights(scorer, variant, paths.coefficients, paths.baselines, cfg["baselines"])
    noise = scorer.make_noise(ecfg["samples"], ecfg["seed"])
    fids, seconds = {}, {}
    bar = progress(total=len(ecfg["nfe"]), desc=f"evaluate {model}/{variant}")
    for nfe in sorted(ecfg["nfe"]):
        t0 = time.perf_counter()
        fids[nfe], images = scorer.fid(flat, nfe, noise)
        seconds[nfe] = time.perf_counter() - t0
        if nfe == headline_nfe(cfg["search"]["nfe"]):
            save_grid(images[:ecfg["grid"]], paths.grid)
        bar.set_postfix(nfe=nfe, fid=f"{fids[nfe]:.2f}")
        bar.update(1)
        if stage_run is not None:
            stage_run.log_metrics({"fid": fids[nfe], f"fid_nfe{nfe}": fids[nfe], "seconds": seconds[nfe]}, step=nfe)
    bar.close()
    print(f"[evaluate] {model}/{variant}: {peak_memory([scorer.device])}", flush=True)
    result = {"model": model, "variant": variant, "samples": ecfg["samples"], "seed": ecfg["seed"],
              "fid": {str(k): v for k, v in fids.items()},
              "seconds": {str(k): round(v, 3) for k, v in seconds.items()},
              "coefficients": coeffs, "trail_steps": scorer.trail.steps}
    write_json(paths.result, result)
    if stage_run is not None:
        stage_run.log_artifact(paths.result)
        stage_run.log_artifact(paths.grid)
    return result
