"""Stage evaluate: every variant over the NFE sweep, deterministic, a profile from the baselines
file equal to its closed form, and an unknown variant named."""

import csv
import json
import re

import numpy as np
import pytest

from helpers import VARIANTS
from lcsc.cli import main
from lcsc.kernel.paths import Layout


def _with_baselines_and_search(cfg: dict, cfg_file) -> Layout:
    """The session's trail with its baselines file and search, whichever test file ran first (the
    greedy soup is a variant only once the baselines stage has written its file)."""
    layout = Layout.of(cfg)
    if not layout.baselines("dm").exists():
        assert main(["baselines", "--config", str(cfg_file)]) == 0
    if not layout.coefficients("dm", 2).exists():
        assert main(["search", "--config", str(cfg_file)]) == 0
    return layout


@pytest.mark.slow
def test_evaluate_every_variant_and_tabulate(trained):
    cfg, cfg_file = trained
    layout = _with_baselines_and_search(cfg, cfg_file)
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
    assert (
        main(
            [
                "evaluate",
                "--config",
                str(cfg_file),
                "--variant",
                "power_0.1",
                "--out",
                str(layout.root / "p.json"),
                "--grid",
                str(layout.root / "p.png"),
            ]
        )
        == 0
    )
    with_file = json.loads((layout.root / "p.json").read_text())
    assert with_file["fid"] == json.loads(layout.eval_json("dm", "power_0.1").read_text())["fid"]
    # evaluate is deterministic: the same variant twice gives the same FIDs bit for bit
    assert main(["evaluate", "--config", str(cfg_file), "--variant", "last"]) == 0
    assert json.loads(layout.eval_json("dm", "last").read_text())["fid"] == last["fid"]
    assert main(["tabulate", "--config", str(cfg_file)]) == 0
    report = layout.report_dir()
    for name in (
        "summary.md",
        "summary.csv",
        "fid_vs_nfe.png",
        "coefficients.png",
        "search_curve.png",
        "samples_dm_lcsc.png",
    ):
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
    # what the samples were drawn with, as evaluate recorded it
    assert lcsc_eval["sampler"] == {"sampler": "ddim", "clip_denoised": True, "schedule": "linear", "timesteps": 1000}
    assert "Samples of every variant: sampler: ddim." in md
    # the data-vs-data floor: two disjoint halves of the 1797 digits (fewer than the evaluation's samples)
    floor = lcsc_eval["floor"]
    assert floor["n"] == min(cfg["evaluate"]["samples"], 1797 // 2) and floor["of"] == 1797 and floor["fid"] > 0
    assert all(json.loads(layout.eval_json("dm", v).read_text())["floor"] == floor for v in variants)  # once, cached
    assert f"score FID {floor['fid']:.2f} against each other" in md
    # last, the best EMA, the best baseline and lcsc from the same noise, in one picture the report shows
    assert (report / "side_by_side_dm.png").stat().st_size > 1000 and "![side_by_side_dm](side_by_side_dm.png)" in md
    from PIL import Image

    real = layout.real_grid("digits12", "train")  # reference_stats' grid of real digits, the picture's first panel
    with Image.open(real) as im:
        assert im.size == ((8 * 13 + 1) * 4,) * 2  # 64 digits of 12 px, 8 a row, a 1 px border, 4x
    assert "Real images beside the same noise" in md


def test_unknown_variant_and_bad_config_fail_clearly(trained, capsys):
    cfg, cfg_file = trained
    _with_baselines_and_search(cfg, cfg_file)
    assert main(["evaluate", "--config", str(cfg_file), "--variant", "best"]) == 2  # a message, no traceback
    assert re.search(r"unknown variant 'best'.*greedy_soup", capsys.readouterr().err)
    assert main(["search", "--config", str(cfg_file), "--set", "search.nfe=9"]) == 2
    assert "search.nfe: 9 is not in evaluate.nfe" in capsys.readouterr().err


@pytest.mark.slow
def test_repeats_give_every_run_and_their_mean_and_spread(trained, tmp_path):
    """search.repeats x evaluate.repeats: each run is the evaluation one seed and one search would
    give alone; the result holds their mean and sample standard deviation."""
    cfg, cfg_file = trained
    layout = Layout.of(cfg)
    if not layout.coefficients("dm", 2).exists():
        assert main(["search", "--config", str(cfg_file)]) == 0
    more = ["--config", str(cfg_file), "--set", "search.repeats=2", "--set", "evaluate.repeats=2"]
    assert main(["search", *more, "--repeat", "1"]) == 0
    second = json.loads(layout.coefficients("dm", 2, 1).read_text())
    first = json.loads(layout.coefficients("dm", 2).read_text())
    assert second["seed"] != first["seed"] == cfg["search"]["seed"]  # its own noise and optimizer seed
    out = tmp_path / "lcsc.json"
    assert main(["evaluate", *more, "--variant", "lcsc", "--out", str(out), "--grid", str(tmp_path / "g.png")]) == 0
    res = json.loads(out.read_text())
    assert res["repeats"] == {"searches": 2, "seeds": 2, "n": 4}
    assert [(r["search"], r["seed"]) for r in res["runs"]][:2] == [
        (0, cfg["evaluate"]["seed"]),
        (0, res["runs"][1]["seed"]),
    ]
    assert len({r["seed"] for r in res["runs"]}) == 2 and res["search_coefficients"][1] == second["coefficients"]
    for n in ("1", "2"):
        values = [r["fid"][n] for r in res["runs"]]
        assert res["fid"][n] == pytest.approx(np.mean(values)) and res["fid_std"][n] == pytest.approx(
            np.std(values, ddof=1)
        )
        assert len(set(values)) == 4  # other seeds, other searches: other numbers
        for key in ("kid", "precision", "recall"):
            assert res[key][n] == pytest.approx(np.mean([r[key][n] for r in res["runs"]]))
    # the first run is the plain evaluation (first search, evaluate.seed), bit for bit
    assert main(["evaluate", "--config", str(cfg_file), "--variant", "lcsc"]) == 0
    plain = json.loads(layout.eval_json("dm", "lcsc").read_text())
    assert res["runs"][0]["fid"] == plain["fid"] and "fid_std" not in plain and plain["repeats"]["n"] == 1
