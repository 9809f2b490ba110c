import json

import pytest
import torch

from lcsc.diffusion import VPDiffusion
from lcsc.io import load_tensors, save_tensors
from lcsc.nets import build_unet
from lcsc.train import TrainingError, train
from lcsc.trail import FlatLoader, Trail, TrailError, combine

from conftest import tiny_config


def _train(cfg, out_dir, iterations):
    train_cfg = dict(cfg["train"], iterations=iterations)
    torch.manual_seed(cfg["seed"])
    model = build_unet(cfg["model"], 1)
    data = torch.rand(50, 1, 8, 8) * 2 - 1
    return train(model, VPDiffusion().loss, data, train_cfg, out_dir, seed=cfg["seed"],
                 device=torch.device("cpu"), manifest_extra={"kind": "dm", "model_config": cfg["model"]})


def test_trail_manifest_and_files(tmp_path):
    cfg = tiny_config(tmp_path, train={"iterations": 25, "checkpoint_every": 10})
    manifest = _train(cfg, tmp_path / "trail", 25)
    trail = Trail.open(manifest)
    assert trail.steps == [10, 20, 25]  # every 10 steps and the last one
    entry = trail.manifest["checkpoints"][0]
    assert set(entry) == {"step", "file", "wall_time", "loss", "sha256"}
    assert entry["file"].endswith(".safetensors") and entry["loss"] > 0
    assert sorted(trail.ema_paths()) == [0.9, 0.99]
    assert not list((tmp_path / "trail").glob("*.tmp"))


def test_resume_equals_uninterrupted(tmp_path):
    cfg = tiny_config(tmp_path)
    full = Trail.open(_train(cfg, tmp_path / "full", 30))
    _train(cfg, tmp_path / "resumed", 20)  # stops at step 20, as a killed job would have
    resumed = Trail.open(_train(cfg, tmp_path / "resumed", 30))
    assert resumed.steps == full.steps == [10, 20, 30]
    for i in range(3):
        a, b = load_tensors(full.checkpoint_path(i)), load_tensors(resumed.checkpoint_path(i))
        assert all(torch.equal(a[k], b[k]) for k in a)
    for decay, path in full.ema_paths().items():
        a, b = load_tensors(path), load_tensors(resumed.ema_paths()[decay])
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert [c["sha256"] for c in full.manifest["checkpoints"]] == [c["sha256"] for c in resumed.manifest["checkpoints"]]


def test_resume_state_from_other_settings_is_not_reused(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    _train(cfg, tmp_path / "t", 20)
    cfg2 = tiny_config(tmp_path, train={"lr": 5e-4})
    Trail.open(_train(cfg2, tmp_path / "t", 20))
    assert "starting from step 0" in capsys.readouterr().out


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoints(tmp_path):
    cfg = tiny_config(tmp_path)
    calls = {"n": 0}

    def exploding(net, x, g, step):
        calls["n"] += 1
        loss = VPDiffusion().loss(net, x, g)
        return loss * float("nan") if calls["n"] > 12 else loss

    model = build_unet(cfg["model"], 1)
    with pytest.raises(TrainingError, match=r"step 13.*step_0000010.safetensors"):
        train(model, exploding, torch.rand(20, 1, 8, 8), dict(cfg["train"], iterations=30), tmp_path / "t",
              seed=0, device=torch.device("cpu"), manifest_extra={})
    assert (tmp_path / "t" / "step_0000010.safetensors").exists()


def test_combination_and_tampering(tmp_path):
    cfg = tiny_config(tmp_path)
    manifest = _train(cfg, tmp_path / "t", 30)
    trail = Trail.open(manifest)
    model = build_unet(cfg["model"], 1)
    loader = FlatLoader(model)
    W = trail.stack(loader.shapes)
    assert W.shape == (3, loader.numel)
    c = torch.tensor([0.5, -0.25, 0.75])
    loader.load(combine(W, c))
    states = [load_tensors(trail.checkpoint_path(i)) for i in range(3)]
    for key, value in model.state_dict().items():
        expected = sum(ci * s[key] for ci, s in zip(c, states))
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="2 coefficients for a trail of 3"):
        combine(W, [1.0, 0.0])
    # a checkpoint of another architecture names the file
    other = build_unet(dict(cfg["model"], channels=4), 1)
    save_tensors(manifest.parent / "other.safetensors", other.state_dict())  # (a file outside the trail is refused)
    data = json.loads(manifest.read_text())
    data["checkpoints"][1]["file"] = "other.safetensors"
    from lcsc.io import sha256, write_json

    data["checkpoints"][1]["sha256"] = sha256(manifest.parent / "other.safetensors")
    write_json(manifest, data)
    with pytest.raises(TrailError, match="other.safetensors: not a checkpoint of this model"):
        Trail.open(manifest).stack(loader.shapes)
    # a changed file no longer matches its hash
    path = trail.checkpoint_path(0)
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(TrailError, match=path.name):
        Trail.open(manifest)
