"""Atomic file output (temp file + rename) and safe tensor files: a killed job never leaves a
half-written file that looks complete, and checkpoints are data (safetensors), never pickles."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path



@functools.cache
def _umask() -> int:
    """The process umask (reading it means setting it; done once, on the first write)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success it is renamed onto `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and str(path) not in str(exc):
            # disk full, permission denied, read-only file system: say which output failed
            raise OSError(exc.errno, f"{exc.strerror or exc} while writing {path}") from exc
        raise


def remove_stale_temps(folder: str | Path) -> None:
    """Delete temp files that a killed job left behind in `folder` (SIGKILL skips all cleanup)."""
    for tmp in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def copy_file(src: str | Path, dst: str | Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def load_tensors(path: str | Path, device="cpu") -> dict:
    """Read a safetensors file; `.pt`/`.pth` files are read with weights_only=True."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tensor file not found: {path}")
    if path.suffix in (".pt", ".pth"):
        try:  # weights_only: a pickle may hold only tensors and plain containers, never code
            obj = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:
            raise ValueError(f"{path}: refused to load; not a plain tensor file (weights_only=True): "
                             f"{str(exc).splitlines()[0]}") from exc
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
        return obj
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for truncated headers
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
