"""The training loop: the trail it writes, resuming to the same bytes (also after SIGKILL), and
a non-finite loss stopping it."""

import signal
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import REPO, tiny_config
from helpers import hold_when, trail_hashes, train_tiny
from lcsc.kernel.errors import TrainingError
from lcsc.kernel.families.diffusion import VPDiffusion
from lcsc.kernel.nets import build_unet
from lcsc.kernel.tensors import load_tensors
from lcsc.kernel.trail import Trail
from lcsc.kernel.training import train


@pytest.mark.slow
def test_trail_manifest_and_files(tmp_path):
    cfg = tiny_config(tmp_path, train={"iterations": 25, "checkpoint_every": 10})
    manifest = train_tiny(cfg, tmp_path / "trail", 25)
    trail = Trail.open(manifest)
    assert trail.steps == [10, 20, 25]  # every 10 steps and the last one
    entry = trail.manifest["checkpoints"][0]
    assert set(entry) == {"step", "file", "wall_time", "loss", "sha256"}
    assert entry["file"].endswith(".safetensors") and entry["loss"] > 0
    assert sorted(trail.ema_paths()) == [0.9, 0.99]
    assert not list((tmp_path / "trail").glob("*.tmp"))


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    cfg = tiny_config(tmp_path)
    full = Trail.open(train_tiny(cfg, tmp_path / "full", 30))
    train_tiny(cfg, tmp_path / "resumed", 20)  # stops at step 20, as a killed job would have
    resumed = Trail.open(train_tiny(cfg, tmp_path / "resumed", 30))
    assert resumed.steps == full.steps == [10, 20, 30]
    for i in range(3):
        a, b = load_tensors(full.checkpoint_path(i)), load_tensors(resumed.checkpoint_path(i))
        assert all(torch.equal(a[k], b[k]) for k in a)
    for decay, path in full.ema_paths().items():
        a, b = load_tensors(path), load_tensors(resumed.ema_paths()[decay])
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert [c["sha256"] for c in full.manifest["checkpoints"]] == [
        c["sha256"] for c in resumed.manifest["checkpoints"]
    ]


@pytest.mark.slow
def test_resume_state_from_other_settings_is_not_reused(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    train_tiny(cfg, tmp_path / "t", 20)
    cfg2 = tiny_config(tmp_path, train={"lr": 5e-4})
    Trail.open(train_tiny(cfg2, tmp_path / "t", 20))
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
        train(
            model,
            exploding,
            torch.rand(20, 1, 8, 8),
            dict(cfg["train"], iterations=30),
            tmp_path / "t",
            seed=0,
            device=torch.device("cpu"),
            manifest_extra={},
        )
    assert (tmp_path / "t" / "step_0000010.safetensors").exists()


@pytest.mark.slow
def test_sigkill_during_training_resumes_to_the_same_trail(tmp_path):
    overrides = {"train": {"iterations": 240, "checkpoint_every": 20}}
    for name in ("killed", "whole"):
        cfg = tiny_config(tmp_path / name, **overrides)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "lcsc", "train-dm", "--threads", "1"]
    # the uninterrupted run, meanwhile (one thread each: the two cores run both)
    whole = subprocess.Popen(
        [*cmd, "--config", str(tmp_path / "whole.yaml")],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "whole.err", "w"),
    )
    proc = subprocess.Popen(
        [*cmd, "--config", str(tmp_path / "killed.yaml")],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    trail = tmp_path / "killed" / "tiny" / "dm" / "trail"
    hold_when(
        proc,
        lambda: len(list(trail.glob("step_*.safetensors"))) >= 4 and not (trail / "manifest.json").exists(),
        300,
        "the fourth checkpoint",
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run([*cmd, "--config", str(tmp_path / "killed.yaml")], cwd=REPO, check=True, capture_output=True)
    assert whole.wait(timeout=300) == 0, (tmp_path / "whole.err").read_text()[-2000:]
    resumed = trail_hashes(trail / "manifest.json")
    whole = trail_hashes(tmp_path / "whole" / "tiny" / "dm" / "trail" / "manifest.json")
    assert [s for s, _ in resumed] == list(range(20, 241, 20))
    assert resumed == whole
    assert not list(trail.glob("*.tmp"))
