"""Trails of plain state dicts (`trail.source: state_dict`): openai/consistency_models'
`model*.pt`, an EDM `training-state-*.pt`, Lightning's `*.ckpt`, or any `.safetensors`.

The network is built by the factory the config names as `package.module:function` (the user's
own code, imported on purpose), with `factory_kwargs`; each file is read as data
(lcsc.kernel.checkpoints) at the key path with its prefix stripped. The factory and the reading
settings come from the config, never from the manifest in the results folder (which records them
and must agree: lcsc.kernel.families.check_source). How it samples is another family's: the
registry combines this class with the VP diffusion or consistency family.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import read_state
from ..errors import ConfigError
from ..io import first_line, resolve_path
from .base import Family


def load_factory(spec: str, code: str | None = None):
    """The function `package.module:function` names; `code` (a folder) goes first on the import path.
    Whatever goes wrong while importing the user's module is a ConfigError naming trail.factory."""
    module_name, _, function = spec.partition(":")
    if code:
        folder = resolve_path(code, "trail.code")
        if not folder.is_dir():
            raise ConfigError(f"trail.code: {folder} is not a folder")
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"trail.factory: cannot import {module_name!r} ({exc}); put it on PYTHONPATH or set "
                          "trail.code to its folder") from None
    except Exception as exc:  # the module's own code failed: a syntax error, an exception at import
        raise ConfigError(f"trail.factory: importing {module_name!r} failed ({type(exc).__name__}: "
                          f"{first_line(exc)}); fix that module (trail.code)") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise ConfigError(f"trail.factory: {module_name} has no function {function!r}")
    return factory


def build_from_factory(spec: str, kwargs: dict, code: str | None = None) -> nn.Module:
    factory = load_factory(spec, code)
    try:
        net = factory(**kwargs)
    except Exception as exc:
        raise ConfigError(f"trail.factory: {spec}(**trail.factory_kwargs) failed ({type(exc).__name__}: "
                          f"{first_line(exc)}); fix the factory or trail.factory_kwargs") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"trail.factory: {spec}(**trail.factory_kwargs) returned a {type(net).__name__}, "
                          "not a torch.nn.Module")
    return net


class StateDictCheckpoints(Family):
    """The network and checkpoints of a state-dict trail; a sampling family supplies the rest."""

    name = "state_dict"

    def check_config(self, cfg: dict) -> None:
        super().check_config(cfg)
        self.source = cfg["trail"]  # the user's trusted choice, never the manifest's record of it

    def build_network(self) -> nn.Module:
        return build_from_factory(self.source["factory"], self.source["factory_kwargs"], self.source["code"])

    def load_checkpoint(self, path: str | Path, device="cpu") -> dict[str, torch.Tensor]:
        state = read_state(path, self.source["key"], self.source["prefix"])
        return {k: v.to(device) for k, v in state.items()}
