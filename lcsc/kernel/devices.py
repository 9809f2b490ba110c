"""Which devices a stage computes on: the config's `device`, and the search's `search.devices`."""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(cfg: dict) -> torch.device:
    """`device`: auto (a GPU when torch sees one), cuda or cpu."""
    if cfg["device"] == "cuda" or (cfg["device"] == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' was asked for but torch sees no GPU")
        return torch.device("cuda")
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
            raise ConfigError(f"search.devices: {name!r} is not available here "
                              f"({torch.cuda.device_count()} CUDA devices visible)")
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
