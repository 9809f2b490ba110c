"""Bad input, faults and untrusted files: each gives a clear error naming the file, nothing is lost."""

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
import yaml

from lcsc.cli import main
from lcsc.evaluate import WORST_FID, Scorer
from lcsc.io import load_tensors, save_tensors, write_json
from lcsc.paths import Layout, dataset_name
from lcsc.trail import Trail

from conftest import REPO, tiny_config


class Payload:
    """Unpickling this runs a shell command: the kind of file a checkpoint must never be."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"weight": Payload(marker)}, fh, protocol=2)
    # the file is really malicious: a plain unpickling in another process runs the payload
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(evil)!r}, 'rb'))"], check=True,
                   cwd=tmp_path)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError, match=r"evil.pt: refused to load.*weights_only=True"):
        load_tensors(evil)
    assert not marker.exists()
    # a plain tensor .pt file still loads
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_tensors(tmp_path / "ok.pt")["w"], torch.ones(2))


def test_truncated_safetensors_names_the_file(tmp_path):
    save_tensors(tmp_path / "w.safetensors", {"w": torch.zeros(100)})
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[:20])
    with pytest.raises(ValueError, match="w.safetensors: not a readable safetensors file"):
        load_tensors(tmp_path / "w.safetensors")


@pytest.mark.parametrize("failure, needle", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
])
def test_write_failures_name_the_path_and_keep_the_old_file(tmp_path, monkeypatch, failure, needle):
    target = tmp_path / "out" / "result.json"
    write_json(target, {"old": 1})

    def broken(*args, **kwargs):
        raise failure

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError) as err:
        write_json(target, {"new": 2})
    assert needle in str(err.value) and str(target) in str(err.value)
    assert json.loads(target.read_text()) == {"old": 1}  # never half-written
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]  # no temp file left


def test_missing_inputs_name_the_file(trained, tmp_path, capsys):
    cfg, cfg_file = trained
    assert main(["evaluate", "--config", str(cfg_file), "--variant", "last", "--stats",
                 str(tmp_path / "nowhere.npz")]) == 2
    err = capsys.readouterr().err
    assert "nowhere.npz" in err and "reference_stats" in err
    manifest = Layout.of(cfg).manifest("dm")
    data = json.loads(manifest.read_text())
    data["checkpoints"][0]["file"] = "step_missing.safetensors"
    write_json(tmp_path / "manifest.json", data)
    assert main(["search", "--config", str(cfg_file), "--manifest", str(tmp_path / "manifest.json")]) == 2
    assert "step_missing.safetensors: listed in" in capsys.readouterr().err


def test_non_finite_samples_score_worst_and_the_search_goes_on(trained, tmp_path, monkeypatch):
    cfg, _ = trained
    layout = Layout.of(cfg)
    stats = layout.stats(dataset_name(cfg["data"]), "train", "classifier")
    scorer = Scorer(cfg, Trail.open(layout.manifest("dm")), layout.feature_net("classifier"), stats,
                    torch.device("cpu"), 64)
    noise = torch.randn(32, *scorer.shape)
    flat = scorer.weights_of([0, 0, 0, 1]).clone()
    flat[::7] = float("nan")
    with pytest.warns(UserWarning, match="non-finite samples"):
        assert scorer.fid(flat, 2, noise)[0] == WORST_FID

    from lcsc import search

    real_fid, calls = Scorer.fid, {"n": 0}

    def flaky(self, flat, nfe, noise):  # the search writes each candidate into the model, then calls fid(None, ...)
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            with torch.no_grad():
                self.loader.flat[0] = float("inf")
        return real_fid(self, flat, nfe, noise)

    monkeypatch.setattr(Scorer, "fid", flaky)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = search.run_search(cfg, layout.manifest("dm"), layout.feature_net("classifier"), stats,
                                   tmp_path / "s", torch.device("cpu"))
    history = (tmp_path / "s" / "history.csv").read_text()
    assert f"{WORST_FID}" in history
    assert np.isfinite(result["fitness"]) and result["fitness"] < WORST_FID


def _trail_hashes(manifest):
    return [(c["step"], c["sha256"]) for c in json.loads(manifest.read_text())["checkpoints"]]


def test_sigkill_during_training_resumes_to_the_same_trail(tmp_path):
    overrides = {"train": {"iterations": 240, "checkpoint_every": 20}}
    for name in ("killed", "whole"):
        cfg = tiny_config(tmp_path / name, **overrides)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "lcsc", "train-dm", "--threads", "1"]
    proc = subprocess.Popen([*cmd, "--config", str(tmp_path / "killed.yaml")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trail = tmp_path / "killed" / "tiny" / "dm" / "trail"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(trail.glob("step_*.safetensors"))) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (trail / "manifest.json").exists(), "the job finished before it could be killed"
    subprocess.run([*cmd, "--config", str(tmp_path / "killed.yaml")], cwd=REPO, check=True, capture_output=True)
    subprocess.run([*cmd, "--config", str(tmp_path / "whole.yaml")], cwd=REPO, check=True, capture_output=True)
    resumed = _trail_hashes(trail / "manifest.json")
    whole = _trail_hashes(tmp_path / "whole" / "tiny" / "dm" / "trail" / "manifest.json")
    assert [s for s, _ in resumed] == list(range(20, 241, 20))
    assert resumed == whole
    assert not list(trail.glob("*.tmp"))


def test_two_experiments_in_one_results_folder_do_not_clobber(tmp_path):
    for name, lr in (("a", 1e-3), ("b", 5e-4)):
        cfg = tiny_config(tmp_path / "results", experiment=name,
                          train={"iterations": 20, "checkpoint_every": 10, "lr": lr})
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["train-dm", "--config", str(tmp_path / f"{name}.yaml")]) == 0
    a = _trail_hashes(tmp_path / "results" / "a" / "dm" / "trail" / "manifest.json")
    b = _trail_hashes(tmp_path / "results" / "b" / "dm" / "trail" / "manifest.json")
    assert len(a) == len(b) == 2 and a != b
