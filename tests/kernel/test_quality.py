"""Precision, recall and KID against cases worked out by hand, and their limits."""

import itertools

import pytest
import torch

from lcsc.kernel.quality import kid, knn_radii, mmd2_unbiased, precision_recall, quality


def _points(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_identical_sets_give_one_and_far_apart_sets_zero():
    x = _points(200, 8, 0)
    assert precision_recall(x, x.clone()) == (1.0, 1.0)
    assert precision_recall(x, x + 1000.0) == (0.0, 0.0)


def test_a_small_case_worked_by_hand():
    # real at 0, 1, 2, 3 with k = 1: each point's nearest neighbour is 1 away, so radius 1 each,
    # and the real manifold is [-1, 4]. fake at 0.5 and 10: the fake radii are both 9.5.
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [10.0]])
    assert knn_radii(real.double(), 1).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert knn_radii(fake.double(), 1).tolist() == [9.5, 9.5]
    # precision: 0.5 lies in [-1, 4], 10 does not -> 1/2. recall: every real point is within 9.5
    # of 0.5 (0.5, 0.5, 1.5, 2.5 away) -> 4/4.
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)


def test_a_narrow_cloud_inside_the_data_is_precise_but_covers_little():
    real = _points(400, 2, 1)  # a standard normal cloud
    narrow = 0.3 * _points(400, 2, 2)  # the same shape at 0.3 of its width, at its centre
    precision, recall = precision_recall(real, narrow)
    # (measured 0.91 and 0.39) nearly every narrow point sits among real ones; most of the real
    # cloud lies beyond the narrow one's reach
    assert precision > 0.85 and recall < 0.5
    # swapped, the roles swap: a model that spreads wider than the data covers it but is imprecise
    wide_precision, wide_recall = precision_recall(narrow, real)
    assert (wide_precision, wide_recall) == (recall, precision)  # the same balls, read the other way


def test_chunked_distances_change_nothing():
    real, fake = _points(53, 5, 3), _points(41, 5, 4) + 0.5
    assert precision_recall(real, fake, batch=7) == precision_recall(real, fake, batch=1024)


def test_mmd_against_its_formula_written_out():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([[0.0, 0.0], [2.0, 1.0], [0.5, -1.0]])

    def k(a, b):  # (a.b / d + 1)^3, d = 2
        return (sum(p * q for p, q in zip(a, b)) / 2 + 1) ** 3

    xs, ys = x.tolist(), y.tolist()
    within_x = sum(k(a, b) for a, b in itertools.permutations(xs, 2)) / (3 * 2)
    within_y = sum(k(a, b) for a, b in itertools.permutations(ys, 2)) / (3 * 2)
    between = sum(k(a, b) for a in xs for b in ys) / 9
    expected = within_x + within_y - 2 * between
    assert mmd2_unbiased(x, y) == pytest.approx(expected, abs=1e-12)
    # subsets as large as both sets: every subset is the whole set, so no spread
    mean, std = kid(x, y, subsets=5, subset_size=3)
    assert mean == pytest.approx(expected, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    a, b = _points(600, 16, 5), _points(600, 16, 6)
    same, same_sd = kid(a, b, subsets=50, subset_size=300)
    assert abs(same) < 3 * same_sd + 1e-3
    shifted, shifted_sd = kid(a, b + 0.5, subsets=50, subset_size=300)
    assert shifted > 10 * max(shifted_sd, abs(same)) and shifted > 0.05
    # the subsets come from a CPU generator: the same seed gives the same value
    assert kid(a, b + 0.5, subsets=5, subset_size=100, seed=3) == kid(a, b + 0.5, subsets=5, subset_size=100, seed=3)


def test_quality_gives_all_four_and_bad_inputs_are_refused():
    x = _points(50, 4, 7)
    q = quality(x, x + 0.01, kid_subsets=4, kid_subset_size=20)
    assert set(q) == {"precision", "recall", "kid", "kid_std"} and q["precision"] == q["recall"] == 1.0
    with pytest.raises(ValueError, match="need \\[N >= 4, D\\]"):
        precision_recall(x[:3], x)
    with pytest.raises(ValueError, match="4-d, fake 3-d"):
        precision_recall(x, x[:, :3])
    with pytest.raises(ValueError, match="need \\[N >= 2, D\\]"):
        mmd2_unbiased(x[:1], x)


def test_kid_from_the_whole_sets_kernel_equals_kid_subset_by_subset(monkeypatch):
    """Where the whole sets' kernel fits (quality.KERNEL_LIMIT), every subset's MMD comes from it;
    the same subsets scored one by one give the same KID to float64 rounding."""
    from lcsc.kernel import quality as q

    gen = torch.Generator().manual_seed(5)
    a = torch.randn(300, 8, generator=gen, dtype=torch.float64)
    b = torch.randn(250, 8, generator=gen, dtype=torch.float64) * 1.2 + 0.3
    whole = kid(a, b, subsets=20, subset_size=100, seed=1)
    monkeypatch.setattr(q, "KERNEL_LIMIT", 0)
    one_by_one = kid(a, b, subsets=20, subset_size=100, seed=1)
    assert whole == pytest.approx(one_by_one, rel=1e-12) and whole[0] > 0
