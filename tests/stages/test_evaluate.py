"""Stage evaluate: every variant over the NFE sweep, deterministic, a profile from the baselines
file equal to its closed form, and an unknown variant named."""

import csv
import json
import re

import numpy as np
import pytest

from lcsc.cli import main
from lcsc.kernel.paths import Layout

from helpers import VARIANTS


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
