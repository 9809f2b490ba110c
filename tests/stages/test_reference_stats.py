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
