"""Trails of plain state dicts (`trail.source: state_dict`): openai/consistency_models'
`model*.pt`, an EDM `training-state-*.pt`, Lightning's `*.ckpt`, or any `.safetensors`.

The network is built by the factory the user names as `package.module:function` (their own code,
imported on purpose), with `factory_kwargs`; each file is read as data (lcsc.kernel.checkpoints)
at the manifest's key path with its prefix stripped. How it samples is another family's: the
registry (lcsc.kernel.families) combines this class with the VP diffusion or consistency family.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import read_state
from ..errors import ConfigError
from .base import Family


def load_factory(spec: str, code: str | None = None):
    """The function `package.module:function` names; `code` (a folder) goes first on the import path."""
    module_name, _, function = spec.partition(":")
    if code:
        folder = str(Path(code).expanduser().resolve())
        if not Path(folder).is_dir():
            raise ConfigError(f"trail.code: {folder} is not a folder")
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"trail.factory: cannot import {module_name!r} ({exc}); put it on PYTHONPATH or set "
                          "trail.code to its folder") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise ConfigError(f"trail.factory: {module_name} has no function {function!r}")
    return factory


def build_from_factory(spec: str, kwargs: dict, code: str | None = None) -> nn.Module:
    net = load_factory(spec, code)(**kwargs)
    if not isinstance(net, nn.Module):
        raise ConfigError(f"trail.factory: {spec}(**trail.factory_kwargs) returned a {type(net).__name__}, "
                          "not a torch.nn.Module")
    return net


class StateDictCheckpoints(Family):
    """The network and checkpoints of a state-dict trail; a sampling family supplies the rest."""

    name = "state_dict"

    def build_network(self) -> nn.Module:
        source = self.trail.manifest["source"]
        return build_from_factory(source["factory"], source["factory_kwargs"], source.get("code"))

    def load_checkpoint(self, path: str | Path, device="cpu") -> dict[str, torch.Tensor]:
        source = self.trail.manifest["source"]
        state = read_state(path, source.get("key"), source.get("prefix"))
        return {k: v.to(device) for k, v in state.items()}
