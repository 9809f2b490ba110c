"""Tensor files: checkpoints are data, never code. Written as safetensors (atomically); read from
safetensors, or from `.pt`/`.pth` with `weights_only=True`, so a pickle cannot run anything."""

from __future__ import annotations

import errno
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import InputError
from .io import atomic_path, first_line, reading


def save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def load_tensors(path: str | Path, device="cpu") -> dict:
    """Read a safetensors file; `.pt`/`.pth` files are read with weights_only=True."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such tensor file", str(path))
    if path.suffix in (".pt", ".pth"):
        try:  # weights_only: a pickle may hold only tensors and plain containers, never code
            obj = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:
            raise InputError(f"{path}: refused to load; not a plain tensor file (weights_only=True): "
                             f"{first_line(exc)}; convert it to safetensors from a trusted source") from exc
        if not isinstance(obj, dict):
            raise InputError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
        return obj
    with reading(path, "a readable safetensors file", "it was cut short or is another kind of file: restore it "
                 "or rerun the stage that writes it"):  # safetensors has its own errors for truncated headers
        return load_file(str(path), device=str(device))
