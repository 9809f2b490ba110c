"""Stage baselines: every profile and the greedy soup, scored with the search's fitness."""

import json

import numpy as np
import pytest

from helpers import BASELINES
from lcsc.cli import main
from lcsc.kernel.paths import Layout


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
    # every checkpoint is tried once, and the soup holds exactly those added
    assert len(soup["steps"]) == len(soup["coefficients"])
    assert sorted(s["added"] for s in soup["steps"] if "added" in s) == members
    # the soup is never worse than its best single checkpoint (the first step)
    assert soup["fitness"] <= soup["steps"][0]["fitness"]
