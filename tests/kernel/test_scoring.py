"""Scoring: weights -> samples -> FID, the same for the same coefficients (whole or streamed), the
noise it draws, non-finite samples, the fitness settings and keys, and what Scorer.open refuses."""

import hashlib

import numpy as np
import pytest
import torch

from helpers import trained_paths
from lcsc.kernel.errors import ConfigError
from lcsc.kernel.io import sha256
from lcsc.kernel.scoring import (
    WORST_FID,
    Evaluator,
    Objective,
    Scorer,
    fitness_key,
    fitness_settings,
    make_noise,
    simplex_distance,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def scorer(trained):
    """A Scorer over the session's trail (the tests here leave its weights as they find them)."""
    cfg, _ = trained
    return Scorer.open(cfg, *trained_paths(cfg), CPU, 64)


def test_same_coefficients_give_the_same_fid_bit_for_bit(trained):
    cfg, _ = trained
    manifest, features, stats = trained_paths(cfg)
    scorer = Scorer.open(cfg, manifest, features, stats, torch.device("cpu"), 64)
    noise = make_noise(64, scorer.shape, 1000, "cpu")
    c = np.array([0.1, 0.2, 0.3, 0.4])
    first = scorer.score(c, 2, noise)[0]
    scorer.score(np.array([0.0, 0.0, 0.0, 1.0]), 2, noise)  # another candidate in between
    assert scorer.score(c, 2, noise)[0] == first
    chunked = Scorer.open(cfg, manifest, features, stats, torch.device("cpu"), 64, chunk_mb=0.05)
    assert "streamed to cpu in chunks of 0.05 MB" in chunked.trail_placement()
    assert chunked.score(c, 2, noise)[0] == first


def test_noise_with_steps_extends_the_single_step_noise():
    one = make_noise(7, (1, 4, 4), 3, "cpu")
    two = make_noise(7, (1, 4, 4), 3, "cpu", steps=2)
    three = make_noise(7, (1, 4, 4), 3, "cpu", steps=3)
    assert torch.equal(two[:, 0], one) and torch.equal(three[:, :2], two)
    assert not torch.allclose(two[:, 1], one)


def test_non_finite_samples_or_features_score_the_worst_fid(scorer, monkeypatch):
    noise = scorer.make_noise(32, 5)
    flat = scorer.weights_of([0.0, 0.0, 0.0, 1.0])
    fid, images = scorer.fid(flat, 2, noise)
    assert images.shape == (32, 1, 12, 12) and 0 < fid < WORST_FID
    assert fid == scorer.reference.fid(scorer.features(images, scorer.batch_size))
    real_sample = scorer.sampler.sample

    def one_inf(net, x, nfe):
        out = real_sample(net, x, nfe)
        out[0, 0, 3, 3] = float("inf")
        return out

    monkeypatch.setattr(scorer.sampler, "sample", one_inf)
    with pytest.warns(UserWarning, match="non-finite samples at NFE 2: scored as FID 1e"):
        worst, bad = scorer.fid(flat, 2, noise)
    assert worst == WORST_FID and not torch.isfinite(bad).all()
    monkeypatch.undo()
    monkeypatch.setattr(scorer, "features", lambda images, batch_size: torch.full((len(images), 16), float("nan")))
    with pytest.warns(UserWarning, match="non-finite features at NFE 1"):
        assert scorer.fid(flat, 1, noise)[0] == WORST_FID
    monkeypatch.undo()
    assert scorer.fid(flat, 2, noise)[0] == fid  # nothing of it stayed behind


def test_fitness_settings_hold_everything_a_fitness_depends_on(trained, scorer):
    cfg, _ = trained
    _, features, stats = trained_paths(cfg)
    settings = fitness_settings(cfg["search"], scorer)
    d = cfg["diffusion"]
    assert settings == {
        "nfe": 2,
        "samples": 64,
        "seed": 1000,
        "feature_hash": sha256(features)[:16],
        "stats_hash": sha256(stats)[:16],
        "sampler": d["sampler"],
        "clip_denoised": d["clip_denoised"],
        "schedule": d["schedule"],
        "timesteps": d["timesteps"],
        "batch_size": 64,
    }
    other = fitness_settings(dict(cfg["search"], nfe=1, budget=99, optimizer="DE"), scorer)
    assert other == dict(settings, nfe=1)  # the optimizer's settings are not among them


def test_fitness_keys_are_the_coefficients_bytes_under_the_settings():
    c = [0.25, 0.25, 0.25, 0.25]
    key = fitness_key(c, "digest")
    # the journal's keys: sha256 of the settings digest then the float64 little-endian bytes (kept stable,
    # or every saved search would be scored again)
    expected = hashlib.sha256(b"digest" + np.array(c, dtype="<f8").tobytes()).hexdigest()[:32]
    assert key == expected and len(key) == 32 and int(key, 16) >= 0
    assert fitness_key(np.full(4, 0.25), "digest") == fitness_key(np.full(4, 0.25, dtype=np.float32), "digest") == key
    assert fitness_key(np.full(4, 0.25, dtype=">f8"), "digest") == key  # the value counts, not its byte order
    nudged = np.array(c)
    nudged[2] = np.nextafter(0.25, 1.0)
    assert len({key, fitness_key(nudged, "digest"), fitness_key(c, "digest2"), fitness_key([*c, 0.0], "digest")}) == 4


def test_the_evaluator_scores_each_candidate_once_like_the_scorer(trained, scorer):
    cfg, _ = trained
    second = Scorer.open(cfg, *trained_paths(cfg), CPU, 64)
    cs = [np.array(c) for c in ([0.0, 0.0, 0.0, 1.0], [0.25] * 4, [0.0, 0.0, 0.5, 0.5])]
    noise = scorer.make_noise(64, 7)
    direct = [scorer.score(c, 2, noise)[0] for c in cs]
    for scorers in ([scorer], [scorer, second]):
        seen = []
        Evaluator(scorers).evaluate(
            cs, [0, 1, 2], Objective({2: 1.0}), 64, 7, lambda i, fid, fids, seconds: seen.append((i, fid))
        )
        assert sorted(seen) == list(enumerate(direct)), len(scorers)
    assert len(set(direct)) == 3


@pytest.mark.parametrize("mean", ["arithmetic", "log"])
def test_a_multi_nfe_fitness_is_the_weighted_mean_of_single_nfe_fids_computed_one_by_one(scorer, mean):
    c = np.array([0.1, 0.2, 0.3, 0.4])
    objective = Objective({1: 0.5, 2: 0.3, 3: 0.2}, mean)
    evaluator = Evaluator([scorer])
    noises = evaluator.noises(scorer, objective, 48, 11)
    fitness, fids = scorer.measure(c, objective, noises)
    one_by_one = {}
    for n in (1, 2, 3):  # each NFE alone, on the noise of its own seed, through the plain one-NFE path
        seed = objective.noise_seed(11, n)
        one_by_one[n] = scorer.score(c, n, scorer.make_noise(48, seed))[0]
    assert fids == pytest.approx(one_by_one, rel=1e-12)
    if mean == "arithmetic":
        expected = 0.5 * one_by_one[1] + 0.3 * one_by_one[2] + 0.2 * one_by_one[3]
    else:
        expected = one_by_one[1] ** 0.5 * one_by_one[2] ** 0.3 * one_by_one[3] ** 0.2
    assert fitness == pytest.approx(expected, rel=1e-12)
    # each NFE has noise of its own; a one-NFE fitness keeps the seed itself (and is the FID)
    seeds = {objective.noise_seed(11, n) for n in (1, 2, 3)}
    assert len(seeds) == 3 and 11 not in seeds and Objective({2: 1.0}).noise_seed(11, 2) == 11
    single = scorer.measure(c, Objective({2: 1.0}, mean), {2: scorer.make_noise(48, 11)})
    assert single == (scorer.score(c, 2, scorer.make_noise(48, 11))[0], {2: single[0]})


def test_penalties_and_the_norm_bound(scorer, monkeypatch):
    assert simplex_distance([0.2, 0.3, 0.5]) == pytest.approx(0.0, abs=1e-15)
    assert simplex_distance([1.0, 1.0]) == pytest.approx(np.sqrt(0.5))  # projects to (0.5, 0.5)
    assert simplex_distance([2.0, -1.0]) == pytest.approx(np.sqrt(2.0))  # projects to (1, 0)
    c = np.array([1.5, -0.5, 0.0, 0.0])
    assert Objective({2: 1.0}, penalty="l2", penalty_weight=2.0).penalty_of(c) == pytest.approx(2 * np.sqrt(2.5))
    assert Objective({2: 1.0}, penalty="simplex", penalty_weight=3.0).penalty_of(c) == pytest.approx(3 * np.sqrt(0.5))
    noises = {2: scorer.make_noise(32, 5)}
    plain, _ = scorer.measure(c, Objective({2: 1.0}), noises)
    penalised, fids = scorer.measure(c, Objective({2: 1.0}, penalty="l2", penalty_weight=2.0), noises)
    assert penalised == pytest.approx(plain + 2 * np.sqrt(2.5)) and fids == {2: plain}
    bounded = Objective({2: 1.0}, max_norm=1.2)
    monkeypatch.setattr(Scorer, "fid", lambda *a: pytest.fail("a candidate over the norm bound was sampled"))
    assert scorer.measure(c, bounded, noises) == (WORST_FID, {})
    assert bounded.settings() == {"nfe": 2, "max_norm": 1.2}


def test_trail_placement_says_where_the_stacked_trail_lives(scorer):
    k, p = len(scorer.trail), scorer.loader.numel
    assert scorer.trail_bytes == k * p * 4
    assert scorer.trail_placement() == f"{k} x {p} float32 = {k * p * 4 / 2**20:.1f} MB on cpu"
    assert tuple(scorer.W.shape) == (4, p)


def test_scorer_open_refuses_another_models_trail_and_a_config_that_disagrees(trained):
    cfg, _ = trained
    manifest, features, stats = trained_paths(cfg)
    with pytest.raises(ConfigError) as err:
        Scorer.open(cfg, manifest, features, stats, CPU, 64, model="cm_cd")
    assert str(err.value) == f"--model cm_cd: {manifest} holds a dm trail; pass --model dm (or a truncated name of it)"
    assert Scorer.open(cfg, manifest, features, stats, CPU, 64, model="dm_first50").trail.steps == [10, 20, 30, 40]
    bigger = dict(cfg, data=dict(cfg["data"], image_size=16))
    with pytest.raises(
        ConfigError,
        match=r"data.image_size: 16 in the config, but the trail .*manifest.json was "
        r"trained with 12",
    ):
        Scorer.open(bigger, manifest, features, stats, CPU, 64)
    cosine = dict(cfg, diffusion=dict(cfg["diffusion"], schedule="cosine"))
    with pytest.raises(ConfigError, match="diffusion.schedule: 'cosine' in the config, but the trail"):
        Scorer.open(cosine, manifest, features, stats, CPU, 64)
    # a sampler setting is the config's to choose: it samples the same trail another way
    dpm = dict(cfg, diffusion=dict(cfg["diffusion"], sampler="dpmpp2m"))
    assert Scorer.open(dpm, manifest, features, stats, CPU, 64).sampler.sampler == "dpmpp2m"
