"""The training loop shared by every model kind: checkpoint trail, EMA copies, exact resume.

Every `checkpoint_every` steps the raw weights join the trail (safetensors + a manifest entry
with step, wall time, loss and sha256) and a resume state (weights, EMAs, optimizer, RNG) is
written atomically, so a killed job continues from its last checkpoint with the same result
as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .config import config_hash
from .errors import InputError, LcscError
from .io import load_tensors, remove_stale_temps, save_tensors, sha256, write_json
from .progress import progress
from .trail import MANIFEST_FORMAT

RESUME_FILE = "resume.safetensors"


class TrainingError(LcscError, RuntimeError):
    """Training cannot go on (a non-finite loss); main prints it as one line."""


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    sd = opt.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            tensors[f"opt.{pid}.{name}"] = torch.as_tensor(value)
    return tensors, json.dumps(sd["param_groups"])


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: str) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": json.loads(groups)})


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Generator, int], torch.Tensor],
    data: torch.Tensor,
    train_cfg: dict,
    out_dir: str | Path,
    *,
    seed: int,
    device: torch.device,
    manifest_extra: dict,
    run=None,
    desc: str = "train",
) -> Path:
    """Train `model` on `data` with `loss_fn(model, batch, generator, step)` (the step, 0-based,
    is for losses with a schedule, such as consistency training's discretization curriculum);
    write the trail and its manifest under `out_dir`.

    Returns the manifest path. `manifest_extra` (model kind, model config, ...) is stored in the
    manifest and is part of the resume key: a resume state from other settings is not reused.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)
    iterations, every = train_cfg["iterations"], train_cfg["checkpoint_every"]
    decays = list(train_cfg["ema_decays"])
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=train_cfg["lr"])
    keys = list(model.state_dict().keys())
    ema = {d: [t.detach().clone() for t in model.state_dict().values()] for d in decays}
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    # Everything but the number of iterations decides whether an old resume state fits.
    resume_key = config_hash({k: v for k, v in train_cfg.items() if k not in ("iterations", "log_every")}
                             | {"seed": seed, "extra": manifest_extra})
    step, wall, entries = 0, 0.0, []
    resume_path = out_dir / RESUME_FILE
    if resume_path.exists():
        from safetensors import safe_open

        try:
            with safe_open(str(resume_path), "pt") as fh:
                meta = fh.metadata() or {}
        except Exception as exc:  # cut short or another kind of file
            raise InputError(f"{resume_path}: not a readable resume state ({str(exc).strip()[:200]}); delete it "
                             "to train again from step 0") from exc
        if meta.get("resume_key") == resume_key and int(meta["step"]) <= iterations:
            state = load_tensors(resume_path)
            model.load_state_dict({k: state[f"model.{k}"] for k in keys})
            for d in decays:
                for i, k in enumerate(keys):
                    ema[d][i].copy_(state[f"ema.{d}.{k}"])
            _load_optimizer(opt, {k: v for k, v in state.items() if k.startswith("opt.")}, meta["param_groups"])
            gen.set_state(state["rng.train"])
            torch.set_rng_state(state["rng.global"])
            step, wall, entries = int(meta["step"]), float(meta["wall"]), json.loads(meta["entries"])
            # the last step of a shorter earlier run is off the checkpoint grid: a run that goes on
            # from there would not have saved it
            entries = [e for e in entries if e["step"] % every == 0 or e["step"] == iterations]
            print(f"[{desc}] resuming from step {step} ({resume_path})", flush=True)
        else:
            print(f"[{desc}] {resume_path} was written with other settings; starting from step 0", flush=True)

    params = [p for p in model.parameters()]
    tensors = list(model.state_dict().values())
    losses: list[float] = []
    window: list[float] = []
    bar = progress(total=iterations, initial=step, desc=desc)
    t0 = time.perf_counter()
    while step < iterations:
        lr = train_cfg["lr"] * min(1.0, (step + 1) / max(1, train_cfg["warmup"]))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(data), (train_cfg["batch_size"],), generator=gen)
        loss = loss_fn(model, data[idx].to(device), gen, step)
        if not math.isfinite(loss.item()):
            last = entries[-1]["file"] if entries else "none yet"
            raise TrainingError(
                f"[{desc}] loss is {loss.item()} at step {step + 1}; stopped. "
                f"The last good checkpoint is {out_dir / last if entries else last} (its resume state "
                f"is {resume_path}); a rerun with the same settings resumes there, a rerun with other "
                f"train settings (e.g. a lower train.lr) starts again from step 0."
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if train_cfg["grad_clip"] > 0:
            nn.utils.clip_grad_norm_(params, train_cfg["grad_clip"])
        opt.step()
        step += 1
        with torch.no_grad():
            for d in decays:
                torch._foreach_lerp_(ema[d], tensors, 1 - d)
        window.append(loss.item())
        losses.append(loss.item())
        if step % train_cfg["log_every"] == 0 or step == iterations:
            mean = sum(window) / len(window)
            window.clear()
            bar.set_postfix(loss=f"{mean:.4f}")
            if run is not None:
                run.log_metrics({"train_loss": mean}, step=step)
        bar.update(1)
        if step % every == 0 or step == iterations:
            elapsed = wall + time.perf_counter() - t0
            name = f"step_{step:07d}.safetensors"
            save_tensors(out_dir / name, dict(zip(keys, tensors)))
            entries.append({"step": step, "file": name, "wall_time": round(elapsed, 3),
                            "loss": sum(losses) / len(losses), "sha256": sha256(out_dir / name)})
            losses.clear()
            opt_tensors, groups = _optimizer_tensors(opt)
            state = {f"model.{k}": v for k, v in zip(keys, tensors)}
            state |= {f"ema.{d}.{k}": v for d in decays for k, v in zip(keys, ema[d])}
            state |= opt_tensors | {"rng.train": gen.get_state(), "rng.global": torch.get_rng_state()}
            save_tensors(resume_path, state, metadata={
                "resume_key": resume_key, "step": str(step), "wall": str(elapsed),
                "entries": json.dumps(entries), "param_groups": groups})
    bar.close()

    ema_entries = []
    for d in decays:
        name = f"ema_{d}.safetensors"
        save_tensors(out_dir / name, dict(zip(keys, ema[d])))
        ema_entries.append({"decay": d, "file": name, "sha256": sha256(out_dir / name)})
    manifest = {"format": MANIFEST_FORMAT, "iterations": iterations, "checkpoint_every": every,
                "checkpoints": entries, "ema": ema_entries, **manifest_extra}
    manifest_path = out_dir / "manifest.json"
    write_json(manifest_path, manifest)
    return manifest_path
