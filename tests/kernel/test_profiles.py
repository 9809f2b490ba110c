"""Baseline profiles as coefficient vectors, and the greedy soup."""

import numpy as np
import pytest

from lcsc.kernel import profiles


def test_last_and_uniform():
    np.testing.assert_array_equal(profiles.last(4), [0, 0, 0, 1])
    np.testing.assert_allclose(profiles.uniform(4), 0.25)


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.99])
def test_ema_profile_equals_an_ema_over_every_step(decay):
    """With a checkpoint at every step, the profile equals an EMA run over the iterates
    (renormalised, since the initial weights are not in the trail)."""
    steps = list(range(1, 31))
    rng = np.random.default_rng(0)
    iterates = rng.normal(size=(31, 5))  # iterate 0 is the initialisation
    ema = iterates[0].copy()
    for s in steps:
        ema = decay * ema + (1 - decay) * iterates[s]
    init_weight = decay ** len(steps)
    expected = (ema - init_weight * iterates[0]) / (1 - init_weight)
    c = profiles.ema_profile(steps, decay)
    assert c.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(c @ iterates[1:], expected, rtol=1e-10)


def test_sparse_ema_profile_lumps_intervals():
    c = profiles.ema_profile([10, 20, 30], 0.9)
    assert c.sum() == pytest.approx(1.0)
    assert c[2] > c[1] > c[0] > 0
    np.testing.assert_allclose(c[2] / c[1], (1 - 0.9**10) / (0.9**10 - 0.9**20))


@pytest.mark.parametrize("sigma_rel, gamma", [(0.05, 16.97), (0.10, 6.94)])
def test_power_gamma_matches_edm2(sigma_rel, gamma):
    assert profiles.power_gamma(sigma_rel) == pytest.approx(gamma, abs=0.005)


@pytest.mark.parametrize("sigma_rel", [0.05, 0.1, 0.2])
def test_power_profile_has_the_asked_relative_width(sigma_rel):
    """Saved every step, the profile weighs iterate t by t^gamma; its std in units of the
    training length is sigma_rel (EDM2's definition)."""
    steps = list(range(1, 20001))
    c = profiles.power_profile(steps, sigma_rel)
    assert c.sum() == pytest.approx(1.0)
    t = np.asarray(steps) / steps[-1]
    mean = c @ t
    assert np.sqrt(c @ (t - mean) ** 2) == pytest.approx(sigma_rel, rel=1e-3)
    gamma = profiles.power_gamma(sigma_rel)
    np.testing.assert_allclose(c[1:] / c[:-1], (t[1:] / t[:-1]) ** gamma, rtol=1e-9)


def test_lawa_and_named_profiles_sum_to_one():
    np.testing.assert_allclose(profiles.lawa(5, 2), [0, 0, 0, 0.5, 0.5])
    with pytest.raises(ValueError, match="baselines.lawa_last"):
        profiles.lawa(3, 4)
    bcfg = {"lawa_last": [2], "ema_decays": [0.9], "power_sigma_rels": [0.05, 0.1], "greedy_soup": True}
    named = profiles.trail_profiles([10, 20, 30, 40], bcfg)
    assert list(named) == ["last", "uniform", "lawa_2", "ema_0.9_profile", "power_0.05", "power_0.1"]
    for name, c in named.items():
        assert c.sum() == pytest.approx(1.0), name
        assert (c >= 0).all(), name
    assert profiles.profile_names(bcfg) == list(named)[1:]


def test_greedy_soup_skips_a_harmful_checkpoint_and_still_adds_a_later_helpful_one():
    from lcsc.kernel.profiles import greedy_soup

    target = np.array([0.0, 0.3, 0.1, 0.5, 0.2])  # checkpoint i "is" the scalar target[i]
    # fitness of a combination: distance of its mean to 0.15, plus its share on checkpoint 3
    calls = []

    def score(c):
        calls.append(c.copy())
        return abs(c @ target - 0.15) + c[3]

    c, fitness, log = greedy_soup(5, score)
    # own scores: [0.15, 0.15, 0.05, 1.35, 0.05] -> order 2, 4, 0, 1, 3
    # {2}: 0.05; {2, 4}: mean 0.15 -> 0.0, added; {2, 4, 0}: mean 0.1 -> 0.05, skipped;
    # {2, 4, 1}: mean 0.2 -> 0.05, skipped; {2, 4, 3}: 0.1167 + 1/3, skipped
    assert [(next(iter(step)), step[next(iter(step))]) for step in log] == [
        ("added", 2),
        ("added", 4),
        ("skipped", 0),
        ("skipped", 1),
        ("skipped", 3),
    ]
    np.testing.assert_allclose(c, [0, 0, 0.5, 0, 0.5])
    assert fitness == pytest.approx(0.0, abs=1e-12) and len(calls) == 5 + 4

    # a harmful checkpoint early in the order does not end the soup: a later one is still added
    own = {0: 1.0, 1: 2.0, 2: 3.0}
    soups = {(0, 1): 5.0, (0, 2): 0.5}  # adding 1 hurts, adding 2 (tried after it) helps

    def score2(c):
        members = tuple(int(i) for i in np.flatnonzero(c))
        return own[members[0]] if len(members) == 1 else soups[members]

    c, fitness, log = greedy_soup(3, score2)
    assert [next(iter(step)) for step in log] == ["added", "skipped", "added"]
    np.testing.assert_allclose(c, [0.5, 0, 0.5])
    assert fitness == 0.5
