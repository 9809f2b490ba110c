"""Which devices a stage computes on: the config's `device`, and the search's `search.devices`."""

from __future__ import annotations

import os
import sys

import torch

from .errors import ConfigError

# What a scheduler sets in a job it gave GPUs (SLURM sets both)
GPU_ENV = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS")


def given_gpus() -> str | None:
    """The GPUs this job was given, as its environment says (`CUDA_VISIBLE_DEVICES=0,1`), or None."""
    for name in GPU_ENV:
        value = os.environ.get(name, "").strip()
        if value and value not in ("-1", "NoDevFiles"):
            return f"{name}={value}"
    return None


def resolve_device(cfg: dict, quiet: bool = False) -> torch.device:
    """`device`: auto (a GPU when torch sees one), cuda or cpu. A job that was given GPUs but
    whose torch sees none (a CPU build of torch, no driver) says so (unless `quiet`) and computes
    on the CPU."""
    if cfg["device"] == "cuda" or (cfg["device"] == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' was asked for but torch sees no GPU")
        return torch.device("cuda")
    given = given_gpus()
    if cfg["device"] == "auto" and given and not quiet:
        print(
            f"lcsc: warning: device: auto: this job was given GPUs ({given}) but torch "
            f"{torch.__version__} sees none (a CPU build of torch, or no driver); computing on the CPU",
            file=sys.stderr,
            flush=True,
        )
    return torch.device("cpu")


def search_devices(scfg: dict, device: torch.device) -> list[torch.device]:
    """`search.devices`: `auto` is the stage's one device (the one its resources reserve); a list
    spreads every batch over those devices (reserve them all, e.g. `--resources gpu=2`)."""
    if scfg["devices"] == "auto":
        return [device]
    out = []
    for name in scfg["devices"]:
        try:
            d = torch.device(name)
        except RuntimeError as exc:
            raise ConfigError(f"search.devices: {name!r} is not a torch device name ({exc})") from None
        if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
            raise ConfigError(
                f"search.devices: {name!r} is not available here ({torch.cuda.device_count()} CUDA devices visible)"
            )
        if d.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(
                f"search.devices: {name!r}, but this torch has no MPS device (Apple silicon only); "
                "use cpu or cuda devices"
            )
        out.append(d)
    return out


def peak_memory(devices) -> str:
    """The peak resident memory of this process and the peak memory torch allocated on each CUDA
    device, for the log of a stage that holds a trail."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    host = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    parts = [f"host {host:.0f} MB"]
    for d in dict.fromkeys(torch.device(x) for x in devices):
        if d.type == "cuda":
            parts.append(f"{d} {torch.cuda.max_memory_allocated(d) / 2**20:.0f} MB")
    return "peak memory: " + ", ".join(parts)


def check_compiler(scfg: dict, devices) -> None:
    """`search.compile` on one device (the workers of several are threads, and torch.compile is not
    thread-safe); on the CPU, torch.compile's code needs a C++ compiler."""
    import shutil

    if scfg.get("compile") and len(devices) > 1:
        raise ConfigError(
            f"search.compile: true with {len(devices)} search devices; torch.compile is not "
            "thread-safe and each device's worker is a thread: compile on one device, or set "
            "search.compile: false"
        )
    if (
        scfg.get("compile")
        and any(torch.device(d).type == "cpu" for d in devices)
        and not any(shutil.which(c) for c in ("g++", "c++", "clang++"))
    ):
        raise ConfigError(
            "search.compile: torch.compile on the CPU needs a C++ compiler (g++ or clang++) on PATH; "
            "install one or set search.compile: false"
        )
