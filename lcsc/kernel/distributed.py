"""Training on several processes: one per GPU (NCCL), or gloo processes on the CPU.

`python -m lcsc.launch N` (the training rules run it when `train.gpus` is above 1; `torchrun
--standalone --nproc-per-node N` works the same) starts N copies of the stage and tells each its
rank through the environment. Every rank draws the same batch indices and noise from the same
generator and computes the loss on its own slice of the global batch; DistributedDataParallel
averages the gradients, so every rank takes the same optimizer step as one process on the whole
batch would (to float rounding). Rank 0 alone writes the trail, the EMAs, the manifest and the
resume state, and logs to MLflow.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .devices import resolve_device
from .errors import ConfigError

# the ranks' environment, as lcsc.launch and torchrun set it
WORLD_ENV, RANK_ENV, LOCAL_RANK_ENV = "WORLD_SIZE", "RANK", "LOCAL_RANK"


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        """What a stage's first line adds: nothing for one process."""
        if self.world == 1:
            return ""
        return f", {self.world} processes ({dist.get_backend()}), {self.world} slices of each batch"

    def part(self, batch_size: int) -> slice:
        """This rank's slice of a global batch (`split_batch` checked that it divides evenly)."""
        size = batch_size // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def mean(self, value: torch.Tensor) -> float:
        """The mean over the ranks of a scalar each rank holds (itself when alone)."""
        if self.world == 1:
            return value.item()
        # A copy: all_reduce sums in place, and the loss itself must stay untouched for the backward pass.
        total = value.detach().reshape(1).to(torch.float64, copy=True)
        dist.all_reduce(total)
        return total.item() / self.world

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `tensor` (same shape and dtype on each), in rank order, on every rank."""
        if self.world == 1:
            return [tensor]
        out = [torch.empty_like(tensor) for _ in range(self.world)]
        # Gathered as objects, not with all_gather: the RNG states are CPU tensors, which NCCL cannot
        # gather; objects travel the same way under NCCL as under gloo.
        dist.all_gather_object(out, tensor)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (a dataset's download, say), then the others."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()


def split_batch(batch_size: int, world: int, key: str = "train.batch_size") -> None:
    if batch_size % world:
        raise ConfigError(
            f"{key}: {batch_size} images per step do not split evenly over {world} "
            f"processes (train.gpus); use a multiple of {world}"
        )


def start(cfg: dict) -> tuple[Ranks, torch.device]:
    """This process's ranks and device. Under lcsc.launch or torchrun (WORLD_SIZE above 1) it joins the process
    group: NCCL on GPU `LOCAL_RANK` where the config's device is a GPU, else gloo on the CPU."""
    world = int(os.environ.get(WORLD_ENV, "1") or 1)
    device = resolve_device(cfg)
    if world == 1:
        return Ranks(), device
    rank, local = int(os.environ[RANK_ENV]), int(os.environ.get(LOCAL_RANK_ENV, "0"))
    split_batch(cfg["train"]["batch_size"], world)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"train.gpus: {world} processes on this node, but torch sees "
                f"{torch.cuda.device_count()} GPUs; ask for as many GPUs as processes"
            )
        device = torch.device("cuda", local)
        # Set before the process group starts: NCCL uses the current device, and every rank would
        # otherwise work on GPU 0.
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    # init_process_group raises when called twice; a process that already joined keeps its group.
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=30))
    return Ranks(rank, world), device


def stop() -> None:
    """Leave the process group (a no-op for one process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """`model` for the training step: DistributedDataParallel over the ranks, or itself when alone.
    Its parameters stay `model`'s, which the trail, the EMAs and the resume state read."""
    if ranks.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # DistributedDataParallel takes no device_ids for a module on the CPU.
    ids = [device.index] if device.type == "cuda" else None
    # lcsc's U-Net has no buffers to sync.
    return DistributedDataParallel(model, device_ids=ids)
