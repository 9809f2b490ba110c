"""What the kernel asks of a model family: its network, its checkpoints, its sampler, its noise.

A family wraps one trail. The scoring kernel, the variants and every stage above them use only
this interface, so a new kind of trail (another trainer's networks, another sampler) is a new
subclass registered in `lcsc.kernel.families`, and nothing else changes. An imported trail's
family (`ImportedFamily`) also says how the import_trail stage finds, reads and checks its files
and what its manifest records, and every family writes the export stage's files.

A sampler is any object with
- `sample(net, noise, nfe, labels=None) -> images in [-1, 1]`, calling `net` exactly
  `network_calls(nfe)` times, each call with `labels` for a class-conditional network (a sampler of
  unconditional networks only may leave the argument out: it is passed only with labels);
- `network_calls(nfe) -> int` (raises ValueError for an NFE it cannot sample at);
- `settings(nfe) -> dict`: what its samples depend on besides the weights and the noise (part of
  every fitness key);
- `noise_steps`: None for one noise image per sample, else the noise images per sample it needs
  (drawn in advance, so the samples depend only on the noise tensor).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, TrailError
from ..io import inside
from ..models import imported_kind
from ..nets import build_unet
from ..tensors import load_tensors, save_tensors


class Family:
    """A trail trained by lcsc: its U-Net is built from the manifest's `model_config`, its
    checkpoints are safetensors files. Subclasses say how it samples (`make_sampler`)."""

    name = ""

    def __init__(self, trail, cfg: dict):
        self.trail = trail
        self.check_config(cfg)
        self.channels = cfg["data"]["channels"]
        self.image_size = cfg["data"]["image_size"]
        self.sampler = self.make_sampler(cfg)

    def check_config(self, cfg: dict) -> None:
        """The config must describe the data the trail was trained on, and a trail trained here the
        classes its network was conditioned on."""
        self._check_trained(cfg, "data", ("image_size", "channels"))
        configured = cfg["model"].get("num_classes")
        # An imported network's classes are its own (checked against the data at import); only a trail
        # trained here was built from model.num_classes.
        if not imported_kind(self.trail.manifest.get("kind", "dm")) and self.num_classes != configured:
            raise ConfigError(
                f"model.num_classes: {configured!r} in the config, but the trail "
                f"{self.trail.root / 'manifest.json'} was trained with {self.num_classes!r}"
            )

    def _check_trained(self, cfg: dict, section: str, keys) -> None:
        trained = self.trail.manifest.get(section, {})
        for key in keys:
            if key in trained and trained[key] != cfg[section][key]:
                raise ConfigError(
                    f"{section}.{key}: {cfg[section][key]!r} in the config, but the trail "
                    f"{self.trail.root / 'manifest.json'} was trained with {trained[key]!r}"
                )

    def make_sampler(self, cfg: dict):
        raise NotImplementedError

    def build_network(self) -> nn.Module:
        """A fresh network of the trail's architecture (its weights are overwritten by the caller)."""
        return build_unet(self.trail.model_config, self.channels)

    def load_checkpoint(self, path: str | Path, device="cpu") -> dict[str, torch.Tensor]:
        """One checkpoint's tensors, by the network's state_dict names."""
        return load_tensors(path, device)

    @property
    def num_classes(self) -> int | None:
        """The classes of a class-conditional network (None: unconditional): the sampler passes
        each sample's label to every network call."""
        config = self.trail.manifest.get("model_config")
        return config.get("num_classes") if isinstance(config, dict) else None

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """The shape of one noise image."""
        return (self.channels, self.image_size, self.image_size)

    @property
    def noise_steps(self) -> int | None:
        return self.sampler.noise_steps

    # An exported variant: the files it writes in the family's own format, and how to load them.
    loading = ["from safetensors.torch import load_file", "net.load_state_dict(load_file('model.safetensors'))"]

    def export(self, cfg: dict, net: nn.Module, state: dict[str, torch.Tensor], out: Path) -> list[str]:
        """Writes the weights `state` (of `net`, which holds them) under `out`; returns the names written."""
        save_tensors(out / "model.safetensors", state)
        return ["model.safetensors"]


class ImportedFamily(Family):
    """A trail of another trainer (`trail.source` other than lcsc): besides sampling, the family
    says which `trail` keys it reads, how its checkpoint files are found, read and checked against
    its network, and what its manifest records. The import_trail stage only calls these.

    The manifest's kind is the source's name. A family whose `sampled_by_config` is true samples
    as `trail.sampler` says (the registry combines it with the dm or cm family)."""

    # The trail keys the manifest records as its `source`.
    record_keys: tuple[str, ...] = ()
    # Trail keys it does not read: set, they are a config error.
    unread_keys: tuple[str, ...] = ()
    default_files = ""  # trail.files when null (formatted with the trail section)
    default_pattern = r"(\d+)\D*$"  # trail.pattern when null
    # The default pattern reads the path under trail.path, not the file's name.
    pattern_on_path = False
    sampled_by_config = False
    # The diffusion.sampler values it samples with.
    diffusion_samplers: tuple[str, ...] = ("ddim", "dpmpp2m")

    @classmethod
    def config_errors(cls, cfg: dict) -> list[str]:
        """What is wrong with the config's `trail` keys for this source, a line each."""
        t, source = cfg["trail"], cfg["trail"]["source"]
        return [f"trail.{key}: set, but trail.source {source!r} does not read it" for key in cls.unread_keys if t[key]]

    @classmethod
    def files_glob(cls, t: dict) -> str:
        return t["files"] or cls.default_files.format(**t)

    @classmethod
    def checkpoint_files(cls, t: dict, root: Path, exclude: set = frozenset()) -> list[tuple[int, Path]]:
        """(step, file) of every checkpoint the files glob matches (but those in `exclude`), by step."""
        glob = cls.files_glob(t)
        pattern = re.compile(t["pattern"] or cls.default_pattern)
        found, seen = [], {}
        # Sorted: glob's order depends on the file system, and an error (a repeated step, say) should
        # name the same files on every machine.
        for path in sorted(root.glob(glob)):
            if not path.is_file() or path in exclude:
                continue
            if not inside(path, root):
                raise TrailError(
                    f"{path}: matched by trail.files {glob!r} but it lies outside trail.path {root} "
                    "(a symlink leads out); a trail's files stay in its folder: narrow trail.files"
                )
            rel = path.relative_to(root).as_posix()
            match = pattern.search(rel if t["pattern"] or cls.pattern_on_path else path.name)
            if match is None:
                raise TrailError(
                    f"{path}: no training step in its path (trail.pattern {pattern.pattern!r}); set "
                    "trail.pattern or trail.files"
                )
            digits = match.group(1)
            # An optional group that took no part gives None, and a group wider than the digits would
            # give a step int() rejects or, worse, one it reads wrongly.
            if digits is None or not re.fullmatch(r"[0-9]+", digits):
                raise TrailError(
                    f"{path}: trail.pattern {pattern.pattern!r} reads the step as {digits!r}, not as "
                    r"digits; make its group match the step's digits only, e.g. (\d+)"
                )
            step = int(digits)
            if step in seen:
                raise TrailError(f"{path}: step {step} again (also {seen[step]}); narrow trail.files or trail.pattern")
            seen[step] = path
            found.append((step, path))
        if not found:
            raise TrailError(f"{root}: no file matches trail.files {glob!r}")
        return sorted(found)

    @classmethod
    def ema_files(cls, t: dict, root: Path) -> tuple[Path | None, set[Path]]:
        """The kept EMA's file (None without trail.ema) and the files the checkpoint glob must skip."""
        return None, set()

    @classmethod
    def skipped_folders(cls, t: dict, root: Path) -> list[tuple[str, str]]:
        """Folders of the run left out of the trail, each with why (said by the import)."""
        return []

    @classmethod
    def reader(cls, t: dict):
        """path -> the checkpoint's tensors by the network's state_dict names, read as data."""
        raise NotImplementedError

    @classmethod
    def network_state(cls, t: dict, last: Path) -> dict[str, torch.Tensor]:
        """The state dict of the trail's network (built as the config says), which every file must match."""
        raise NotImplementedError

    @classmethod
    def manifest_extra(cls, cfg: dict, root: Path, last: Path) -> dict:
        """What the manifest keeps beside the files: how to build and sample the network."""
        t = cfg["trail"]
        if not cls.sampled_by_config:
            return {}
        out = {"sampler": t["sampler"]}
        if t["sampler"] == "cm":
            out["consistency"] = {k: cfg["consistency"][k] for k in ("sigma_min", "sigma_max", "sigma_data", "rho")}
        return out

    @classmethod
    def source_record(cls, t: dict) -> dict:
        """The manifest's `source`: the trail keys the family reads the files and builds the network with."""
        return {k: t.get(k) for k in cls.record_keys}

    @classmethod
    def check_manifest(cls, trail, t: dict, rerun: str) -> None:
        """The manifest agrees with the config in what this family records beyond `source`: how the
        trail samples (`sampler`, recorded where it is not dm), so a run imported as diffusion
        models is never sampled as consistency models, nor the reverse."""
        recorded = trail.manifest.get("sampler", "dm")
        if recorded != t["sampler"]:
            raise TrailError(
                f"{trail.root / 'manifest.json'}: sampler {recorded!r}, but the config's trail.sampler "
                f"is {t['sampler']!r}: {rerun}"
            )


def check_data_classes(classes: int | None, cfg: dict, where) -> None:
    """A class-conditional network's classes are the data set's, which its FID is measured against
    (checked at import: the data's classes are counted there once)."""
    if classes is None:
        return
    from ..config import DATASET_CLASSES
    from ..data import load_split

    data = cfg["data"]
    found = DATASET_CLASSES.get(data["dataset"]) or load_split(data, "train").num_classes
    if found < 2:
        raise ConfigError(
            f"data.folder: its images are unlabelled (no class sub-folders), but the network ({where}) "
            f"is class-conditional with {classes} classes; score it on the labelled data it was "
            "trained on"
        )
    if found != classes:
        raise ConfigError(
            f"data.dataset: {data['dataset']} has {found} classes, but the network ({where}) is "
            f"class-conditional with {classes} classes"
        )
