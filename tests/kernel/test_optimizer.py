"""The search's optimizer and the map from its vectors to coefficients within the bounds."""

import numpy as np
import pytest

from lcsc.kernel.config import validate
from lcsc.kernel.errors import ConfigError
from lcsc.kernel.optimizer import make_optimizer, make_parametrization, to_coefficients

SEARCH = validate({})["search"]  # sum_to_one within [-1, 2], CMA, seed 1000


def test_the_sum_to_one_map_is_the_projection_onto_the_bounded_simplex():
    rng = np.random.default_rng(0)
    for k, scale in ((2, 0.1), (5, 3.0), (26, 100.0), (64, 1e6)):
        for _ in range(50):
            z = rng.normal(0, scale, k)
            c = to_coefficients(z, "sum_to_one", (-1.0, 2.0))
            assert c.min() >= -1.0 and c.max() <= 2.0 and c.sum() == pytest.approx(1.0, abs=1e-9)
            # the projection is clip(z + t) for one shift t; find t by bisection and compare
            a, b = -1e9, 1e9
            for _ in range(200):
                a, b = ((a + b) / 2, b) if np.clip(z + (a + b) / 2, -1, 2).sum() < 1 else (a, (a + b) / 2)
            np.testing.assert_allclose(c, np.clip(z + a, -1.0, 2.0), atol=1e-7)
    # inside the bounds it is the plain shift onto sum 1, bit for bit
    z = np.array([0.1, 0.2, 0.3])
    assert np.array_equal(to_coefficients(z, "sum_to_one", (-1.0, 2.0)), z + (1.0 - z.sum()) / 3)


def test_free_coefficients_are_clipped_to_the_bounds_only():
    z = np.array([-3.0, 0.5, 2.5, 1.0])
    np.testing.assert_array_equal(to_coefficients(z, "free", (-1.0, 2.0)), [-1.0, 0.5, 2.0, 1.0])
    inside = np.array([0.1, -0.4, 1.9])
    assert np.array_equal(to_coefficients(inside, "free", (-1.0, 2.0)), inside)  # no shift onto sum 1


def test_sum_to_one_meets_the_bounds_where_a_plain_shift_would_leave_them():
    # the plain shift would give [-1.5, 0.5, 2.0]; the projection clips the first and shifts the rest
    c = to_coefficients(np.array([-1.0, 1.0, 2.5]), "sum_to_one", (-1.0, 2.0))
    np.testing.assert_allclose(c, [-1.0, 0.25, 1.75], atol=1e-12)
    assert c.sum() == pytest.approx(1.0, abs=1e-12)
    # bounds no coefficients can sum to 1 within: an error naming them, not a vector outside them
    with pytest.raises(ConfigError, match=r"search.bounds \[0.5, 2.0\]: 3 coefficients within them cannot sum to 1"):
        to_coefficients(np.array([0.0, 0.0, 0.0]), "sum_to_one", (0.5, 2.0))


def test_the_optimizer_starts_inside_the_bounds_and_is_seeded():
    init = np.array([0.0, 0.0, 0.5, 0.5])

    def first_asks(scfg, n=4):
        opt = make_optimizer(init, scfg)
        return [np.asarray(opt.ask().value) for _ in range(n)]

    a, b = first_asks(SEARCH), first_asks(SEARCH)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # a resumed search asks the same candidates again
    other = first_asks(dict(SEARCH, seed=SEARCH["seed"] + 1))
    assert not all(np.array_equal(x, y) for x, y in zip(a, other))
    assert make_optimizer(init, SEARCH).budget == SEARCH["budget"]
    param = make_parametrization(init, SEARCH)
    np.testing.assert_array_equal(param.value, init)
    with pytest.raises(
        ConfigError, match=r"search.bounds \[0.0, 0.4\] exclude the starting point \[0.0, 0.0, 0.5, 0.5\]"
    ):
        make_parametrization(init, dict(SEARCH, bounds=[0.0, 0.4]))
    with pytest.raises(ConfigError, match="search.optimizer: 'Foo' is not a nevergrad optimizer; try CMA"):
        make_optimizer(init, dict(SEARCH, optimizer="Foo"))
