"""Tensor files: checkpoints are data, never code. Written as safetensors (atomically); read from
safetensors, or from `.pt`/`.pth` with `weights_only=True`, so a pickle cannot run anything."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import InputError
from .io import atomic_path, first_line, reading


def os_error(exc: Exception, path) -> OSError | None:
    """The OSError inside a writer's own error (safetensors reports a full disk as `I/O error: No
    space left on device (os error 28)`, older versions as `IoError(Os { code: 28, ...})`), or None
    when it holds none."""
    if isinstance(exc, OSError):
        return exc
    found = re.search(r"\(os error (\d+)\)|Os \{ code: (\d+)", str(exc))
    if found is None:
        return None
    code = int(found.group(1) or found.group(2))
    return OSError(code, os.strerror(code), str(path))


@contextlib.contextmanager
def os_errors(path):
    """Inside: a writer's error that holds an OSError is raised as that OSError, naming `path`."""
    try:
        yield
    except Exception as exc:
        error = os_error(exc, path)
        if error is None or error is exc:
            raise
        raise error from None


def save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp, os_errors(tmp):
        save_file(clean, str(tmp), metadata=metadata)


REWRITE = "restore it or rerun the stage that writes it"


def load_tensors(path: str | Path, device="cpu", fix: str = REWRITE) -> dict:
    """Read a safetensors file; `.pt`/`.pth` files are read with weights_only=True. `fix`: what the
    error of a damaged file tells the user to do (a file lcsc did not write is not rerun)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such tensor file", str(path))
    if path.suffix in (".pt", ".pth"):
        try:  # weights_only: a pickle may hold only tensors and plain containers, never code
            obj = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:
            raise InputError(
                f"{path}: refused to load; not a plain tensor file (weights_only=True): "
                f"{first_line(exc)}; convert it to safetensors from a trusted source"
            ) from exc
        if not isinstance(obj, dict):
            raise InputError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
        return obj
    with reading(path, "a readable safetensors file", f"it was cut short or is another kind of file: {fix}"):
        # (safetensors has its own errors for truncated headers)
        return load_file(str(path), device=str(device))
