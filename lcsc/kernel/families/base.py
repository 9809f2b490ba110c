"""What the kernel asks of a model family: its network, its checkpoints, its sampler, its noise.

A family wraps one trail. The scoring kernel, the variants and every stage above them use only
this interface, so a new kind of trail (another trainer's networks, another sampler) is a new
subclass registered in `lcsc.kernel.families`, and nothing else changes.

A sampler is any object with
- `sample(net, noise, nfe) -> images in [-1, 1]`, calling `net` exactly `network_calls(nfe)` times;
- `network_calls(nfe) -> int` (raises ValueError for an NFE it cannot sample at);
- `settings(nfe) -> dict`: what its samples depend on besides the weights and the noise (part of
  every fitness key);
- `noise_steps`: None for one noise image per sample, else the noise images per sample it needs
  (drawn in advance, so the samples depend only on the noise tensor).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..nets import build_unet
from ..tensors import load_tensors


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
        """The config must describe the data the trail was trained on."""
        self._check_trained(cfg, "data", ("image_size", "channels"))

    def _check_trained(self, cfg: dict, section: str, keys) -> None:
        trained = self.trail.manifest.get(section, {})
        for key in keys:
            if key in trained and trained[key] != cfg[section][key]:
                raise ConfigError(f"{section}.{key}: {cfg[section][key]!r} in the config, but the trail "
                                  f"{self.trail.root / 'manifest.json'} was trained with {trained[key]!r}")

    def make_sampler(self, cfg: dict):
        raise NotImplementedError

    def build_network(self) -> nn.Module:
        """A fresh network of the trail's architecture (its weights are overwritten by the caller)."""
        return build_unet(self.trail.model_config, self.channels)

    def load_checkpoint(self, path: str | Path, device="cpu") -> dict[str, torch.Tensor]:
        """One checkpoint's tensors, by the network's state_dict names."""
        return load_tensors(path, device)

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """The shape of one noise image."""
        return (self.channels, self.image_size, self.image_size)

    @property
    def noise_steps(self) -> int | None:
        return self.sampler.noise_steps
