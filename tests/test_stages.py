"""Every stage on the tiny config, through the same functions the CLI calls."""

import csv
import json
import re

import numpy as np
import pytest
import torch

from lcsc.cli import main
from lcsc.evaluate import Scorer, make_noise
from lcsc.io import load_tensors
from lcsc.paths import Layout, dataset_name
from lcsc.trail import Trail


def test_features_and_stats(trained):
    cfg, _ = trained
    layout = Layout.of(cfg)
    with np.load(layout.stats(dataset_name(cfg["data"]), "train", "classifier")) as z:
        assert z["mu"].shape == (16,) and z["sigma"].shape == (16, 16)
        assert str(z["split"]) == "train" and int(z["n"]) == 1438
        np.testing.assert_allclose(z["sigma"], z["sigma"].T)


BASELINES = ["last", "uniform", "lawa_2", "ema_0.9_profile", "ema_0.99_profile", "power_0.05", "power_0.1",
             "greedy_soup"]
VARIANTS = ["last", "ema_0.9", "ema_0.99", *BASELINES[1:], "lcsc"]


def test_baselines_stage(trained):
    cfg, cfg_file = trained
    assert main(["baselines", "--config", str(cfg_file)]) == 0
    layout = Layout.of(cfg)
    result = json.loads(layout.baselines("dm").read_text())
    assert list(result["profiles"]) == BASELINES
    for name, p in result["profiles"].items():
        assert sum(p["coefficients"]) == pytest.approx(1.0), name
        assert np.isfinite(p["fitness"])
    soup = result["profiles"]["greedy_soup"]
    members = [i for i, c in enumerate(soup["coefficients"]) if c > 0]
    assert soup["steps"][0]["added"] == members[0] or len(members) > 1
    # the soup is never worse than its best single checkpoint (the first step)
    assert soup["fitness"] <= soup["steps"][0]["fitness"]


def test_search_outputs_and_fitness_is_reproducible(trained):
    cfg, cfg_file = trained
    layout = Layout.of(cfg)
    if not layout.baselines("dm").exists():
        assert main(["baselines", "--config", str(cfg_file)]) == 0
    assert main(["search", "--config", str(cfg_file)]) == 0
    result = json.loads(layout.coefficients("dm", 2).read_text())
    with open(layout.history("dm", 2)) as fh:
        rows = list(csv.DictReader(fh))
    phases = [r["phase"] for r in rows]
    # the baseline profiles as starting points, the optimizer's budget of 8, the top 3 re-scored
    assert phases == ["start"] * 8 + ["search"] * 8 + ["rescore"] * 3
    assert [r["name"] for r in rows[:8]] == BASELINES
    baselines = json.loads(layout.baselines("dm").read_text())["profiles"]
    assert [float(r["fitness"]) for r in rows[:8]] == [baselines[n]["fitness"] for n in BASELINES]
    screen = {int(r["evaluation"]): float(r["fitness"]) for r in rows if r["phase"] != "rescore"}
    assert float(rows[15]["best_so_far"]) == min(screen.values())
    # the optimizer starts at the best baseline, so the search never ends worse than it
    assert result["start"]["fitness"] == min(screen[i] for i in range(8))
    assert min(screen.values()) <= result["start"]["fitness"]
    # the kept candidate is the best re-score among the 3 best screening candidates
    top3 = sorted(screen, key=screen.get)[:3]
    rescored = [float(r["fitness"]) for r in rows[16:]]
    assert result["evaluation"] == top3[int(np.argmin(rescored))]
    assert result["rescore_fitness"] == min(rescored) and result["fitness"] == screen[result["evaluation"]]
    c = np.array(result["coefficients"])
    assert c.shape == (4,) and c.sum() == pytest.approx(1.0)  # every candidate sums to one
    # re-scoring the best coefficients on the search's noise gives its fitness bit for bit
    scorer = Scorer(cfg, Trail.open(layout.manifest("dm")), layout.feature_net("classifier"),
                    layout.stats(dataset_name(cfg["data"]), "train", "classifier"), torch.device("cpu"), 64)
    noise = make_noise(cfg["search"]["samples"], scorer.shape, cfg["search"]["seed"], "cpu")
    again, _ = scorer.fid(scorer.weights_of(c), 2, noise)
    assert again == result["fitness"]
    # best.safetensors holds exactly that combination
    best = load_tensors(layout.best_weights("dm", 2))
    scorer.loader.load(scorer.weights_of(c))
    for key, value in scorer.model.state_dict().items():
        assert torch.equal(best[key], value)


def test_evaluate_every_variant_and_tabulate(trained):
    cfg, cfg_file = trained
    layout = Layout.of(cfg)
    if not layout.coefficients("dm", 2).exists():
        assert main(["search", "--config", str(cfg_file)]) == 0
    variants = VARIANTS
    for v in variants:
        assert main(["evaluate", "--config", str(cfg_file), "--variant", v]) == 0
        res = json.loads(layout.eval_json("dm", v).read_text())
        assert sorted(res["fid"]) == ["1", "2"] and all(np.isfinite(list(res["fid"].values())))
        assert res["seed"] == cfg["evaluate"]["seed"] != cfg["search"]["seed"]
        assert layout.eval_grid("dm", v).stat().st_size > 100
    last = json.loads(layout.eval_json("dm", "last").read_text())
    assert last["coefficients"] == [0, 0, 0, 1]
    # a profile evaluated from the baselines file equals the closed form computed without it
    assert main(["evaluate", "--config", str(cfg_file), "--variant", "power_0.1", "--out",
                 str(layout.root / "p.json"), "--grid", str(layout.root / "p.png")]) == 0
    with_file = json.loads((layout.root / "p.json").read_text())
    assert with_file["fid"] == json.loads(layout.eval_json("dm", "power_0.1").read_text())["fid"]
    # evaluate is deterministic: the same variant twice gives the same FIDs bit for bit
    assert main(["evaluate", "--config", str(cfg_file), "--variant", "last"]) == 0
    assert json.loads(layout.eval_json("dm", "last").read_text())["fid"] == last["fid"]
    assert main(["tabulate", "--config", str(cfg_file)]) == 0
    report = layout.report_dir()
    for name in ("summary.md", "summary.csv", "fid_vs_nfe.png", "coefficients.png", "search_curve.png",
                 "samples_dm_lcsc.png"):
        assert (report / name).stat().st_size > 0, name
    with open(report / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in rows] == variants
    lcsc_row = next(r for r in rows if r["variant"] == "lcsc")
    lcsc_eval = json.loads(layout.eval_json("dm", "lcsc").read_text())
    assert float(lcsc_row["nfe2"]) == pytest.approx(lcsc_eval["fid"]["2"], abs=1e-4)
    md = (report / "summary.md").read_text()
    assert "| lcsc |" in md and "At the search NFE 2" in md and "the best baseline" in md
    assert md.count("†") >= 2 + 1  # one per NFE column, plus the legend
    assert "computed afterwards from the sparse trail (ema_0.99_profile)" in md


def test_unknown_variant_and_bad_config_fail_clearly(trained, capsys):
    cfg, cfg_file = trained
    assert main(["evaluate", "--config", str(cfg_file), "--variant", "best"]) == 2  # a message, no traceback
    assert re.search(r"unknown variant 'best'.*greedy_soup", capsys.readouterr().err)
    assert main(["search", "--config", str(cfg_file), "--set", "search.nfe=9"]) == 2
    assert "search.nfe: 9 is not in evaluate.nfe" in capsys.readouterr().err


def test_stale_inputs_are_refused_with_the_file_named(trained, tmp_path):
    cfg, cfg_file = trained
    layout = Layout.of(cfg)
    if not layout.baselines("dm").exists():
        assert main(["baselines", "--config", str(cfg_file)]) == 0
    from lcsc.io import read_json, write_json
    from lcsc.search import run_search
    from lcsc.trail import TrailError

    stale = read_json(layout.baselines("dm"))
    stale["trail_sha256"][0] = "0" * 64
    write_json(tmp_path / "stale.json", stale)
    stats = layout.stats(dataset_name(cfg["data"]), "train", "classifier")
    with pytest.raises(TrailError, match="stale.json: computed from another checkpoint trail"):
        run_search(cfg, layout.manifest("dm"), layout.feature_net("classifier"), stats, tmp_path / "s",
                   torch.device("cpu"), baselines=tmp_path / "stale.json")
    other = dict(cfg, diffusion=dict(cfg["diffusion"], timesteps=500))
    with pytest.raises(ValueError, match=r"diffusion.timesteps: 500 in the config.*manifest.json was trained with 1000"):
        Scorer(other, Trail.open(layout.manifest("dm")), layout.feature_net("classifier"), stats,
               torch.device("cpu"), 64)
    # outputs get the usual file mode, not mkstemp's 0600
    import os
    import stat

    mode = stat.S_IMODE(os.stat(layout.baselines("dm")).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
