"""Stage truncate_trail: the first part of a trail, as a manifest that reaches its base trail's
files only."""

import json
from pathlib import Path

import pytest
import torch

from helpers import cm_config
from lcsc.kernel.errors import ConfigError, TrailError
from lcsc.kernel.families.consistency import ConsistencyLoss
from lcsc.kernel.io import write_json
from lcsc.kernel.models import for_model
from lcsc.kernel.nets import build_unet
from lcsc.kernel.trail import Trail
from lcsc.stages import truncate_trail
from lcsc.stages.truncate_trail import truncate


def test_truncated_trail(tmp_path):
    from lcsc.kernel.training import train

    out = tmp_path / "r" / "cm_ct" / "trail"
    cfg = cm_config(tmp_path)
    train(
        build_unet(cfg["model"], 1),
        ConsistencyLoss(cfg["consistency"], "ct", 40),
        torch.rand(20, 1, 8, 8),
        dict(for_model(cfg, "cm_ct")["train"], iterations=40, checkpoint_every=10),
        out,
        seed=0,
        device=torch.device("cpu"),
        manifest_extra={"kind": "cm"},
    )
    short = tmp_path / "r" / "cm_ct_first50" / "trail" / "manifest.json"
    truncate(out / "manifest.json", 0.5, short)
    trail = Trail.open(short)
    assert trail.steps == [10, 20] and trail.manifest["iterations"] == 20 and trail.ema_paths() == {}
    assert trail.manifest["checkpoints"][0]["file"].startswith("../../cm_ct/trail/")
    assert trail.fingerprint == Trail.open(out / "manifest.json").fingerprint[:2]
    with pytest.raises(TrailError, match="at least 2"):
        truncate(out / "manifest.json", 0.3, tmp_path / "x" / "manifest.json")


def test_truncated_trails_reach_their_base_trail_only(ctx):
    base = ctx.trail()  # <tmp>/trail/manifest.json
    short = ctx.tmp / "dm_first50" / "trail" / "manifest.json"
    written = truncate(base, 0.5, short)
    assert written["root"] == "../../trail"
    assert written["checkpoints"][0]["file"].startswith("../../trail/")
    trail = Trail.open(short)
    assert trail.files_root.resolve() == base.parent.resolve()
    assert trail.fingerprint == Trail.open(base).fingerprint[: len(trail)]
    # a truncated manifest written before manifests declared their root still opens
    legacy = {k: v for k, v in written.items() if k != "root"}
    write_json(short, legacy)
    assert Trail.open(short).fingerprint == trail.fingerprint
    # but its entries may not leave the base trail's folder
    escaped = dict(
        legacy,
        checkpoints=[written["checkpoints"][0], dict(written["checkpoints"][1], file="../../trail/../x.safetensors")],
    )
    write_json(short, escaped)
    with pytest.raises(TrailError, match="outside the trail"):
        Trail.open(short)
    write_json(short, dict(escaped, root="../../trail"))
    with pytest.raises(TrailError, match="outside the trail"):
        Trail.open(short)
    # a truncated trail of a truncated trail reaches the same files
    shorter = truncate(_rewrite(short, written), 1.0, ctx.tmp / "again" / "trail" / "manifest.json")
    assert shorter["root"] == "../../trail"
    assert Trail.open(ctx.tmp / "again" / "trail" / "manifest.json").steps == trail.steps


def _rewrite(path: Path, manifest: dict) -> Path:
    write_json(path, manifest)
    return path


def test_the_stage_writes_the_manifest_its_model_name_asks_for(ctx, capsys):
    base = ctx.trail()
    out = ctx.tmp / "dm_first50" / "trail" / "manifest.json"
    paths = truncate_trail.Paths(manifest=base, out=out)
    manifest = truncate_trail.run({}, paths, "dm_first50")
    assert manifest == json.loads(out.read_text())
    assert manifest["iterations"] == 20 and [c["step"] for c in manifest["checkpoints"]] == [10, 20]
    assert manifest["truncated_from"] == {"manifest": str(base), "fraction": 0.5, "iterations": 40}
    assert manifest["ema"] == [] and manifest["kind"] == "dm" and manifest["root"] == "../../trail"
    assert "[truncate_trail] dm_first50: 2 checkpoints up to step 20 of 40" in capsys.readouterr().out
    with pytest.raises(
        ConfigError, match="--model: 'dm' does not name a truncated trail; pass <model>_first<percent>"
    ):
        truncate_trail.run({}, paths, "dm")
    with pytest.raises(
        TrailError,
        match=r"the first 0.3 of training \(steps up to 12\) holds 1 checkpoint\(s\); "
        "LCSC needs at least 2",
    ):
        truncate_trail.run({}, paths, "dm_first30")
    data = json.loads(base.read_text())
    del data["iterations"]
    write_json(base, data)
    with pytest.raises(TrailError, match="manifest.json: no iterations"):
        truncate_trail.run({}, paths, "dm_first50")
