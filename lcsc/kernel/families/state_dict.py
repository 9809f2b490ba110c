"""Trails of plain state dicts (`trail.source: state_dict`): openai/consistency_models'
`model*.pt`, an EDM `training-state-*.pt`, Lightning's `*.ckpt`, or any `.safetensors`.

The network is built by the factory the config names as `package.module:function` (the user's
own code, imported on purpose), with `factory_kwargs`; each file is read as data
(lcsc.kernel.checkpoints) at the key path with its prefix stripped. The factory and the reading
settings come from the config, never from the manifest in the results folder (which records them
and must agree: lcsc.kernel.families.check_source). How it samples is another family's: the
registry combines this class with the VP diffusion or consistency family (`sampled_by_config`).
"""

from __future__ import annotations

import importlib
import io
import sys
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import read_file, read_state, state_at
from ..config import check_glob
from ..errors import ConfigError
from ..io import atomic_path, first_line, resolve_path
from ..tensors import save_tensors
from .base import ImportedFamily, check_data_classes


def load_factory(spec: str, code: str | None = None):
    """The function `package.module:function` names; `code` (a folder) goes first on the import path.
    Whatever goes wrong while importing the user's module is a ConfigError naming trail.factory."""
    module_name, _, function = spec.partition(":")
    if code:
        folder = resolve_path(code, "trail.code")
        if not folder.is_dir():
            raise ConfigError(f"trail.code: {folder} is not a folder")
        if str(folder) not in sys.path:
            # First on the path, so the user's folder wins over an installed module of the same name.
            sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"trail.factory: cannot import {module_name!r} ({exc}); put it on PYTHONPATH or set "
            "trail.code to its folder"
        ) from None
    except Exception as exc:
        # The module's own code failed: a syntax error, an exception at import.
        raise ConfigError(
            f"trail.factory: importing {module_name!r} failed ({type(exc).__name__}: "
            f"{first_line(exc)}); fix that module (trail.code)"
        ) from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise ConfigError(f"trail.factory: {module_name} has no function {function!r}")
    return factory


def build_from_factory(spec: str, kwargs: dict, code: str | None = None) -> nn.Module:
    factory = load_factory(spec, code)
    try:
        net = factory(**kwargs)
    except Exception as exc:
        raise ConfigError(
            f"trail.factory: {spec}(**trail.factory_kwargs) failed ({type(exc).__name__}: "
            f"{first_line(exc)}); fix the factory or trail.factory_kwargs"
        ) from None
    if not isinstance(net, nn.Module):
        raise ConfigError(
            f"trail.factory: {spec}(**trail.factory_kwargs) returned a {type(net).__name__}, not a torch.nn.Module"
        )
    return net


class StateDictCheckpoints(ImportedFamily):
    """The network and checkpoints of a state-dict trail; a sampling family supplies the rest."""

    name = "state_dict"
    record_keys = ("key", "prefix", "factory", "factory_kwargs", "code", "num_classes")
    unread_keys = ("scheduler", "timesteps")
    default_files = "*.pt"
    sampled_by_config = True
    loading = [
        "import torch",
        "state = torch.load('model.pt', weights_only=True)  # the input's layout",
        "net.load_state_dict(state)  # your network, after the same key path and prefix as your trainer",
    ]

    def check_config(self, cfg: dict) -> None:
        super().check_config(cfg)
        # The user's trusted choice, never the manifest's record of it.
        self.source = cfg["trail"]

    def build_network(self) -> nn.Module:
        return build_from_factory(self.source["factory"], self.source["factory_kwargs"], self.source["code"])

    def load_checkpoint(self, path: str | Path, device="cpu") -> dict[str, torch.Tensor]:
        state = read_state(path, self.source["key"], self.source["prefix"])
        return {k: v.to(device) for k, v in state.items()}

    @property
    def num_classes(self) -> int | None:
        """trail.num_classes: the network is then called net(x, t, labels) (the config's, never the manifest's)."""
        return self.source.get("num_classes")

    def export(self, cfg: dict, net: nn.Module, state: dict[str, torch.Tensor], out: Path) -> list[str]:
        """The input's layout: its key path, its prefix, its dtypes, its file format."""
        # The config's key path and prefix (the manifest agrees: check_source).
        source = cfg["trail"]
        last = self.trail.checkpoint_path(len(self.trail) - 1)
        prefix = source.get("prefix") or ""
        original = state_at(read_file(last), source.get("key"), last)
        # the input's keys in its order, each with its dtype: the network's names with the prefix stripped
        tensors = {
            # contiguous(): safetensors refuses to save a non-contiguous view.
            key: state[key.removeprefix(prefix) if prefix else key].to(value.dtype).contiguous()
            for key, value in original.items()
        }
        name = f"model{last.suffix}"
        if last.suffix == ".safetensors":
            save_tensors(out / name, tensors)
            return [name]
        nested = tensors
        # The key path's dicts rebuilt around the tensors, innermost first, so the file reads back at
        # the same key as the input.
        for part in reversed(source["key"].split(".") if source.get("key") else []):
            nested = {part: nested}
        # Written to memory first: torch's zip writer reports a full disk without its errno, while
        # Python's own write keeps it.
        buffer = io.BytesIO()
        torch.save(nested, buffer)
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(buffer.getbuffer())
        return [name]

    @classmethod
    def config_errors(cls, cfg: dict) -> list[str]:
        t, errors = cfg["trail"], super().config_errors(cfg)
        if not t["factory"]:
            errors.append(
                "trail.factory: required with trail.source 'state_dict': package.module:function that "
                "builds the network"
            )
        try:
            check_glob(t["ema"], "trail.ema")
        except ConfigError as exc:
            errors.append(str(exc))
        return errors

    @classmethod
    def ema_files(cls, t: dict, root: Path) -> tuple[Path | None, set[Path]]:
        """The EMA: the last file of the glob trail.ema, whose files are no checkpoints of the trail."""
        if not t["ema"]:
            return None, set()
        return cls.checkpoint_files(dict(t, files=t["ema"]), root)[-1][1], set(root.glob(t["ema"]))

    @classmethod
    def reader(cls, t: dict):
        return lambda path: read_state(path, t["key"], t["prefix"])

    @classmethod
    def network_state(cls, t: dict, last: Path) -> dict[str, torch.Tensor]:
        return build_from_factory(t["factory"], t["factory_kwargs"], t["code"]).state_dict()

    @classmethod
    def manifest_extra(cls, cfg: dict, root: Path, last: Path) -> dict:
        check_data_classes(cfg["trail"].get("num_classes"), cfg, "trail.num_classes")
        return super().manifest_extra(cfg, root, last)

    @classmethod
    def source_record(cls, t: dict) -> dict:
        out = super().source_record(t)
        if out.get("code"):  # as an absolute folder
            out["code"] = str(resolve_path(out["code"], "trail.code"))
        return out


FAMILY = StateDictCheckpoints
