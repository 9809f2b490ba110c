"""Stage train_cm: the CD loss falls, CD and CT trails have the DM trail's format, CT resumes."""

import pytest
import torch
import yaml

from helpers import cm_config
from lcsc.cli import main
from lcsc.kernel.config import validate
from lcsc.kernel.families.consistency import ConsistencyLoss
from lcsc.kernel.models import for_model
from lcsc.kernel.nets import build_unet
from lcsc.kernel.tensors import load_tensors
from lcsc.kernel.trail import Trail


@pytest.mark.slow
def test_cd_loss_falls_and_cd_ct_trails_use_the_dm_manifest_format(trained, tmp_path):
    cfg, _ = trained
    cfg = dict(
        cfg,
        consistency=dict(
            cfg["consistency"],
            modes=["cd", "ct"],
            train={**cfg["consistency"]["train"], "iterations": 120, "checkpoint_every": 40, "lr": 2e-3},
        ),
    )
    cfg_file = tmp_path / "cm.yaml"
    cfg_file.write_text(yaml.safe_dump(validate(cfg)))
    for mode in ("cd", "ct"):
        assert main(["train-cm", "--mode", mode, "--config", str(cfg_file), "--out-dir", str(tmp_path / mode)]) == 0
    dm = Trail.open(f"{cfg['results_dir']}/{cfg['experiment']}/dm/trail/manifest.json")
    cd, ct = Trail.open(tmp_path / "cd" / "manifest.json"), Trail.open(tmp_path / "ct" / "manifest.json")
    losses = [c["loss"] for c in cd.manifest["checkpoints"]]
    assert losses[-1] < 0.7 * losses[0], losses  # the CD loss falls over a tiny run
    for trail, mode in ((cd, "cd"), (ct, "ct")):
        m = trail.manifest
        assert m["format"] == dm.manifest["format"] and m["kind"] == "cm" and m["mode"] == mode
        assert set(dm.manifest) - {"diffusion"} <= set(m)  # every key of a DM manifest but the VP schedule
        assert [set(c) for c in m["checkpoints"]] == [set(dm.manifest["checkpoints"][0])] * 3
        assert trail.steps == [40, 80, 120] and sorted(trail.ema_paths()) == [0.9, 0.99]
        # the checkpoints are the U-Net's own weights, with the DM's names and shapes
        a, b = load_tensors(trail.checkpoint_path(0)), load_tensors(dm.checkpoint_path(0))
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert cd.manifest["teacher"]["weights"] == "ema_0.99"
    assert cd.manifest["teacher"]["sha256"] == dm.manifest["ema"][1]["sha256"]
    assert ct.manifest["training"]["curriculum_iterations"] == 120 and "teacher" not in ct.manifest


@pytest.mark.slow
def test_ct_resume_equals_uninterrupted(tmp_path):
    """The curriculum depends on the step, which the resume state restores."""
    from lcsc.kernel.training import train

    cfg = cm_config(tmp_path)
    tcfg = dict(for_model(cfg, "cm_ct")["train"], checkpoint_every=10)
    data = torch.rand(40, 1, 8, 8) * 2 - 1

    def run(out, iterations):
        torch.manual_seed(0)
        loss = ConsistencyLoss(cfg["consistency"], "ct", 30)
        return train(
            build_unet(cfg["model"], 1),
            loss,
            data,
            dict(tcfg, iterations=iterations),
            out,
            seed=0,
            device=torch.device("cpu"),
            manifest_extra={"kind": "cm", "curriculum_iterations": 30},
        )

    full = Trail.open(run(tmp_path / "full", 30))
    run(tmp_path / "resumed", 20)
    resumed = Trail.open(run(tmp_path / "resumed", 30))
    assert full.fingerprint == resumed.fingerprint
