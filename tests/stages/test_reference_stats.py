"""Stages train_features, inception_features and reference_stats: the features and the reference
statistics, cached by content."""

import shutil

import numpy as np
import pytest
import torch

import inception_standin
from conftest import tiny_config
from helpers import read_folder
from lcsc.kernel.errors import FeatureError
from lcsc.kernel.fid import feature_stats
from lcsc.kernel.paths import Layout, dataset_name

CPU = torch.device("cpu")


def test_features_and_stats(trained):
    cfg, _ = trained
    layout = Layout.of(cfg)
    with np.load(layout.stats(dataset_name(cfg["data"]), "train", "classifier")) as z:
        assert z["mu"].shape == (16,) and z["sigma"].shape == (16, 16)
        assert str(z["split"]) == "train" and int(z["n"]) == 1438
        np.testing.assert_allclose(z["sigma"], z["sigma"].T)


def test_inception_stage_and_reference_stats_cached_by_content(tmp_path, standin, folders, capsys):
    from lcsc.cli import main
    from lcsc.kernel.features import load_features
    from lcsc.kernel.fid import load_stats
    from lcsc.kernel.paths import Layout

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
    np.testing.assert_allclose(mu, feature_stats(net(read_folder(folders[0])))[0], rtol=1e-12)
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


def test_autoencoder_features_train_on_an_unlabelled_folder(tmp_path, capsys):
    """features.kind: autoencoder needs no labels: a flat folder of digits passes the config check
    (the classifier's fails), the stage trains on it, and in its feature space the test digits lie
    far closer to the train digits than the same number of noise images or of blurred digits."""
    import yaml
    from PIL import Image

    from lcsc.cli import main
    from lcsc.kernel.data import load_split
    from lcsc.kernel.errors import ConfigError
    from lcsc.kernel.features import load_features
    from lcsc.kernel.fid import frechet_distance

    flat = tmp_path / "flat digits"
    flat.mkdir()
    digits = load_split({**tiny_config(tmp_path / "x")["data"]}, "train").images
    for i, img in enumerate(digits[:600]):
        Image.fromarray(((img[0].numpy() + 1) * 127.5).round().astype(np.uint8)).save(flat / f"{i:04d}.png")
    data = {"dataset": "folder", "folder": str(flat), "image_size": 12, "channels": 1}
    with pytest.raises(ConfigError, match="features.kind: autoencoder"):
        tiny_config(tmp_path / "r", data=data)  # the classifier default needs labels
    cfg = tiny_config(tmp_path / "r", data=data, features={"kind": "autoencoder", "epochs": 15, "dim": 16})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train-features", "--config", str(tmp_path / "c.yaml")]) == 0
    net = load_features(Layout.of(cfg).feature_net("autoencoder"), CPU)
    train, test = load_split(cfg["data"], "train").images, load_split(cfg["data"], "test").images
    feats = net(train)
    assert feats.shape == (len(train), 16) and torch.equal(net(train), feats)

    def fd(a, b):
        return frechet_distance(*feature_stats(net(a)), *feature_stats(net(b)))

    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(test.shape, generator=gen) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(test, 3, stride=1, padding=1, count_include_pad=False)
    real, far, blur = fd(train, test), fd(train, noise), fd(train, blurred)
    print(f"autoencoder FD: real {real:.3f}, blurred {blur:.3f}, noise {far:.3f}")
    assert real < blur < far and 5 * real < blur, (real, blur, far)
