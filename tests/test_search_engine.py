"""The search engine: in-place combination, the journal, the evaluation cache, several devices,
and resuming after SIGKILL at several points to the same history and best as an uninterrupted run."""

import csv
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, tiny_config
from lcsc import search
from lcsc.evaluate import Scorer, make_noise
from lcsc.nets import build_unet
from lcsc.paths import Layout, dataset_name
from lcsc.search import Journal, run_search
from lcsc.trail import ChunkedTrail, FlatLoader, Trail, combine


def _paths(cfg):
    layout = Layout.of(cfg)
    return (layout.manifest("dm"), layout.feature_net("classifier"),
            layout.stats(dataset_name(cfg["data"]), "train", "classifier"))


def test_candidates_are_written_into_one_model_in_place(trained):
    cfg, _ = trained
    manifest, _, _ = _paths(cfg)
    trail = Trail.open(manifest)
    model = build_unet(trail.model_config, 1)
    loader = FlatLoader(model)
    # every parameter is a view of the loader's one flat vector
    base, end = loader.flat.data_ptr(), loader.flat.data_ptr() + loader.flat.numel() * 4
    assert all(base <= p.data_ptr() < end for p in model.parameters())
    W = trail.stack(loader.shapes)
    c = np.array([0.7, -0.4, 0.2, 0.5])
    loader.combine_into(W, c)
    flat_params = torch.cat([v.reshape(-1) for v in model.state_dict().values()])
    assert torch.equal(flat_params, combine(W, c))
    with pytest.raises(ValueError, match="parameters per checkpoint"):
        loader.combine_into(W[:, :-1], c)
    model.double()  # parameters replaced: writing into the old vector would silently do nothing
    with pytest.raises(RuntimeError, match="parameters were replaced"):
        loader.combine_into(W, c)
    # the trail streamed in small chunks gives the same weights bit for bit
    chunked = ChunkedTrail(W, chunk_mb=0.01, device="cpu")
    assert len(chunked.blocks) > 3
    assert torch.equal(chunked.combine(c), combine(W, c))
    with pytest.raises(ValueError, match="3 coefficients for a trail of 4"):
        chunked.combine([1, 0, 0])


def test_same_coefficients_give_the_same_fid_bit_for_bit(trained):
    cfg, _ = trained
    manifest, features, stats = _paths(cfg)
    scorer = Scorer(cfg, Trail.open(manifest), features, stats, torch.device("cpu"), 64)
    noise = make_noise(64, scorer.shape, 1000, "cpu")
    c = np.array([0.1, 0.2, 0.3, 0.4])
    first = scorer.score(c, 2, noise)[0]
    scorer.score(np.array([0.0, 0.0, 0.0, 1.0]), 2, noise)  # another candidate in between
    assert scorer.score(c, 2, noise)[0] == first
    chunked = Scorer(cfg, Trail.open(manifest), features, stats, torch.device("cpu"), 64, chunk_mb=0.05)
    assert "streamed to cpu in chunks of 0.05 MB" in chunked.trail_placement()
    assert chunked.score(c, 2, noise)[0] == first


def test_journal_keeps_saved_records_and_drops_a_torn_one(tmp_path):
    path = tmp_path / "state" / "journal.jsonl"
    j = Journal(path)
    j.start()
    j.append({"type": "eval", "key": "a", "fitness": 0.1 + 0.2, "seconds": 1.0})
    j.close()
    with open(path, "ab") as fh:  # a record cut short by a kill
        fh.write(b'{"type":"eval","key":"b","fitn')
    peek = Journal(path, readonly=True)  # a read-only look keeps the torn bytes
    assert peek.dropped and path.read_bytes().endswith(b'"fitn')
    again = Journal(path)
    assert again.dropped == len(b'{"type":"eval","key":"b","fitn')
    assert [r.get("key") for r in again.records] == [None, "a"]
    assert again.records[1]["fitness"] == 0.1 + 0.2  # floats round-trip exactly
    again.append({"type": "eval", "key": "c", "fitness": 2.0, "seconds": 0.0})
    again.close()
    assert [r.get("key") for r in Journal(path).records] == [None, "a", "c"]
    # one writer at a time: a second search on the same journal is refused while the first runs
    first = Journal(path)
    with pytest.raises(RuntimeError, match="another search is running on this journal"):
        Journal(path)
    assert len(Journal(path, readonly=True).records) == 3  # reading is allowed and changes nothing
    first.close()
    # a bad line before the last one is never dropped silently
    good = path.read_bytes()
    path.write_bytes(good.replace(b'"key":"a"', b'"key":"a'))
    with pytest.raises(ValueError, match="line 2 of 3 is not a complete JSON record"):
        Journal(path)
    assert path.read_bytes() == good.replace(b'"key":"a"', b'"key":"a')  # and the file is left as it was
    path.write_text('{"something": "else"}\n')
    with pytest.raises(ValueError, match="not an lcsc search journal"):
        Journal(path)


def _counting(monkeypatch):
    """Count Scorer.score calls per (coefficients, noise seed)."""
    seen = []
    real = Scorer.score

    def score(self, coefficients, nfe, noise):
        seen.append((np.asarray(coefficients, dtype=np.float64).tobytes(), len(noise), float(noise[0, 0, 0, 0])))
        return real(self, coefficients, nfe, noise)

    monkeypatch.setattr(Scorer, "score", score)
    return seen


def _history(path):
    with open(path) as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def test_no_candidate_is_evaluated_twice(trained, tmp_path, monkeypatch):
    cfg, _ = trained
    # LAWA over all 4 checkpoints is the uniform profile: the same coefficients, scored once
    cfg = tiny_config(tmp_path, baselines={"lawa_last": [4], "ema_decays": [0.9], "power_sigma_rels": [0.1],
                                           "greedy_soup": False},
                      search={"budget": 12, "num_workers": 4, "samples": 64, "nfe": 2, "batch_size": 64,
                              "rescore_top": 3, "rescore_samples": 128})
    seen = _counting(monkeypatch)
    first = run_search(cfg, *_paths(trained[0]), tmp_path / "s", torch.device("cpu"))
    assert len(seen) == len(set(seen)), "a candidate was scored twice"
    rows = _history(tmp_path / "s" / "history.csv")
    starts = {r["name"]: r for r in rows if r["phase"] == "start"}
    assert starts["lawa_4"]["fitness"] == starts["uniform"]["fitness"]
    assert first["distinct_evaluations"] == len(seen) < len(rows)
    # a rerun over the same journal scores nothing and writes the same results
    seen.clear()
    second = run_search(cfg, *_paths(trained[0]), tmp_path / "s", torch.device("cpu"))
    assert seen == []
    assert second == first and _history(tmp_path / "s" / "history.csv") == rows
    # another optimizer setting reuses every fitness measured under the same fitness settings
    other = dict(cfg, search=dict(cfg["search"], budget=16))
    run_search(other, *_paths(trained[0]), tmp_path / "s", torch.device("cpu"))
    assert 0 < len(seen) <= 4 + 3  # CMA's first 12 asks repeat; the last batch and its re-scores are new


def test_two_devices_score_like_one(trained, tmp_path, monkeypatch):
    cfg, _ = trained
    one = run_search(cfg, *_paths(cfg), tmp_path / "one", torch.device("cpu"))
    two_cfg = dict(cfg, search=dict(cfg["search"], devices=["cpu", "cpu"]))
    per_scorer = {}
    real = Scorer.score

    def score(self, coefficients, nfe, noise):
        per_scorer[id(self)] = per_scorer.get(id(self), 0) + 1
        return real(self, coefficients, nfe, noise)

    monkeypatch.setattr(Scorer, "score", score)
    two = run_search(two_cfg, *_paths(cfg), tmp_path / "two", torch.device("cpu"))
    assert len(per_scorer) == 2 and min(per_scorer.values()) >= 3, per_scorer  # both devices took a share
    a, b = _history(tmp_path / "one" / "history.csv"), _history(tmp_path / "two" / "history.csv")
    assert [r["phase"] for r in a] == [r["phase"] for r in b]
    for ra, rb in zip(a, b):
        assert float(ra["fitness"]) == pytest.approx(float(rb["fitness"]), rel=1e-9)
    assert one["coefficients"] == pytest.approx(two["coefficients"], rel=1e-9)


KILLER = textwrap.dedent("""
    import os, signal, sys
    from lcsc import search
    from lcsc.cli import main

    mode, at = sys.argv[1], int(sys.argv[2])
    append = search.Journal.append

    def killing_append(self, record):
        if len(self.records) + 1 == at:
            if mode == "torn":  # die half-way through writing the record
                line = (__import__("json").dumps(record) + "\\n").encode()
                self._fh.write(line[: len(line) // 2])
                self._fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        append(self, record)

    write_history = search._write_history

    def killing_history(path, rows):
        if mode == "history":  # die while the history file is half written
            from lcsc.io import atomic_path
            with atomic_path(path) as tmp:
                fh = open(tmp, "w")
                fh.write("evaluation,pha")
                fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        write_history(path, rows)

    search.Journal.append = killing_append
    search._write_history = killing_history
    sys.exit(main(sys.argv[3:]))
""")


def test_search_killed_at_several_points_resumes_to_the_same_result(trained, tmp_path):
    cfg, _ = trained
    cfg = tiny_config(tmp_path, search={"budget": 12, "num_workers": 4, "samples": 64, "nfe": 2, "batch_size": 64,
                                        "rescore_top": 3, "rescore_samples": 128})
    cfg_file = tmp_path / "search.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    manifest, features, stats = _paths(trained[0])
    baselines = Layout.of(trained[0]).baselines("dm")
    if not baselines.exists():
        from lcsc.cli import main
        assert main(["baselines", "--config", str(trained[1])]) == 0
    args = ["search", "--config", str(cfg_file), "--threads", "1", "--manifest", str(manifest),
            "--features", str(features), "--stats", str(stats), "--baselines", str(baselines)]
    whole = subprocess.run([sys.executable, "-c", KILLER, "none", "0", *args, "--out-dir", str(tmp_path / "whole")],
                           cwd=REPO, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed_dir = tmp_path / "killed"
    journal = killed_dir / "state" / "journal.jsonl"
    # records: 1 header; then per batch of 4: 4 asks, 4 evals; then 3 re-score evals (1 + 24 + 3)
    kills = [("kill", 3),    # while asking the first batch: asked candidates pending
             ("torn", 8),    # half-way through saving an evaluation
             ("kill", 15),   # between evaluations of the second batch
             ("kill", 27),   # during the re-scoring
             ("history", 0)]  # while writing history.csv, after every evaluation is saved
    lengths = []
    for mode, at in kills:
        proc = subprocess.run([sys.executable, "-c", KILLER, mode, str(at), *args, "--out-dir", str(killed_dir)],
                              cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == -9, f"{mode} at {at}: not killed\n{proc.stderr[-2000:]}"
        lengths.append(len(Journal(journal, readonly=True).records))
        if mode == "torn":  # the torn record stays on disk until the next run drops it
            assert not journal.read_bytes().endswith(b"\n")
        if mode == "history":
            assert list(killed_dir.glob(".history.csv.*.tmp"))  # the half-written temp file
    assert lengths == [2, 7, 14, 26, 28]  # each kill loses at most the record being written
    resumed = subprocess.run([sys.executable, "-m", "lcsc", *args, "--out-dir", str(killed_dir)], cwd=REPO,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "0 evaluations computed in this run" in resumed.stdout
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
    cfg = tiny_config(tmp_path, search={"budget": 8, "num_workers": 4, "samples": 64, "nfe": 2, "batch_size": 64,
                                        "rescore_top": 0, "sigma": 1e6, "bounds": [lo, hi],
                                        "parametrization": parametrization, "optimizer": "OnePlusOne"})
    result = run_search(cfg, *_paths(trained[0]), tmp_path / "s", torch.device("cpu"))
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


def test_the_sum_to_one_map_is_the_projection_onto_the_bounded_simplex():
    rng = np.random.default_rng(0)
    for k, scale in ((2, 0.1), (5, 3.0), (26, 100.0), (64, 1e6)):
        for _ in range(50):
            z = rng.normal(0, scale, k)
            c = search.to_coefficients(z, "sum_to_one", (-1.0, 2.0))
            assert c.min() >= -1.0 and c.max() <= 2.0 and c.sum() == pytest.approx(1.0, abs=1e-9)
            # the projection is clip(z + t) for one shift t; find t by bisection and compare
            a, b = -1e9, 1e9
            for _ in range(200):
                a, b = ((a + b) / 2, b) if np.clip(z + (a + b) / 2, -1, 2).sum() < 1 else (a, (a + b) / 2)
            np.testing.assert_allclose(c, np.clip(z + a, -1.0, 2.0), atol=1e-7)
    # inside the bounds it is the plain shift onto sum 1, bit for bit
    z = np.array([0.1, 0.2, 0.3])
    assert np.array_equal(search.to_coefficients(z, "sum_to_one", (-1.0, 2.0)), z + (1.0 - z.sum()) / 3)
