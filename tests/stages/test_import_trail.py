"""Stage import_trail on a state-dict trail (this project's U-Net saved as openai/consistency_models
does: `model<step>.pt` with `{"state_dict": {"module.<key>": ...}}`, mixed dtypes, an EMA file):
the manifest it writes, the thinning, and every bad file stopping with one line that names it."""

import json

import pytest
import torch

from foreign_trails import write_payload
from helpers import check_one_line, sd_config, trained_paths
from lcsc.cli import main
from lcsc.kernel.io import sha256
from lcsc.kernel.paths import Layout
from lcsc.stages.import_trail import select


def imported_manifest(cfg):
    return Layout.of(cfg).manifest("imported")


def test_import_lists_the_files_where_they_are(sd_run, tmp_path, capsys):
    cfg, config = sd_config(sd_run, tmp_path)
    assert main(["import-trail", "--config", config]) == 0
    manifest = json.loads(imported_manifest(cfg).read_text())
    run = sd_run[1]
    assert manifest["kind"] == "state_dict" and manifest["root"] == str(run.resolve())
    assert [c["step"] for c in manifest["checkpoints"]] == [10, 20, 30, 40]
    assert [c["dtype"] for c in manifest["checkpoints"]] == ["float32", "bfloat16", "float32", "float32"]
    params = sum(v.numel() for v in torch.load(run / "model000010.pt", weights_only=True)["state_dict"].values())
    for c in manifest["checkpoints"]:
        path = run / c["file"]
        assert c["sha256"] == sha256(path) and c["bytes"] == path.stat().st_size and c["params"] == params
    assert manifest["ema"][0]["file"] == "ema_0.99_000040.pt" and manifest["ema"][0]["decay"] == 0.99
    assert not list(imported_manifest(cfg).parent.glob("*.pt"))  # nothing copied
    assert "4 checkpoints" in capsys.readouterr().out


def test_every_and_last_keep_the_last_checkpoint():
    files = list(range(1, 11))
    assert select(files, 1, None) == files
    assert select(files, 3, None) == [1, 4, 7, 10]
    assert select(files, 3, 2) == [7, 10]
    assert select(files, 1, 4) == [7, 8, 9, 10]


def test_thinned_import(sd_run, tmp_path):
    cfg, config = sd_config(sd_run, tmp_path, every=2)
    assert main(["import-trail", "--config", config]) == 0
    assert [c["step"] for c in json.loads(imported_manifest(cfg).read_text())["checkpoints"]] == [20, 40]


def _copy_run(sd_run, tmp_path):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(sd_run[1], folder)
    return folder


@pytest.mark.parametrize(
    "bad, needles",
    [
        ("extra_key", ["model000050.pt", "extra key 'stray'"]),
        ("shape", ["model000050.pt", "has shape (1,)"]),
        ("missing_key", ["model000050.pt", "lacks"]),
        ("payload", ["model000050.pt", "pickled Python objects", "never unpickles"]),
        ("int", ["model000050.pt", "not a float tensor"]),
    ],
)
def test_a_bad_checkpoint_is_one_line_naming_it(sd_run, tmp_path, capsys, bad, needles):
    folder = _copy_run(sd_run, tmp_path)
    state = torch.load(folder / "model000040.pt", weights_only=True)["state_dict"]
    first = next(iter(state))
    marker = tmp_path / "PWNED"
    if bad == "payload":
        write_payload(folder / "model000050.pt", marker)
    else:
        if bad == "extra_key":
            state["module.stray"] = torch.ones(1)
        elif bad == "shape":
            state[first] = torch.ones(1)
        elif bad == "missing_key":
            state.pop(first)
        elif bad == "int":
            state[first] = state[first].long()
        torch.save({"state_dict": state}, folder / "model000050.pt")
    _, config = sd_config(sd_run, tmp_path, folder)
    capsys.readouterr()
    rc = main(["import-trail", "--config", config])
    check_one_line(rc, capsys.readouterr().err, "import-trail", needles)
    assert not marker.exists()


def test_a_file_changed_or_missing_after_import_stops_the_next_stage(sd_run, tmp_path, capsys):
    folder = _copy_run(sd_run, tmp_path)
    cfg, config = sd_config(sd_run, tmp_path, folder)
    assert main(["import-trail", "--config", config]) == 0
    _, features, stats = trained_paths(sd_run[0])
    args = ["baselines", "--config", config, "--model", "imported", "--features", str(features), "--stats", str(stats)]
    state = torch.load(folder / "model000020.pt", weights_only=True)
    state["state_dict"] = {k: v + 1 for k, v in state["state_dict"].items()}
    torch.save(state, folder / "model000020.pt")
    capsys.readouterr()
    check_one_line(
        main(args),
        capsys.readouterr().err,
        "baselines",
        [str(folder / "model000020.pt"), "changed after the trail was written", "rerun import_trail"],
    )
    (folder / "model000030.pt").unlink()
    check_one_line(main(args), capsys.readouterr().err, "baselines", [str(folder / "model000020.pt")])
    assert main(["import-trail", "--config", config]) == 0  # after a fresh import only the missing file is left
    (folder / "model000020.pt").unlink()
    check_one_line(main(args), capsys.readouterr().err, "baselines", [str(folder / "model000020.pt"), "missing"])


@pytest.mark.parametrize(
    "trail, needles",
    [
        ({"factory": None}, ["trail.factory: required"]),
        ({"path": "/nonexistent/run"}, ["trail.path: /nonexistent/run is not a folder"]),
        ({"factory": "no_such_module:make"}, ["trail.factory: cannot import 'no_such_module'"]),
        ({"files": "*.safetensors"}, ["no file matches trail.files '*.safetensors'"]),
        ({"key": "ema"}, ["model000010.pt: no key 'ema'"]),
        ({"scheduler": "/x.json"}, ["trail.scheduler: set, but trail.source 'state_dict' does not read it"]),
        ({"ema_decay": None}, ["trail.ema_decay: give it together with trail.ema"]),
    ],
)
def test_bad_trail_settings_are_one_line(sd_run, tmp_path, capsys, trail, needles):
    _, config = sd_config(sd_run, tmp_path, **trail)
    capsys.readouterr()
    rc = main(["import-trail", "--config", config])
    err = capsys.readouterr().err
    check_one_line(rc, err, "import-trail", needles)


def test_a_state_dict_trail_sampled_as_a_consistency_model(sd_run, tmp_path, capsys):
    """trail.sampler: cm samples the factory's network with this project's consistency sampler, with
    the parameterization the import recorded; NFE 1 and 2 are each one network call per step."""
    cfg, config = sd_config(sd_run, tmp_path, sampler="cm")
    assert main(["import-trail", "--config", config]) == 0
    manifest = json.loads(imported_manifest(cfg).read_text())
    assert manifest["sampler"] == "cm" and manifest["consistency"]["sigma_max"] == cfg["consistency"]["sigma_max"]
    _, features, stats = trained_paths(sd_run[0])
    out = tmp_path / "last.json"
    assert (
        main(
            [
                "evaluate",
                "--config",
                config,
                "--model",
                "imported",
                "--variant",
                "last",
                "--features",
                str(features),
                "--stats",
                str(stats),
                "--out",
                str(out),
                "--grid",
                str(tmp_path / "g.png"),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert sorted(result["fid"]) == [str(n) for n in cfg["consistency"]["evaluate_nfe"]]
    from lcsc.kernel.families import family_for
    from lcsc.kernel.families.consistency import ConsistencySampler
    from lcsc.kernel.trail import Trail

    family = family_for(Trail.open(imported_manifest(cfg)), dict(cfg, trail=dict(cfg["trail"], sampler="cm")))
    assert isinstance(family.sampler, ConsistencySampler)


def test_the_effective_ema_decay_is_diffusers_own():
    """The decay diffusers' EMAModel applied at its last update, from the settings it saves, for
    warm-up on and off, a late start and a floor: equal to EMAModel.get_decay."""
    from diffusers.training_utils import EMAModel

    from lcsc.kernel.families.diffusers_run import effective_decay

    p = [torch.nn.Parameter(torch.zeros(1))]
    for kw, step in (
        ({"decay": 0.9999, "use_ema_warmup": True, "power": 0.75}, 4000),
        ({"decay": 0.9999}, 300),
        ({"decay": 0.9, "update_after_step": 10}, 15),
        ({"decay": 0.999, "min_decay": 0.5, "use_ema_warmup": True, "inv_gamma": 3.0}, 2),
        ({"decay": 0.95}, 1),
    ):
        ema = EMAModel(p, **kw)
        settings = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"} | {"optimization_step": step}
        assert effective_decay(settings) == pytest.approx(ema.get_decay(step), rel=1e-12), kw
    assert effective_decay({"decay": 0.9}) is None and effective_decay("x") is None
