"""A model family lcsc does not ship, for the test that adds one (tests/kernel/families/
test_adding_a_family.py): a made-up trainer's run of `weights-<step>.npz` archives (numpy arrays by
the network's parameter names, read without pickles) with `arch.json` beside them (this project's
U-Net's model config and the image channels), its EMA in one more archive (`trail.ema`), sampled as
`trail.sampler` says. Exported variants are `model.npz`. It is one module, registered with
`lcsc.kernel.families.register("npz", "npz_family")`; nothing under lcsc/stages knows of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lcsc.kernel.errors import TrailError
from lcsc.kernel.families.base import ImportedFamily
from lcsc.kernel.nets import build_unet

ARCH = "arch.json"


def read_npz(path, device="cpu") -> dict[str, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: torch.from_numpy(archive[k].copy()).to(device) for k in archive.files}
    except (OSError, ValueError) as exc:
        raise TrailError(f"{path}: not a readable .npz archive ({exc})") from None


def arch(folder: Path) -> dict:
    try:
        return json.loads((folder / ARCH).read_text())
    except (OSError, ValueError) as exc:
        raise TrailError(f"{folder / ARCH}: the run's architecture is missing or unreadable ({exc})") from None


class NpzFamily(ImportedFamily):
    name = "npz"
    unread_keys = ("key", "prefix", "factory", "code", "scheduler", "num_classes")
    default_files = "weights-*.npz"
    sampled_by_config = True
    loading = [
        "import numpy as np, torch",
        "net.load_state_dict({k: torch.from_numpy(v) for k, v in np.load('model.npz').items()})",
    ]

    def load_checkpoint(self, path, device="cpu") -> dict[str, torch.Tensor]:
        return read_npz(path, device)

    def export(self, cfg, net, state, out: Path) -> list[str]:
        np.savez(out / "model.npz", **{k: v.cpu().numpy() for k, v in state.items()})
        return ["model.npz"]

    @classmethod
    def config_errors(cls, cfg: dict) -> list[str]:
        errors = super().config_errors(cfg)
        ema = cfg["trail"]["ema"]
        if ema and not ema.endswith(".npz"):
            errors.append(f"trail.ema: {ema!r} is not an .npz archive of the run")
        return errors

    @classmethod
    def ema_files(cls, t: dict, root: Path):
        if not t["ema"]:
            return None, set()
        path = root / t["ema"]
        if not path.is_file():
            raise TrailError(f"{path}: trail.ema names no file of the run")
        return path, {path}

    @classmethod
    def reader(cls, t: dict):
        return read_npz

    @classmethod
    def network_state(cls, t: dict, last: Path) -> dict[str, torch.Tensor]:
        a = arch(last.parent)
        return build_unet(a["model"], a["channels"]).state_dict()

    @classmethod
    def manifest_extra(cls, cfg: dict, root: Path, last: Path) -> dict:
        return {**super().manifest_extra(cfg, root, last), "model_config": arch(last.parent)["model"]}


FAMILY = NpzFamily
