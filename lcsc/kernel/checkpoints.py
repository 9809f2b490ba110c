"""Checkpoints written by other trainers, read as data: a state dict inside a `.pt`/`.pth`/`.ckpt`/
`.bin` file (`torch.load(weights_only=True)`: tensors and plain containers only, never code) or a
`.safetensors` file. Pickled Python objects (EDM's `network-snapshot-*.pkl`, accelerate's
`random_states_*.pkl`, a `.pt` holding a whole module) are refused before any of their code runs.
"""

from __future__ import annotations

import errno
import pickle
from pathlib import Path

import torch

from .errors import TrailError
from .io import first_line
from .tensors import load_tensors

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
SUFFIXES = (*TORCH_SUFFIXES, ".safetensors")
CONVERT = (
    "in your own environment, where its code is trusted, load it and save the network's state dict, "
    "e.g. torch.save(net.state_dict(), 'model.pt') or safetensors.torch.save_file(...)"
)


# What to do with a damaged file of a run lcsc did not write
FOREIGN = "leave it out of the trail (trail.files, trail.last or trail.every) or restore it from the run"


def read_file(path: str | Path) -> dict:
    """The object a checkpoint file holds (a file of an imported run), read without running code from it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such checkpoint file", str(path))
    if path.suffix == ".safetensors":
        return load_tensors(path, fix=FOREIGN)
    if path.suffix not in TORCH_SUFFIXES:
        raise TrailError(
            f"{path}: {path.suffix or 'no suffix'} is not a checkpoint format lcsc reads "
            f"({', '.join(SUFFIXES)}); a pickle is never unpickled: {CONVERT}"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a global: the file holds Python objects
        raise TrailError(
            f"{path}: holds pickled Python objects, not only tensors ({first_line(exc).split('. ')[0]}); "
            f"lcsc never unpickles them: {CONVERT}"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        if isinstance(exc, OSError) and exc.filename:
            raise
        raise TrailError(
            f"{path}: not a readable torch checkpoint ({first_line(exc).split('. ')[0]}); it was cut "
            f"short or is another kind of file: {FOREIGN}"
        ) from None
    if not isinstance(obj, dict):
        raise TrailError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors; {CONVERT}")
    return obj


def state_at(obj: dict, key: str | None, path) -> dict:
    """The state dict at the dotted `key` inside a file's nested dicts (None: the file itself)."""
    node, walked = obj, []
    for part in key.split(".") if key else []:
        if not isinstance(node, dict) or part not in node:
            keys = [str(k) for k in node][:8] if isinstance(node, dict) else []
            raise TrailError(
                f"{path}: no key {'.'.join([*walked, part])!r} (trail.key {key!r}); "
                f"{'the keys there are ' + ', '.join(keys) if keys else 'nothing is nested there'}"
            )
        node, walked = node[part], [*walked, part]
    if not isinstance(node, dict):
        raise TrailError(f"{path}: {key or 'the file'} holds a {type(node).__name__}, not a state dict; set trail.key")
    return node


def read_state(path: str | Path, key: str | None = None, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of the state dict at `key` in `path`, with `prefix` stripped from the keys that have it."""
    state = state_at(read_file(path), key, path)
    out = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TrailError(
                f"{path}: {name!r} is a {type(value).__name__}, not a tensor; point trail.key at the state dict itself"
            )
        out[name.removeprefix(prefix) if prefix else name] = value
    return out


def describe(state: dict[str, torch.Tensor], path) -> tuple[str, int]:
    """(dtype, parameter count) of a checkpoint, whose tensors must all be floating point."""
    not_float = [k for k, v in state.items() if not v.is_floating_point()]
    if not_float:
        raise TrailError(
            f"{path}: {not_float[0]!r} is {state[not_float[0]].dtype}, not a float tensor; LCSC "
            "combines float weights only"
        )
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values()})
    return "+".join(dtypes), sum(v.numel() for v in state.values())


def check_finite(state: dict[str, torch.Tensor], path) -> None:
    """Every float tensor of a checkpoint is finite: one NaN would make every combination that
    weighs it, the last checkpoint's included (0 x NaN is NaN), score nothing but NaN."""
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise TrailError(
                f"{path}: tensor {name!r} holds {bad} NaN or infinite value(s) of {value.numel()}; "
                "the checkpoint is broken (a diverged step or a damaged file): leave it out of the "
                "trail (trail.files, trail.last) or restore it"
            )


def first_difference(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> str | None:
    """What first differs between two checkpoints' keys and shapes (None: they agree)."""
    for key in reference:
        if key not in state:
            return f"it lacks {key!r}"
        if tuple(state[key].shape) != tuple(reference[key].shape):
            return f"{key!r} has shape {tuple(state[key].shape)}, not {tuple(reference[key].shape)}"
    extra = [k for k in state if k not in reference]
    return f"it has the extra key {extra[0]!r}" if extra else None
