"""A small U-Net with sinusoidal noise-level conditioning, sized by the `model` config section, and
class-conditional with `model.num_classes`: a label embedding added to the noise-level embedding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _groups(ch: int) -> int:
    # GroupNorm needs the channel count to divide by the groups: gcd(ch, 8) gives 8 groups where
    # it can and fewer for any width that is not a multiple of 8, instead of an error.
    return math.gcd(ch, 8)


class TimeEmbedding(nn.Module):
    """Sinusoidal features of a scalar noise level, then an MLP (Ho et al. 2020, Transformer-style)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.SiLU(), nn.Linear(dim * 4, dim * 4))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=1))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, ch * 3, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x, emb=None):
        b, c, h, w = x.shape
        # One head over the h * w pixels as a sequence: scaled_dot_product_attention wants
        # [batch, sequence, features], hence the transposes from [batch, channels, pixels].
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    """eps- or x0-style predictor: `forward(x, t)` with t a float noise-level input per image, or,
    class-conditional (`num_classes`), `forward(x, t, labels)` with an int64 class per image. With
    `label_dropout` (classifier-free guidance's training) the embedding has one more row, the
    index `num_classes`, for "no label"."""

    def __init__(
        self,
        in_channels: int,
        channels: int = 32,
        channel_mult=(1, 2),
        num_res_blocks: int = 1,
        attention: bool = False,
        dropout: float = 0.0,
        num_classes: int | None = None,
        label_dropout: float = 0.0,
    ):
        super().__init__()
        emb_dim = channels * 4
        self.time = TimeEmbedding(channels)
        self.num_classes = num_classes
        # (registered only when conditional: an unconditional U-Net keeps its state dict and numbers)
        if num_classes:
            self.label = nn.Embedding(num_classes + (1 if label_dropout > 0 else 0), emb_dim)
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        # `skips` follows the channel count of every activation forward saves in `hs`, in the same
        # order, so each up block knows the width of the skip it concatenates.
        skips = [channels]
        ch = channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(ch, channels * mult, emb_dim, dropout))
                ch = channels * mult
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList(
            [ResBlock(ch, ch, emb_dim, dropout)]
            + ([Attention(ch)] if attention else [])
            + [ResBlock(ch, ch, emb_dim, dropout)]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            # One block more per level than on the way down: with the input convolution's and the
            # downsamplers' outputs the down path saves exactly one skip for each up block.
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(ch + skips.pop(), channels * mult, emb_dim, dropout))
                ch = channels * mult
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.up.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.out = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))
        # The last convolution starts at zero (as in DDPM and ADM), so the untrained network
        # predicts 0 rather than noise of an arbitrary scale.
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time(t)
        if self.num_classes:
            if labels is None:
                raise ValueError(f"this U-Net is class-conditional ({self.num_classes} classes): pass labels")
            emb = emb + self.label(labels)
        elif labels is not None:
            raise ValueError("this U-Net is unconditional: it takes no labels")
        h = self.inp(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.out(h)


def build_unet(model_cfg: dict, channels: int) -> UNet:
    return UNet(
        in_channels=channels,
        channels=model_cfg["channels"],
        channel_mult=tuple(model_cfg["channel_mult"]),
        num_res_blocks=model_cfg["num_res_blocks"],
        attention=model_cfg["attention"],
        dropout=model_cfg["dropout"],
        num_classes=model_cfg.get("num_classes"),
        label_dropout=model_cfg.get("label_dropout", 0.0),
    )


def with_labels(net, labels: torch.Tensor | None):
    """`net` as a function of (x, t) that passes `labels` to every call (None: `net` itself)."""
    if labels is None:
        return net
    return lambda x, t: net(x, t, labels)


class DigitClassifier(nn.Module):
    """Small CNN whose penultimate layer is the FID feature space for datasets without Inception."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(width, width * 2, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(width * 2 * 4, dim),
        )
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ConvAutoencoder(nn.Module):
    """Small convolutional autoencoder whose bottleneck is the FID feature space of unlabelled
    images: the encoder pools to 2x2 (as the classifier's body does) and a linear layer gives the
    `dim`-vector; the decoder only serves training, by asking that vector to hold the image. The
    features are the bottleneck standardised by the train split's per-dimension mean and standard
    deviation (buffers set after training), so FID values have a readable scale, plus the image's
    standardised log reconstruction error: `dim + 1` features."""

    def __init__(self, in_channels: int, image_size: int, width: int = 32, dim: int = 64):
        super().__init__()
        self.image_size, self.width = image_size, width
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(width * 2, width * 2, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(width * 2 * 4, dim),
        )
        self.expand = nn.Linear(dim, width * 2 * 16)
        self.up1 = nn.Conv2d(width * 2, width, 3, padding=1)
        self.up2 = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, in_channels, 3, padding=1)
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        # the log reconstruction error's mean and deviation over the train split (one more feature)
        self.register_buffer("error_shift", torch.zeros(1))
        self.register_buffer("error_scale", torch.ones(1))

    def log_error(self, x: torch.Tensor) -> torch.Tensor:
        """Each image's log mean squared reconstruction error, [N, 1]."""
        # Clamped so that a perfect reconstruction still has a finite log.
        return (self(x) - x).pow(2).flatten(1).mean(1, keepdim=True).clamp_min(1e-12).log()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # The bottleneck alone is blind to what the encoder never saw in training: on grey data
        # the colour directions of the first convolution keep their random start, and noise in
        # them moves the bottleneck by little. What the network cannot rebuild shows in its
        # reconstruction error, so that error is one more (standardised) feature.
        z = (self.encoder(x) - self.shift) / self.scale
        return torch.cat([z, (self.log_error(x) - self.error_shift) / self.error_scale], 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        h = F.silu(self.expand(z)).view(len(z), self.width * 2, 4, 4)
        # -(-size // 2) is ceil(size / 2), the size the encoder's first stride-2 convolution gives,
        # so an odd image size comes back whole.
        h = F.silu(self.up1(F.interpolate(h, size=(-(-size // 2),) * 2, mode="nearest")))
        h = F.silu(self.up2(F.interpolate(h, size=(size, size), mode="nearest")))
        return self.out(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encoder(x))
