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
    from lcsc.kernel import gate
    from lcsc.kernel.features import load_features

    cfg, _ = trained
    layout = Layout.of(cfg)
    net = load_features(layout.feature_net("classifier"), CPU)  # the classifier passed its gate
    assert net.gate["passed"] and min(row["ratio"] for row in net.gate["broken"].values()) >= gate.RATIO
    with np.load(layout.stats(dataset_name(cfg["data"]), "train", "classifier")) as z:
        assert z["mu"].shape == (16,) and z["sigma"].shape == (16, 16)
        assert str(z["split"]) == "train" and int(z["n"]) == 1438
        np.testing.assert_allclose(z["sigma"], z["sigma"].T)


@pytest.mark.slow
def test_inception_stage_and_reference_stats_cached_by_content(tmp_path, standin, folders, capsys):
    from lcsc.cli import main
    from lcsc.kernel import gate
    from lcsc.kernel.features import check_gate, load_features
    from lcsc.kernel.fid import load_stats
    from lcsc.kernel.paths import Layout

    cfg = tiny_config(
        tmp_path / "results",
        features={"kind": "inception", "weights": str(standin), "reference_folder": str(folders[0])},
    )
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    layout = Layout.of(cfg)
    assert main(["inception-features", "--config", str(tmp_path / "c.yaml")]) == 0
    descriptor = layout.feature_net("inception-clean")
    net = load_features(descriptor, CPU)
    # the stage gated the space on the digits' splits: the stand-in sees every broken set
    assert net.gate["passed"] and net.gate["train"] == 1438 and net.gate["held_out"] == 359, net.gate
    assert min(row["ratio"] for row in net.gate["broken"].values()) >= gate.RATIO
    assert "Sanity gate passed" in capsys.readouterr().out
    check_gate(net)
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
    assert (
        main(
            [
                "reference-stats",
                "--config",
                str(tmp_path / "c.yaml"),
                "--split",
                "folder",
                "--set",
                "features.reference_folder=null",
            ]
        )
        == 2
    )
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


@pytest.mark.slow
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
    assert feats.shape == (len(train), 17) and torch.equal(net(train), feats)  # the bottleneck + its error

    def fd(a, b):
        return frechet_distance(*feature_stats(net(a)), *feature_stats(net(b)))

    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(test.shape, generator=gen) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(test, 3, stride=1, padding=1, count_include_pad=False)
    real, far, blur = fd(train, test), fd(train, noise), fd(train, blurred)
    print(f"autoencoder FD: real {real:.3f}, blurred {blur:.3f}, noise {far:.3f}")
    assert real < blur < far and 5 * real < blur, (real, blur, far)


def _grey_rgb_digits(n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits at their own 8x8 as grey RGB images (R = G = B), train and held-out splits."""
    from lcsc.kernel.data import load_split

    data = {"dataset": "digits", "image_size": 8, "channels": 1, "split_seed": 0, "test_fraction": 0.2}
    return tuple(load_split(data, s).images.expand(-1, 3, -1, -1).contiguous() for s in ("train", "test"))


@pytest.mark.slow
def test_sanity_gate_catches_colour_noise_that_the_bare_bottleneck_misses():
    """The autoencoder space as it was (the standardised bottleneck alone) fails the gate on grey
    RGB data: colour noise on the held-out digits lies within a few floors of the data, since the
    encoder's colour directions never learnt anything. With the reconstruction error as a feature
    every broken set is far from the data. The gate's verdicts are measured, not assumed."""
    from lcsc.kernel import gate
    from lcsc.kernel.features import FeatureNet
    from lcsc.kernel.nets import ConvAutoencoder

    train, test = _grey_rgb_digits()
    torch.manual_seed(0)
    net = ConvAutoencoder(3, 8, width=16, dim=16)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        for idx in torch.randperm(len(train), generator=gen).split(128):
            loss = torch.nn.functional.mse_loss(net(train[idx]), train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        z, err = net.encoder(train), net.log_error(train)
    net.shift.copy_(z.mean(0)), net.scale.copy_(z.std(0)), net.error_shift.copy_(err.mean(0))
    net.error_scale.copy_(err.std(0))

    class Bottleneck(torch.nn.Module):  # the space before the gate: no reconstruction error
        def features(self, x):
            return (net.encoder(x) - net.shift) / net.scale

    old = gate.run_gate(FeatureNet.of(Bottleneck(), CPU), train, test)
    new = gate.run_gate(FeatureNet.of(net, CPU), train, test)
    print(gate.table(old), gate.table(new), sep="\n")
    assert not old["passed"] and "colour_noise" in old["failed"], old
    assert old["broken"]["colour_noise"]["ratio"] < gate.RATIO
    assert new["passed"] and min(r["ratio"] for r in new["broken"].values()) >= gate.RATIO, new
    line = gate.refusal("autoencoder", old, "f.safetensors")
    assert "\n" not in line and "colour_noise" in line and "features.kind: inception" in line


def test_broken_sets_are_what_their_names_say():
    from lcsc.kernel import gate

    train, test = _grey_rgb_digits()
    sets = gate.broken_sets(test, train)
    assert set(sets) == set(gate.BROKEN) and all(s.shape == test.shape for s in sets.values())
    colour = sets["colour_noise"]
    # colour noise keeps the brightness where nothing was clipped, and is colour (channels differ)
    unclipped = (colour.abs() < 1).all(1)
    torch.testing.assert_close(colour.mean(1)[unclipped], test.mean(1)[unclipped], atol=1e-6, rtol=0)
    assert (colour[:, 0] - colour[:, 1]).abs().mean() > 0.3
    assert torch.equal(sets["shuffled"].flatten(2).sort(-1).values, test.flatten(2).sort(-1).values)
    assert sets["blank"].flatten(1).std(1).max() == 0
    changed = (sets["half_noise"] != test).flatten(1).any(1)
    assert changed.sum() == len(test) // 2
    assert torch.equal(gate.broken_sets(test, train)["gaussian"], sets["gaussian"])  # the same table every run


def test_search_refuses_a_space_that_failed_its_gate_or_never_ran_it(tmp_path):
    import json

    from lcsc.kernel import gate
    from lcsc.kernel.features import METADATA_KEY, FeatureNet, check_gate
    from lcsc.kernel.nets import DigitClassifier
    from lcsc.kernel.tensors import save_tensors

    net = DigitClassifier(1, 10, 8, 4)
    meta = {"arch": "classifier", "channels": 1, "num_classes": 10, "width": 8, "dim": 4}
    failed = {
        "floor": 1.0,
        "ratio_needed": gate.RATIO,
        "passed": False,
        "failed": ["half_noise"],
        "broken": {"half_noise": {"fid": 3.0, "ratio": 3.0}},
    }
    for name, extra, message in (
        ("old", {}, "no sanity gate record"),
        ("failed", {"gate": failed}, "failed its sanity gate (half_noise 3.0x"),
    ):
        path = tmp_path / f"{name}.safetensors"
        save_tensors(path, net.state_dict(), metadata={METADATA_KEY: json.dumps({**meta, **extra})})
        with pytest.raises(FeatureError, match=message.replace("(", r"\(")) as err:
            check_gate(FeatureNet(path, CPU))
        assert "\n" not in str(err.value) and str(path) in str(err.value)
    # a fixed space's descriptor from before the gate: refused, naming its stage
    descriptor = tmp_path / "inception-clean.json"
    weights = inception_standin.build(tmp_path / "w.pt")
    from lcsc.kernel.features import load_features
    from lcsc.kernel.inception import InceptionFeatures
    from lcsc.kernel.io import write_json

    write_json(
        descriptor,
        {
            "kind": "inception",
            "mode": "clean",
            "weights": str(weights),
            "hash": InceptionFeatures(weights, "clean", CPU).hash,
        },
    )
    with pytest.raises(FeatureError, match=r"no sanity gate record .*rerun inception_features"):
        check_gate(load_features(descriptor, CPU))
    passed = dict(failed, passed=True, failed=[])
    save_tensors(
        tmp_path / "ok.safetensors", net.state_dict(), metadata={METADATA_KEY: json.dumps({**meta, "gate": passed})}
    )
    check_gate(FeatureNet(tmp_path / "ok.safetensors", CPU))
