"""A trail's checkpoints in one flat space: a checkpoint's tensors checked against the network and
flattened in its key order, one network whose weights are views into one flat vector (written in
place), a stacked trail kept in chunks on the host, and the product theta = c @ W."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .checkpoints import check_finite
from .errors import TrailError


def check_state(state: dict[str, torch.Tensor], shapes: dict[str, tuple], path) -> None:
    """Raise TrailError naming `path` unless `state` has exactly the model's tensors and shapes, all finite."""
    missing = [k for k in shapes if k not in state]
    extra = [k for k in state if k not in shapes]
    wrong = [k for k in shapes if k in state and tuple(state[k].shape) != tuple(shapes[k])]
    if missing or extra or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {extra[:3]}" if extra else "",
                f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, the model {tuple(shapes[wrong[0]])}"
                if wrong
                else "",
            )
            if part
        )
        raise TrailError(
            f"{path}: not a checkpoint of this model architecture ({detail}); it belongs to another "
            "model: restore it or rerun the stage that wrote it"
        )
    check_finite(state, path)


def flatten_state(state: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    return torch.cat([state[k].reshape(-1).float() for k in keys])


class FlatLoader:
    """One model instance whose parameters and buffers are views into a single flat vector, so a
    candidate's weights are written in place: `load` is one copy, `combine_into` one product
    straight into the model (no state_dict copies, no model rebuilds)."""

    def __init__(self, model: nn.Module):
        self.model = model
        state = model.state_dict(keep_vars=True)
        self.keys = list(state.keys())
        self.shapes = {k: tuple(v.shape) for k, v in state.items()}
        self.numel = sum(v.numel() for v in state.values())
        first = next(iter(state.values()))
        mixed = [k for k, v in state.items() if v.dtype != first.dtype or v.device != first.device]
        if mixed:
            raise ValueError(
                f"FlatLoader needs one dtype and device for every tensor; {mixed[0]} is "
                f"{state[mixed[0]].dtype} on {state[mixed[0]].device}, not {first.dtype} on {first.device}"
            )
        self.flat = torch.empty(self.numel, dtype=first.dtype, device=first.device)
        offset = 0
        with torch.no_grad():
            for key, tensor in state.items():
                n = tensor.numel()
                view = self.flat[offset : offset + n].view_as(tensor)
                # The current values are copied in first, so the model is unchanged until the first `load`.
                view.copy_(tensor)
                module_name, _, attr = key.rpartition(".")
                module = model.get_submodule(module_name)
                # A Parameter keeps its identity (only its storage moves), so whatever already holds it sees
                # the new storage; buffers are plain tensors and are replaced in the module's table.
                if attr in module._parameters:
                    module._parameters[attr].data = view
                else:
                    module._buffers[attr] = view
                offset += n
        # Kept for `_check`: .to() or .half() on the model gives its tensors new storage, and writes
        # into `flat` would then silently stop reaching the model.
        self._first = next(iter(model.state_dict(keep_vars=True).values()))

    def _check(self) -> None:
        if self._first.data_ptr() != self.flat.data_ptr():
            raise RuntimeError(
                "the model's parameters were replaced (moved with .to()/.half()?) after "
                "FlatLoader was built; build the FlatLoader after moving the model"
            )

    @torch.no_grad()
    def load(self, flat: torch.Tensor) -> nn.Module:
        if flat.numel() != self.numel:
            raise ValueError(f"flat vector has {flat.numel()} entries, model has {self.numel}")
        self._check()
        self.flat.copy_(flat.reshape(-1))
        return self.model

    @torch.no_grad()
    def combine_into(self, W: torch.Tensor | ChunkedTrail, coefficients) -> nn.Module:
        """theta = c @ W written into the model's own parameter storage."""
        self._check()
        if tuple(W.shape)[1] != self.numel:
            raise ValueError(
                f"the stacked trail has {tuple(W.shape)[1]} parameters per checkpoint, the model {self.numel}"
            )
        if isinstance(W, ChunkedTrail):
            W.combine(coefficients, out=self.flat)
        else:
            c = _coefficient_tensor(W, coefficients)
            # out= writes the product straight into the model's storage: no temporary the size of the model.
            torch.matmul(c.unsqueeze(0), W, out=self.flat.view(1, -1))
        return self.model


class ChunkedTrail:
    """The stacked trail kept in host memory as column blocks of at most `chunk_mb` MB, for trails
    that do not fit on the device: each product streams the blocks through the device."""

    def __init__(self, W: torch.Tensor, chunk_mb: float, device):
        k, p = W.shape
        # Sized for 4-byte (float32) entries; at least one column, so a tiny chunk_mb still makes progress.
        cols = max(1, int(chunk_mb * 2**20 / (4 * k)))
        # Pinned (page-locked) host memory is what makes the non_blocking copies in `combine`
        # asynchronous; it needs CUDA, so it is asked for only then.
        pin = torch.device(device).type == "cuda"
        self.blocks = []
        # Each block is copied once, straight into (pinned) memory: the non-contiguous column slice
        # is never materialised as a separate copy first.
        for a in range(0, p, cols):
            block = torch.empty((k, min(cols, p - a)), dtype=W.dtype, pin_memory=pin)
            block.copy_(W[:, a : a + cols])
            self.blocks.append(block)
        self.shape = (k, p)
        self.dtype = W.dtype
        self.device = torch.device(device)

    def on(self, device) -> ChunkedTrail:
        """The same host blocks, streamed to another device: one host copy serves every device
        (pinned memory, which any CUDA device reads, when this one is a GPU)."""
        other = copy.copy(self)
        other.device = torch.device(device)
        return other

    def combine(self, coefficients, out: torch.Tensor | None = None) -> torch.Tensor:
        c = _checked(torch.as_tensor(coefficients, dtype=self.dtype), self.shape[0])
        out = torch.empty(self.shape[1], dtype=self.dtype, device=self.device) if out is None else out
        c_dev = c.to(self.device)
        offset = 0
        # The copies are non-blocking but queued on the same CUDA stream as the products, so each
        # product still waits for its block to arrive.
        for block in self.blocks:
            n = block.shape[1]
            torch.matmul(
                c_dev.unsqueeze(0), block.to(self.device, non_blocking=True), out=out[offset : offset + n].view(1, -1)
            )
            offset += n
        return out


def _checked(c: torch.Tensor, k: int) -> torch.Tensor:
    if c.shape != (k,):
        raise ValueError(f"{c.numel()} coefficients for a trail of {k} checkpoints")
    return c


def _coefficient_tensor(W: torch.Tensor, coefficients) -> torch.Tensor:
    return _checked(torch.as_tensor(coefficients, dtype=W.dtype, device=W.device), W.shape[0])


def combine(W: torch.Tensor | ChunkedTrail, coefficients) -> torch.Tensor:
    """theta = sum_i c_i theta_i over the stacked trail W [K, P]."""
    if isinstance(W, ChunkedTrail):
        return W.combine(coefficients)
    return _coefficient_tensor(W, coefficients) @ W
