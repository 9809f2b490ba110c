"""DINOv2 features for FD_DINOv2, the Frechet distance EDM2 reports beside FID (Karras et al. 2024;
Stein et al. 2023 found it tracks human judgement better than Inception's).

The network is DINOv2's ViT (Oquab et al. 2023), written here so that its released weights load as
data (a state dict read with `weights_only=True`, or safetensors), with no hub code run. The width,
depth and patch size are read from the tensors; heads are 64 channels wide, as in every released
DINOv2. ViT-L/14 (`dinov2_vitl14_pretrain.pth`, 1024-d) is the one EDM2 uses.

Preprocessing as EDM2's detector: images quantised to 8 bits (as a PNG of them holds), grey
repeated to RGB, resized to 224x224 (bicubic, antialiased), normalised with ImageNet's mean and
standard deviation; the feature is the final LayerNorm's class token.

Weights (`features.weights`): a local file (offline clusters), or null: the file in torch.hub's
checkpoint folder (`$TORCH_HOME/hub/checkpoints/`, where `torch.hub.load` keeps it), downloaded
there from DINOv2's release location when absent. Nothing downloads on import.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FeatureError, InputError
from .io import first_line, sha256
from .tensors import load_tensors

FILE = "dinov2_vitl14_pretrain.pth"
URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/" + FILE
SIZE = 224
HEAD_DIM = 64
MAX_BATCH = 64  # images per forward: bounds the 257-token activations of ViT-L
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _Block(nn.Module):
    """Pre-norm transformer block with layer scale: x + g1 * attn(norm1 x), then x + g2 * mlp(norm2 x)."""

    def __init__(self, dim: int):
        super().__init__()
        self.heads = dim // HEAD_DIM
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ls1, self.ls2 = nn.Module(), nn.Module()
        self.ls1.gamma, self.ls2.gamma = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.ones(dim))
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.ls1.gamma * self.attn.proj(a)
        return x + self.ls2.gamma * self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class DinoViT(nn.Module):
    """DINOv2's ViT with the parameter names of its released state dicts."""

    def __init__(self, dim: int, depth: int, patch: int, grid: int):
        super().__init__()
        self.patch, self.grid = patch, grid
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # training only; kept so the files load strictly
        self.blocks = nn.ModuleList(_Block(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    @classmethod
    def from_state(cls, state: dict) -> DinoViT:
        """The network a state dict describes, its tensors loaded (strictly)."""
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
        dim, _, patch, _ = state["patch_embed.proj.weight"].shape
        grid = math.isqrt(state["pos_embed"].shape[1] - 1)
        net = cls(dim, depth, patch, grid)
        net.load_state_dict({k: v.float() for k, v in state.items()})
        return net

    def positions(self, h: int, w: int) -> torch.Tensor:
        """The position embedding for an h x w patch grid: the trained grid's, resized bicubically
        with DINOv2's scale factor ((size + 0.1) / trained size, so the output size rounds right)."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        cls_pos, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / self.grid, (w + 0.1) / self.grid), mode="bicubic")
        return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised class token of images already preprocessed ([N, 3, H, W])."""
        tokens = self.patch_embed.proj(x)
        h, w = tokens.shape[-2:]
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens.flatten(2).transpose(1, 2)], dim=1)
        tokens = tokens + self.positions(h, w)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


def resolve_weights(fcfg: dict, download: bool = True) -> Path:
    """The DINOv2 weights file that `features` names (kind dinov2), downloading it into torch.hub's
    checkpoint folder where the config asks for that (weights: null) and it is not there yet."""
    how = f"download {URL} on a machine with internet access, copy it here and set features.weights to its path"
    if fcfg["weights"] is not None:
        path = Path(fcfg["weights"]).expanduser()
        if not path.is_file():
            raise FeatureError(f"features.weights: {path} does not exist; {how}")
        return path.resolve()
    path = Path(torch.hub.get_dir()).expanduser().resolve() / "checkpoints" / FILE
    if path.is_file() or not download:
        if not path.is_file():
            raise FeatureError(f"features.weights is null and {path} is not downloaded yet")
        return path
    try:
        print(f"[features] downloading {URL} -> {path}", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL, str(path), progress=True)
    except Exception as exc:  # URLError, timeouts: download_url_to_file keeps no partial file
        raise FeatureError(
            f"features.weights is null, so lcsc tried to download {URL} into {path.parent} "
            f"and failed ({first_line(exc)}); offline, {how}"
        ) from exc
    return path


class DINOv2Features:
    """`__call__(images in [-1, 1], [N, C, H, W]) -> [N, D]` float64 features on the device."""

    def __init__(self, weights: str | Path, device: torch.device):
        self.path, self.device = Path(weights), torch.device(device)
        try:
            state = load_tensors(self.path)
            self.net = DinoViT.from_state(state).to(self.device).eval()
        except (InputError, KeyError, ValueError, RuntimeError) as exc:
            reason = f"no {exc} tensor" if isinstance(exc, KeyError) else first_line(exc)
            raise FeatureError(
                f"features.weights: {self.path} is not a DINOv2 ViT state dict ({reason}); "
                f"DINOv2's own release file is {URL}"
            ) from exc
        self.dim = self.net.norm.weight.shape[0]
        self.sha256 = sha256(self.path)
        self.hash = f"{self.sha256[:16]}-dinov2"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 255  # the 8-bit values a PNG holds
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bicubic", align_corners=False, antialias=True)
        mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (MEAN, STD))
        return (x - mean) / std

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = MAX_BATCH) -> torch.Tensor:
        batch_size = min(batch_size, MAX_BATCH)
        out = [
            self.net(self.preprocess(images[i : i + batch_size].to(self.device))).double()
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out)
