"""The training loop shared by every model kind: checkpoint trail, EMA copies, exact resume.

Every `checkpoint_every` steps the raw weights join the trail (safetensors + a manifest entry
with step, wall time, loss and sha256) and a resume state (weights, EMAs, optimizer, RNG) is
written atomically, so a killed job continues from its last checkpoint with the same result
as an uninterrupted run. On several processes (lcsc.kernel.distributed) every rank steps the
same way and rank 0 alone writes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .distributed import Ranks, split_batch, wrap
from .errors import ConfigError, InputError, TrainingError
from .io import json_digest, remove_stale_temps, sha256, write_json
from .progress import progress
from .tensors import load_tensors, save_tensors
from .trail import MANIFEST_FORMAT

RESUME_FILE = "resume.safetensors"


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


@dataclass(frozen=True)
class Labels:
    """The training images' classes, for a class-conditional model; with `dropout`, that share of
    each batch gets the label `num_classes` ("no label", classifier-free guidance's training)."""

    labels: torch.Tensor  # [N] int64
    num_classes: int
    dropout: float = 0.0

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        y = self.labels[idx]
        # Drawn only with dropout on: the draw uses the batch generator, and without it every batch
        # stays the same as an unconditional run's.
        if self.dropout > 0:
            y = torch.where(torch.rand(len(idx), generator=gen) < self.dropout, self.num_classes, y)
        return y


def training_labels(model_cfg: dict, data) -> Labels | None:
    """The classes a class-conditional model (`model.num_classes`) trains with, checked against
    the data set's (None for an unconditional model)."""
    classes = model_cfg.get("num_classes")
    if not classes:
        return None
    if data.num_classes < 2:
        raise ConfigError(
            f"model.num_classes: {classes}, but the data's images are unlabelled (a data.folder "
            "without class sub-folders); put each class in a sub-folder, or unset model.num_classes"
        )
    if data.num_classes != classes:
        raise ConfigError(
            f"model.num_classes: {classes}, but the data set has {data.num_classes} classes; set "
            f"model.num_classes: {data.num_classes}"
        )
    return Labels(data.labels, classes, float(model_cfg.get("label_dropout") or 0.0))


class _Trainer:
    """The state of one training run: the model, its optimizer, EMAs and RNG, the trail so far."""

    def __init__(self, model: nn.Module, train_cfg: dict, out_dir: Path, seed: int, device, desc: str, ranks: Ranks):
        self.cfg, self.out_dir, self.desc, self.ranks = train_cfg, out_dir, desc, ranks
        self.decays = list(train_cfg["ema_decays"])
        self.model = model
        model.to(device).train()
        # What the loss calls; `model` holds the same parameters.
        self.net = wrap(model, ranks, device)
        self.opt = torch.optim.Adam(model.parameters(), lr=train_cfg["lr"])
        self.keys = list(model.state_dict().keys())
        self.ema = {d: [t.detach().clone() for t in model.state_dict().values()] for d in self.decays}
        # Batches and noise come from this generator, seeded alike on every rank, so all ranks draw the same batch.
        self.gen = torch.Generator().manual_seed(seed)
        # Dropout uses the global generators (CPU and CUDA): each rank gets its own seed.
        torch.manual_seed(seed + ranks.rank)
        self.cuda = torch.device(device) if torch.device(device).type == "cuda" else None
        self.params = list(model.parameters())
        # state_dict() tensors share the parameters' storage: kept once, they always show the current
        # weights (for the EMA update and the checkpoints) without copying.
        self.tensors = list(model.state_dict().values())
        self.step, self.wall, self.entries = 0, 0.0, []
        self.resume_path = out_dir / RESUME_FILE

    def resume(self, resume_key: str) -> None:
        """Continue from the resume state if it was written with the same settings."""
        if not self.resume_path.exists():
            return
        try:
            with safe_open(str(self.resume_path), "pt") as fh:
                meta = fh.metadata() or {}
        except Exception as exc:  # cut short or another kind of file
            raise InputError(
                f"{self.resume_path}: not a readable resume state ({str(exc).strip()[:200]}); "
                "delete it to train again from step 0"
            ) from exc
        iterations, every = self.cfg["iterations"], self.cfg["checkpoint_every"]
        # A state from a longer run is already past this run's end and cannot be rewound, so it too
        # means training again from step 0.
        if meta.get("resume_key") != resume_key or int(meta["step"]) > iterations:
            self._say(f"[{self.desc}] {self.resume_path} was written with other settings; starting from step 0")
            return
        state = load_tensors(self.resume_path)
        self.model.load_state_dict({k: state[f"model.{k}"] for k in self.keys})
        for d in self.decays:
            for i, k in enumerate(self.keys):
                self.ema[d][i].copy_(state[f"ema.{d}.{k}"])
        _load_optimizer(self.opt, {k: v for k, v in state.items() if k.startswith("opt.")}, meta["param_groups"])
        self.gen.set_state(state["rng.train"])
        # Rank 0's state is stored under `rng.global`, the name a single-process run uses, so a state
        # resumes on any number of processes.
        own = "rng.global" if self.ranks.main else f"rng.global.{self.ranks.rank}"
        # A state from fewer processes has none for this rank: it keeps its seed.
        if own in state:
            torch.set_rng_state(state[own])
        # The CUDA generator drives dropout on a GPU.
        if self.cuda is not None and f"rng.cuda.{self.ranks.rank}" in state:
            torch.cuda.set_rng_state(state[f"rng.cuda.{self.ranks.rank}"], self.cuda)
        self.step, self.wall, entries = int(meta["step"]), float(meta["wall"]), json.loads(meta["entries"])
        # the last step of a shorter earlier run is off the checkpoint grid: a run that goes on
        # from there would not have saved it
        self.entries = [e for e in entries if e["step"] % every == 0 or e["step"] == iterations]
        self._say(f"[{self.desc}] resuming from step {self.step} ({self.resume_path})")

    def _say(self, line: str) -> None:
        if self.ranks.main:
            print(line, flush=True)

    def train_step(self, loss_fn, data: torch.Tensor, device, labels: Labels | None = None) -> float:
        """One optimizer step on a random batch, then the EMAs; the step's loss (over the whole
        batch: the mean of the ranks' losses on their equal slices). With `labels`, the loss is
        also given the batch's labels (`labels=`, the whole batch's; it takes its slice)."""
        cfg = self.cfg
        lr = cfg["lr"] * min(1.0, (self.step + 1) / max(1, cfg["warmup"]))
        for group in self.opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(data), (cfg["batch_size"],), generator=self.gen)
        extra = {} if labels is None else {"labels": labels.batch(idx, self.gen).to(device)}
        if self.ranks.world == 1:
            loss = loss_fn(self.net, data[idx].to(device), self.gen, self.step, **extra)
        else:  # every rank draws the whole batch's noise and computes on its own slice
            loss = loss_fn(
                self.net, data[idx].to(device), self.gen, self.step, part=self.ranks.part(len(idx)), **extra
            )
        # Checked before the backward pass, so a non-finite loss never reaches the weights and the
        # last checkpoint and resume state stay good to resume from.
        value = self.ranks.mean(loss)
        if not math.isfinite(value):
            last = self.out_dir / self.entries[-1]["file"] if self.entries else "none yet"
            raise TrainingError(
                f"[{self.desc}] loss is {value} at step {self.step + 1}; stopped. "
                f"The last good checkpoint is {last} (its resume state is {self.resume_path}); a rerun "
                f"with the same settings resumes there, a rerun with other train settings (e.g. a lower "
                f"train.lr) starts again from step 0."
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["grad_clip"] > 0:
            nn.utils.clip_grad_norm_(self.params, cfg["grad_clip"])
        self.opt.step()
        self.step += 1
        with torch.no_grad():
            for d in self.decays:
                # ema + (1 - d) * (theta - ema) is d * ema + (1 - d) * theta, done for every tensor in one fused call.
                torch._foreach_lerp_(self.ema[d], self.tensors, 1 - d)
        return value

    def save_checkpoint(self, elapsed: float, mean_loss: float, resume_key: str) -> None:
        """The weights join the trail; the resume state is written after them (by rank 0, with
        every rank's dropout RNG)."""
        # Gathered before the rank check: a gather is a collective that every rank must join.
        rng = self.ranks.gather(torch.get_rng_state())
        cuda = self.ranks.gather(torch.cuda.get_rng_state(self.cuda)) if self.cuda is not None else []
        if not self.ranks.main:
            return
        # Zero-padded so the file names sort by step.
        name = f"step_{self.step:07d}.safetensors"
        save_tensors(self.out_dir / name, dict(zip(self.keys, self.tensors)))
        self.entries.append(
            {
                "step": self.step,
                "file": name,
                "wall_time": round(elapsed, 3),
                "loss": mean_loss,
                "sha256": sha256(self.out_dir / name),
            }
        )
        opt_tensors, groups = _optimizer_tensors(self.opt)
        state = {f"model.{k}": v for k, v in zip(self.keys, self.tensors)}
        state |= {f"ema.{d}.{k}": v for d in self.decays for k, v in zip(self.keys, self.ema[d])}
        state |= opt_tensors | {"rng.train": self.gen.get_state(), "rng.global": rng[0]}
        state |= {f"rng.global.{r}": t for r, t in enumerate(rng) if r} | {
            f"rng.cuda.{r}": t for r, t in enumerate(cuda)
        }
        # The resume state is written last: a job killed before it resumes from the previous state
        # and writes this checkpoint again.
        save_tensors(
            self.resume_path,
            state,
            metadata={
                "resume_key": resume_key,
                "step": str(self.step),
                "wall": str(elapsed),
                "entries": json.dumps(self.entries),
                "param_groups": groups,
            },
        )

    def write_manifest(self, manifest_extra: dict) -> Path:
        """The EMA files and the manifest that lists the trail (rank 0 writes them)."""
        manifest_path = self.out_dir / "manifest.json"
        if not self.ranks.main:
            self.ranks.barrier()  # returns once rank 0 has written them
            return manifest_path
        ema_entries = []
        for d in self.decays:
            name = f"ema_{d}.safetensors"
            save_tensors(self.out_dir / name, dict(zip(self.keys, self.ema[d])))
            ema_entries.append({"decay": d, "file": name, "sha256": sha256(self.out_dir / name)})
        manifest = {
            "format": MANIFEST_FORMAT,
            "iterations": self.cfg["iterations"],
            "checkpoint_every": self.cfg["checkpoint_every"],
            "checkpoints": self.entries,
            "ema": ema_entries,
            **manifest_extra,
        }
        write_json(manifest_path, manifest)
        self.ranks.barrier()
        return manifest_path


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
    ranks: Ranks = Ranks(),
    labels: Labels | None = None,
) -> Path:
    """Train `model` on `data` with `loss_fn(model, batch, generator, step)` (the step, 0-based,
    is for losses with a schedule, such as consistency training's discretization curriculum);
    write the trail and its manifest under `out_dir`. On several `ranks` the loss is also called
    with `part=`, the rank's slice of the batch (see lcsc.kernel.distributed), and for a
    class-conditional model with `labels=`, the batch's classes.

    Returns the manifest path. `manifest_extra` (model kind, model config, ...) is stored in the
    manifest and is part of the resume key: a resume state from other settings is not reused.
    """
    out_dir = Path(out_dir)
    split_batch(train_cfg["batch_size"], ranks.world)
    if ranks.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out_dir)
    ranks.barrier()
    iterations, every = train_cfg["iterations"], train_cfg["checkpoint_every"]
    trainer = _Trainer(model, train_cfg, out_dir, seed, device, desc, ranks)
    # Everything but the number of iterations (and of processes) decides whether an old resume
    # state fits.
    resume_key = json_digest(
        {k: v for k, v in train_cfg.items() if k not in ("iterations", "log_every", "gpus")}
        | {"seed": seed, "extra": manifest_extra}
    )[:12]
    trainer.resume(resume_key)
    losses: list[float] = []
    window: list[float] = []
    bar = progress(total=iterations, initial=trainer.step, desc=desc, quiet=not ranks.main)
    t0 = time.perf_counter()
    while trainer.step < iterations:
        loss = trainer.train_step(loss_fn, data, device, labels)
        window.append(loss)
        losses.append(loss)
        step = trainer.step
        if step % train_cfg["log_every"] == 0 or step == iterations:
            mean = sum(window) / len(window)
            window.clear()
            bar.set_postfix(loss=f"{mean:.4f}")
            if run is not None and ranks.main:
                run.log_metrics({"train_loss": mean}, step=step)
        bar.update(1)
        # The last step is saved even off the checkpoint grid, so the trail always ends at the final weights.
        if step % every == 0 or step == iterations:
            # The wall time goes on from the resumed state's, so it counts the whole training across restarts.
            trainer.save_checkpoint(trainer.wall + time.perf_counter() - t0, sum(losses) / len(losses), resume_key)
            losses.clear()
    bar.close()
    return trainer.write_manifest(manifest_extra)
