"""Adding a model family is one module and one registry entry: a family from a test-only module
(tests/npz_family.py: a made-up trainer's `.npz` archives) goes through import, search, evaluate
and export by the stages as they are, and an unknown source is one line."""

import copy
import json

import numpy as np
import pytest
import torch
import yaml

from helpers import check_one_line, trained_paths
from lcsc.cli import main
from lcsc.kernel import families
from lcsc.kernel.paths import Layout
from lcsc.kernel.tensors import load_tensors


def _npz_run(trained_cfg, folder):
    """The session's trained trail, saved as the made-up trainer would: weights-<step>.npz and
    arch.json, its 0.99 EMA as ema.npz."""
    manifest_path = trained_paths(trained_cfg)[0]
    manifest = json.loads(manifest_path.read_text())
    folder.mkdir(parents=True)
    for entry in manifest["checkpoints"]:
        state = load_tensors(manifest_path.parent / entry["file"])
        np.savez(folder / f"weights-{entry['step']:05d}.npz", **{k: v.numpy() for k, v in state.items()})
    ema = next(e for e in manifest["ema"] if e["decay"] == 0.99)
    np.savez(folder / "ema.npz", **{k: v.numpy() for k, v in load_tensors(manifest_path.parent / ema["file"]).items()})
    (folder / "arch.json").write_text(json.dumps({"model": manifest["model_config"], "channels": 1}))
    return manifest


@pytest.fixture
def npz_source(monkeypatch):
    monkeypatch.setitem(families.SOURCES, "npz", "npz_family")


def test_a_family_from_outside_lcsc_runs_through_every_stage(trained, tmp_path, npz_source):
    cfg, trained_file = trained
    run = tmp_path / "npz run; 'x'"
    trained_manifest = _npz_run(cfg, run)
    _, features, stats = trained_paths(cfg)
    mine = copy.deepcopy(cfg)
    mine["results_dir"] = str(tmp_path / "results")
    mine["evaluate"] = dict(mine["evaluate"], repeats=1)
    mine["trail"] = {"source": "npz", "path": str(run), "ema": "ema.npz", "ema_decay": 0.99}
    config = tmp_path / "npz.yaml"
    config.write_text(yaml.safe_dump(mine))
    given = ["--config", str(config), "--model", "imported", "--features", str(features), "--stats", str(stats)]
    assert main(["import-trail", "--config", str(config)]) == 0
    layout = Layout.of(mine)
    manifest = json.loads(layout.manifest("imported").read_text())
    assert manifest["kind"] == "npz" and manifest["sampler"] == "dm"
    assert [c["step"] for c in manifest["checkpoints"]] == [c["step"] for c in trained_manifest["checkpoints"]]
    assert manifest["ema"][0]["file"] == "ema.npz" and manifest["model_config"] == trained_manifest["model_config"]
    assert main(["search", *given]) == 0
    for variant in ("lcsc", "last", "ema_0.99"):
        assert main(["evaluate", *given, "--variant", variant]) == 0
    evaluations = [str(layout.eval_json("imported", v)) for v in ("lcsc", "last", "ema_0.99")]
    assert main(["export", "--config", str(config), "--model", "imported", "--evaluations", *evaluations]) == 0

    # the same weights sampled by the same sampler: last's FIDs are those of the trail trained here
    here = tmp_path / "here.json"
    assert (
        main(
            [
                "evaluate",
                "--config",
                str(trained_file),
                "--model",
                "dm",
                "--variant",
                "last",
                "--manifest",
                str(trained_paths(cfg)[0]),
                "--features",
                str(features),
                "--stats",
                str(stats),
                "--set",
                f"results_dir={tmp_path / 'results-here'}",
                "--out",
                str(here),
                "--grid",
                str(tmp_path / "here.png"),
            ]
        )
        == 0
    )
    assert json.loads(here.read_text())["fid"] == json.loads(layout.eval_json("imported", "last").read_text())["fid"]

    # the export is the family's own format, and holds the searched combination
    out = layout.export_dir("imported", "lcsc")
    coefficients = json.loads(layout.coefficients("imported", mine["search"]["nfe"]).read_text())["coefficients"]
    with np.load(out / "model.npz") as saved:
        exported = {k: torch.from_numpy(saved[k]) for k in saved.files}
    expected = {}
    for c, entry in zip(coefficients, manifest["checkpoints"]):
        with np.load(run / entry["file"]) as archive:
            for k in archive.files:
                expected[k] = expected.get(k, 0) + c * torch.from_numpy(archive[k])
    assert exported.keys() == expected.keys()
    for k, v in exported.items():
        torch.testing.assert_close(v, expected[k], atol=1e-5, rtol=1e-5)
    card = (out / "README.md").read_text()
    assert "files: model.npz" in card and "np.load('model.npz')" in card


def test_an_unknown_source_is_one_line(trained, tmp_path, capsys):
    cfg, _ = trained
    bad = copy.deepcopy(cfg)
    bad["trail"] = {"source": "npz", "path": str(tmp_path)}  # not registered in this test
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(bad))
    rc = main(["import-trail", "--config", str(config)])
    check_one_line(
        rc,
        capsys.readouterr().err,
        "import-trail",
        ["trail.source: 'npz' is not a source lcsc knows (the sources: lcsc, diffusers, state_dict)"],
    )
