"""What the benchmark scripts share: the name of the machine their figures come from."""

from __future__ import annotations

import platform

import torch


def machine(device: torch.device) -> str:
    """The card's name on CUDA, else the CPU model and torch's thread count."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
