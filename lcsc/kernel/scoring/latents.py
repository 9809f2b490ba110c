"""The noise and labels samples are drawn from: on the CPU from a seed, the same on every machine and device."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError

# Bytes of noise one stage may draw in advance (DDPM: one image per step).
NOISE_LIMIT = 4 * 2**30


def make_noise(n: int, shape: tuple[int, ...], seed: int, device, steps: int | None = None) -> torch.Tensor:
    """Latent noise drawn on the CPU from `seed`: the same on every machine and device.

    With `steps`, [n, steps, *shape]: one noise image per sampling step (a consistency model's
    multistep sampling), drawn step by step, so [:, 0] equals the noise without `steps` and the
    first k steps do not depend on how many there are."""
    gen = torch.Generator().manual_seed(seed)
    if steps is None:
        return torch.randn((n, *shape), generator=gen).to(device)
    size = 4 * n * steps * math.prod(shape)
    if size > NOISE_LIMIT:
        raise ConfigError(
            f"the sampler draws {steps} noise images per sample in advance (diffusion.sampler ddpm: the "
            f"largest NFE plus one), {size / 2**30:.1f} GiB for {n} samples, over the "
            f"{NOISE_LIMIT // 2**30} GiB lcsc allows; lower the NFE or the samples, or use ddim or dpmpp2m"
        )
    # Drawn step-major, so the generator yields step 0's images first (equal to the noise without
    # `steps`) and step k's do not depend on how many steps follow; transposed to [n, steps, ...].
    return torch.randn((steps, n, *shape), generator=gen).transpose(0, 1).contiguous().to(device)


def label_seed(seed: int) -> int:
    """The seed of the labels drawn with the noise of `seed`: a stream of their own, so that the
    noise of a seed is the same for a conditional model as for an unconditional one."""
    return int.from_bytes(hashlib.sha256(f"lcsc-labels:{seed}".encode()).digest()[:7], "little")


def make_labels(n: int, num_classes: int, seed: int, device) -> torch.Tensor:
    """`n` class labels drawn from `seed`, class-balanced: every class n // num_classes times, the
    n % num_classes left over classes drawn without repeats, the whole in a random order. The same
    on every machine and device, like the noise."""
    gen = torch.Generator().manual_seed(label_seed(seed))
    rest = torch.randperm(num_classes, generator=gen)[: n % num_classes]
    labels = torch.cat([torch.arange(num_classes).repeat(n // num_classes), rest])
    return labels[torch.randperm(n, generator=gen)].to(device)


def labels_drawn(n: int, num_classes: int) -> str:
    """How the labels of `n` samples are drawn, in words (the report's and the evaluation's)."""
    per, rest = divmod(n, num_classes)
    if rest == 0:
        return f"class-balanced labels: each of the {num_classes} classes {per} times"
    return (
        f"class-balanced labels: each of the {num_classes} classes {per} or {per + 1} times ({rest} classes "
        "drawn for the remainder)"
    )


@dataclass(frozen=True)
class Latents:
    """What samples depend on besides the weights and the sampler: the noise and, for a
    class-conditional model, each sample's label; both drawn from one seed."""

    noise: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.noise.shape[0]

    def __getitem__(self, part: slice) -> Latents:
        return Latents(self.noise[part], None if self.labels is None else self.labels[part])
