"""Stage search: its outputs, no candidate evaluated twice, several devices, resuming after SIGKILL
at several points to the same result, bounds under a huge sigma, non-finite samples, stale inputs."""

import csv
import json
import shutil
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, tiny_config
from helpers import BASELINES, trained_paths
from helpers import search_in as run_search
from lcsc.cli import main
from lcsc.kernel.errors import InputError
from lcsc.kernel.journal import Journal
from lcsc.kernel.paths import Layout, dataset_name
from lcsc.kernel.scoring import WORST_FID, Scorer, make_noise
from lcsc.kernel.tensors import load_tensors


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
    scorer = Scorer.open(
        cfg,
        layout.manifest("dm"),
        layout.feature_net("classifier"),
        layout.stats(dataset_name(cfg["data"]), "train", "classifier"),
        torch.device("cpu"),
        64,
    )
    noise = make_noise(cfg["search"]["samples"], scorer.shape, cfg["search"]["seed"], "cpu")
    again, _ = scorer.fid(scorer.weights_of(c), 2, noise)
    assert again == result["fitness"]
    # best.safetensors holds exactly that combination
    best = load_tensors(layout.best_weights("dm", 2))
    scorer.loader.load(scorer.weights_of(c))
    for key, value in scorer.model.state_dict().items():
        assert torch.equal(best[key], value)


@pytest.mark.slow
def test_a_search_over_several_nfes_records_each_fid_and_combines_them(trained, tmp_path):
    from lcsc.stages import baselines

    cfg, _ = trained
    cfg = tiny_config(
        tmp_path,
        search={
            "nfe": [2, 1],
            "nfe_weights": [3, 1],
            "fitness_mean": "arithmetic",
            "budget": 4,
            "num_workers": 2,
            "samples": 32,
            "batch_size": 64,
            "rescore_top": 2,
            "rescore_samples": 48,
        },
        baselines={"lawa_last": [], "ema_decays": [], "power_sigma_rels": [], "greedy_soup": True},
    )
    manifest, features, stats = trained_paths(trained[0])
    scored = baselines.run(
        cfg, baselines.Paths(manifest, features, stats, tmp_path / "b.json"), "dm", torch.device("cpu")
    )
    assert scored["nfe"] == [2, 1] and scored["nfe_weights"] == [0.75, 0.25]
    for name, p in scored["profiles"].items():
        assert p["fitness"] == pytest.approx(0.75 * p["fids"]["2"] + 0.25 * p["fids"]["1"], rel=1e-12), name
    result = run_search(
        cfg, manifest, features, stats, tmp_path / "s", torch.device("cpu"), baselines=tmp_path / "b.json"
    )
    rows = _history(tmp_path / "s" / "history.csv")
    assert [r["phase"] for r in rows] == ["start"] * 3 + ["search"] * 4 + ["rescore"] * 2
    for r in rows:  # every row: the FID at each NFE, and the fitness their weighted mean
        assert float(r["fitness"]) == pytest.approx(
            0.75 * float(r["fid_nfe2"]) + 0.25 * float(r["fid_nfe1"]), rel=1e-12
        )
    assert [float(r["fitness"]) for r in rows[:3]] == [p["fitness"] for p in scored["profiles"].values()]
    assert result["nfe"] == [2, 1] and result["fitness_mean"] == "arithmetic"
    assert result["fitness"] == pytest.approx(0.75 * result["fids"]["2"] + 0.25 * result["fids"]["1"], rel=1e-12)
    # a baselines file scored with other weights is refused by the search, naming the setting
    other = dict(cfg, search=dict(cfg["search"], nfe_weights=[1, 1]))
    with pytest.raises(
        InputError,
        match=r"b.json: scored with other fitness settings than this search "
        r"\(nfe_weights\)",
    ):
        run_search(
            other, manifest, features, stats, tmp_path / "s2", torch.device("cpu"), baselines=tmp_path / "b.json"
        )


def test_stale_inputs_are_refused_with_the_file_named(trained, tmp_path):
    cfg, cfg_file = trained
    layout = Layout.of(cfg)
    if not layout.baselines("dm").exists():
        assert main(["baselines", "--config", str(cfg_file)]) == 0
    from helpers import search_in as run_search
    from lcsc.kernel.errors import TrailError
    from lcsc.kernel.io import read_json, write_json

    stale = read_json(layout.baselines("dm"))
    stale["trail_sha256"][0] = "0" * 64
    write_json(tmp_path / "stale.json", stale)
    stats = layout.stats(dataset_name(cfg["data"]), "train", "classifier")
    with pytest.raises(TrailError, match="stale.json: computed from another checkpoint trail"):
        run_search(
            cfg,
            layout.manifest("dm"),
            layout.feature_net("classifier"),
            stats,
            tmp_path / "s",
            torch.device("cpu"),
            baselines=tmp_path / "stale.json",
        )
    other = dict(cfg, diffusion=dict(cfg["diffusion"], timesteps=500))
    with pytest.raises(
        ValueError, match=r"diffusion.timesteps: 500 in the config.*manifest.json was trained with 1000"
    ):
        Scorer.open(other, layout.manifest("dm"), layout.feature_net("classifier"), stats, torch.device("cpu"), 64)
    # outputs get the usual file mode, not mkstemp's 0600
    import os
    import stat

    mode = stat.S_IMODE(os.stat(layout.baselines("dm")).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


@pytest.mark.slow
def test_non_finite_samples_score_worst_and_the_search_goes_on(trained, tmp_path, monkeypatch):
    cfg, _ = trained
    layout = Layout.of(cfg)
    stats = layout.stats(dataset_name(cfg["data"]), "train", "classifier")
    scorer = Scorer.open(cfg, layout.manifest("dm"), layout.feature_net("classifier"), stats, torch.device("cpu"), 64)
    noise = torch.randn(32, *scorer.shape)
    flat = scorer.weights_of([0, 0, 0, 1]).clone()
    flat[::7] = float("nan")
    with pytest.warns(UserWarning, match="non-finite samples"):
        assert scorer.fid(flat, 2, noise)[0] == WORST_FID

    from helpers import search_in

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
        result = search_in(
            cfg, layout.manifest("dm"), layout.feature_net("classifier"), stats, tmp_path / "s", torch.device("cpu")
        )
    history = (tmp_path / "s" / "history.csv").read_text()
    assert f"{WORST_FID}" in history
    assert np.isfinite(result["fitness"]) and result["fitness"] < WORST_FID


def _counting(monkeypatch):
    """Count Scorer.measure calls per (coefficients, noise seed)."""
    seen = []
    real = Scorer.measure

    def measure(self, coefficients, objective, noises):
        noise = noises[objective.nfes[0]]
        first = float(noise.noise[0, 0, 0, 0])
        seen.append((np.asarray(coefficients, dtype=np.float64).tobytes(), len(noise), first))
        return real(self, coefficients, objective, noises)

    monkeypatch.setattr(Scorer, "measure", measure)
    return seen


def _history(path):
    with open(path) as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_no_candidate_is_evaluated_twice(trained, tmp_path, monkeypatch):
    cfg, _ = trained
    # LAWA over all 4 checkpoints is the uniform profile: the same coefficients, scored once
    cfg = tiny_config(
        tmp_path,
        baselines={"lawa_last": [4], "ema_decays": [0.9], "power_sigma_rels": [0.1], "greedy_soup": False},
        search={
            "budget": 12,
            "num_workers": 4,
            "samples": 64,
            "nfe": 2,
            "batch_size": 64,
            "rescore_top": 3,
            "rescore_samples": 128,
        },
    )
    seen = _counting(monkeypatch)
    first = run_search(cfg, *trained_paths(trained[0]), tmp_path / "s", torch.device("cpu"))
    assert len(seen) == len(set(seen)), "a candidate was scored twice"
    rows = _history(tmp_path / "s" / "history.csv")
    starts = {r["name"]: r for r in rows if r["phase"] == "start"}
    assert starts["lawa_4"]["fitness"] == starts["uniform"]["fitness"]
    assert first["distinct_evaluations"] == len(seen) < len(rows)
    # a rerun over the same journal scores nothing and writes the same results
    seen.clear()
    second = run_search(cfg, *trained_paths(trained[0]), tmp_path / "s", torch.device("cpu"))
    assert seen == []
    assert second == first and _history(tmp_path / "s" / "history.csv") == rows
    # another optimizer setting reuses every fitness measured under the same fitness settings
    other = dict(cfg, search=dict(cfg["search"], budget=16))
    run_search(other, *trained_paths(trained[0]), tmp_path / "s", torch.device("cpu"))
    assert 0 < len(seen) <= 4 + 3  # CMA's first 12 asks repeat; the last batch and its re-scores are new


@pytest.mark.slow
@pytest.mark.parametrize("chunk_mb", [None, 0.01])
def test_two_devices_score_like_one_bit_for_bit_from_one_copy_of_the_trail(trained, tmp_path, monkeypatch, chunk_mb):
    cfg, _ = trained
    one = run_search(cfg, *trained_paths(cfg), tmp_path / "one", torch.device("cpu"))
    two_cfg = dict(cfg, search=dict(cfg["search"], devices=["cpu", "cpu"], trail_chunk_mb=chunk_mb))
    per_scorer, trails = {}, set()
    real = Scorer.measure

    def measure(self, coefficients, objective, noises):
        per_scorer[id(self)] = per_scorer.get(id(self), 0) + 1
        W = self.W
        trails.add((W.blocks[0] if chunk_mb else W).data_ptr())
        return real(self, coefficients, objective, noises)

    monkeypatch.setattr(Scorer, "measure", measure)
    two = run_search(two_cfg, *trained_paths(cfg), tmp_path / "two", torch.device("cpu"))
    assert len(per_scorer) == 2 and min(per_scorer.values()) >= 3, per_scorer  # both devices took a share
    assert len(trails) == 1  # from the same memory: one stacked trail (or one set of host blocks)
    # the same candidates in the same order with the same fitness, to the last bit (chunked sums
    # round differently from one product: only the two-device runs are compared then)
    a, b = _history(tmp_path / "one" / "history.csv"), _history(tmp_path / "two" / "history.csv")
    if chunk_mb:
        one_chunked = dict(cfg, search=dict(cfg["search"], trail_chunk_mb=chunk_mb))
        one = run_search(one_chunked, *trained_paths(cfg), tmp_path / "one_chunked", torch.device("cpu"))
        a = _history(tmp_path / "one_chunked" / "history.csv")
    assert a == b
    assert one["coefficients"] == two["coefficients"] and one["fitness"] == two["fitness"]


KILLER = textwrap.dedent("""
    import os, signal, sys
    from lcsc.cli import main
    from lcsc.kernel.journal import Journal
    from lcsc.stages import search

    mode, at = sys.argv[1], int(sys.argv[2])
    append = Journal.append

    def killing_append(self, record):
        if len(self.records) + 1 == at:
            if mode == "torn":  # die half-way through writing the record
                line = (__import__("json").dumps(record) + "\\n").encode()
                self._fh.write(line[: len(line) // 2])
                self._fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        append(self, record)

    write_history = search.History.write_csv

    def killing_history(self, path):
        if mode == "history":  # die while the history file is half written
            from lcsc.kernel.io import atomic_path
            with atomic_path(path) as tmp:
                fh = open(tmp, "w")
                fh.write("evaluation,pha")
                fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        write_history(self, path)

    Journal.append = killing_append
    search.History.write_csv = killing_history
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.slow
def test_search_killed_at_several_points_resumes_to_the_same_result(trained, tmp_path):
    cfg, _ = trained
    cfg = tiny_config(
        tmp_path,
        search={
            "budget": 12,
            "num_workers": 4,
            "samples": 64,
            "nfe": 2,
            "batch_size": 64,
            "rescore_top": 3,
            "rescore_samples": 128,
        },
    )
    cfg_file = tmp_path / "search.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    manifest, features, stats = trained_paths(trained[0])
    baselines = Layout.of(trained[0]).baselines("dm")
    if not baselines.exists():
        from lcsc.cli import main

        assert main(["baselines", "--config", str(trained[1])]) == 0
    args = [
        "search",
        "--config",
        str(cfg_file),
        "--threads",
        "1",
        "--manifest",
        str(manifest),
        "--features",
        str(features),
        "--stats",
        str(stats),
        "--baselines",
        str(baselines),
    ]
    # the uninterrupted search, meanwhile (one thread each: the two cores run both)
    whole = subprocess.Popen(
        [sys.executable, "-c", KILLER, "none", "0", *args, "--out-dir", str(tmp_path / "whole")],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "whole.err", "w"),
    )
    killed_dir = tmp_path / "killed"
    journal = killed_dir / "state" / "journal.jsonl"
    # records: 1 header; then per batch of 4: 4 asks, 4 evals; then 3 re-score evals (1 + 24 + 3)
    kills = [
        ("kill", 3),  # while asking the first batch: asked candidates pending
        ("torn", 8),  # half-way through saving an evaluation
        ("kill", 15),  # between evaluations of the second batch
        ("kill", 27),  # during the re-scoring
        ("history", 0),
    ]  # while writing history.csv, after every evaluation is saved
    lengths = []
    for mode, at in kills:
        proc = subprocess.run(
            [sys.executable, "-c", KILLER, mode, str(at), *args, "--out-dir", str(killed_dir)],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == -9, f"{mode} at {at}: not killed\n{proc.stderr[-2000:]}"
        lengths.append(len(Journal(journal, readonly=True).records))
        if mode == "torn":  # the torn record stays on disk until the next run drops it
            assert not journal.read_bytes().endswith(b"\n")
        if mode == "history":
            assert list(killed_dir.glob(".history.csv.*.tmp"))  # the half-written temp file
    assert lengths == [2, 7, 14, 26, 28]  # each kill loses at most the record being written
    resumed = subprocess.run(
        [sys.executable, "-m", "lcsc", *args, "--out-dir", str(killed_dir)], cwd=REPO, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "0 evaluations computed in this run" in resumed.stdout
    assert whole.wait(timeout=300) == 0, (tmp_path / "whole.err").read_text()[-2000:]
    assert _history(killed_dir / "history.csv") == _history(tmp_path / "whole" / "history.csv")
    a = json.loads((killed_dir / "coefficients.json").read_text())
    b = json.loads((tmp_path / "whole" / "coefficients.json").read_text())
    assert a == b
    assert (killed_dir / "best.safetensors").read_bytes() == (tmp_path / "whole" / "best.safetensors").read_bytes()
    # every evaluation was saved once: no key twice in the journal
    keys = [r["key"] for r in Journal(journal, readonly=True).records if r["type"] == "eval"]
    assert len(keys) == len(set(keys)) == 15
    assert not list(killed_dir.glob(".*.tmp"))  # the temp file of the killed history write is gone


@pytest.mark.parametrize("parametrization", ["sum_to_one", "free"])
def test_a_huge_sigma_keeps_every_coefficient_within_the_bounds(trained, tmp_path, parametrization):
    """The optimizer proposes far outside the box; what is scored, recorded and kept stays inside it
    (sum_to_one: also on sum(c) = 1). rescore_top 0 keeps the run short."""
    cfg, _ = trained
    lo, hi = -0.5, 1.5
    cfg = tiny_config(
        tmp_path,
        search={
            "budget": 8,
            "num_workers": 4,
            "samples": 64,
            "nfe": 2,
            "batch_size": 64,
            "rescore_top": 0,
            "sigma": 1e6,
            "bounds": [lo, hi],
            "parametrization": parametrization,
            "optimizer": "OnePlusOne",
        },
    )
    result = run_search(cfg, *trained_paths(trained[0]), tmp_path / "s", torch.device("cpu"))
    rows = _history(tmp_path / "s" / "history.csv")
    coefficients = np.array([[float(v) for k, v in row.items() if k.startswith("c")] for row in rows])
    assert coefficients.shape == (len(rows), 4) and len(rows) > 8
    assert coefficients.min() >= lo and coefficients.max() <= hi
    assert np.array(result["coefficients"]).min() >= lo and np.array(result["coefficients"]).max() <= hi
    searched = coefficients[[r["phase"] == "search" for r in rows]]
    # the proposals really were far out: most searched rows have a coefficient on a bound
    assert (np.isclose(searched, lo) | np.isclose(searched, hi)).any(axis=1).mean() > 0.5
    if parametrization == "sum_to_one":
        np.testing.assert_allclose(coefficients.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.slow
def test_search_compile_runs_the_network_through_torch_compile_and_keeps_its_fitnesses_apart(
    trained, tmp_path, monkeypatch
):
    """The wiring of `search.compile`, without compiling (which takes tens of seconds on the CPU):
    torch.compile stands in as a recorder. bench/search_engine.py --compile measures the real one
    (its FIDs agree with the eager network's to 3e-7 relative)."""
    cfg, _ = trained
    eager = run_search(cfg, *trained_paths(cfg), tmp_path / "s", torch.device("cpu"))
    compiled, calls = [], []

    def fake_compile(fn):
        def forward(*args):
            calls.append(1)
            return fn(*args)

        compiled.append(fn)
        return forward

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")  # (compiling is faked: no g++ needed)
    on = dict(cfg, search=dict(cfg["search"], compile=True))
    again = run_search(on, *trained_paths(cfg), tmp_path / "s", torch.device("cpu"))  # the same folder
    assert len(compiled) == 1 and compiled[0].__name__ == "forward"  # the one scorer's U-Net forward
    # every candidate was sampled again through it: the eager run's journal is not reused
    rows = _history(tmp_path / "s" / "history.csv")
    assert len(calls) >= len(rows) * cfg["search"]["nfe"]
    assert again["coefficients"] == eager["coefficients"]  # (the stand-in computes what eager does)
