import numpy as np
import pytest

from lcsc import profiles


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
    np.testing.assert_allclose(c[2] / c[1], (1 - 0.9 ** 10) / (0.9 ** 10 - 0.9 ** 20))
