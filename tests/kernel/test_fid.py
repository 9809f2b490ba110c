"""The Frechet distance in closed form, reference statistics and their files."""

import numpy as np
import pytest
import scipy.linalg
import torch

from lcsc.kernel.fid import Reference, feature_stats, frechet_distance, load_stats, save_stats


def test_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    a, b = rng.uniform(0.2, 2, 8), rng.uniform(0.2, 2, 8)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(np.zeros(8), s1, np.zeros(8), s2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("dim", [2, 16, 64])
def test_matches_scipy_sqrtm_on_random_covariances(dim):
    rng = np.random.default_rng(dim)
    x, y = rng.normal(size=(4 * dim, dim)), rng.normal(size=(4 * dim, dim)) @ rng.normal(size=(dim, dim))
    mu1, s1 = x.mean(0), np.cov(x, rowvar=False)
    mu2, s2 = y.mean(0), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-7)


def test_identical_distributions_score_zero_and_stats_match_numpy(tmp_path):
    f = torch.randn(500, 10, dtype=torch.float64)
    mu, sigma = feature_stats(f)
    np.testing.assert_allclose(mu, f.numpy().mean(0), atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f.numpy(), rowvar=False), atol=1e-12)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9
    save_stats(tmp_path / "s.npz", mu, sigma, feature_hash="abc")
    mu2, sigma2 = load_stats(tmp_path / "s.npz", "abc")
    np.testing.assert_array_equal(mu, mu2)
    with pytest.raises(ValueError, match="rerun reference_stats"):
        load_stats(tmp_path / "s.npz", "other")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_stats(tmp_path / "missing.npz")


@pytest.mark.parametrize("singular", ["first", "second", "both"])
def test_closed_form_with_singular_covariances(singular):
    """Fewer samples than dimensions make covariances singular: Cholesky fails and the square
    root takes over; the closed form of commuting covariances still holds."""
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    a, b = rng.uniform(0.2, 2, 10), rng.uniform(0.2, 2, 10)
    if singular in ("first", "both"):
        a[:4] = 0
    if singular in ("second", "both"):
        b[2:6] = 0
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(np.zeros(10), s1, np.zeros(10), s2) == pytest.approx(expected, rel=1e-6)
    assert Reference(np.zeros(10), s2).distance(np.zeros(10), s1) == pytest.approx(expected, rel=1e-6)


def test_reference_scores_features_like_the_two_sided_formula():
    rng = np.random.default_rng(4)
    ref_feats, feats = rng.normal(size=(300, 12)), rng.normal(size=(200, 12)) * 1.3 + 0.2
    mu_r, s_r = feature_stats(ref_feats)
    ref = Reference(mu_r, s_r)
    expected = frechet_distance(*feature_stats(feats), mu_r, s_r)
    assert ref.fid(torch.from_numpy(feats)) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match=r"need \[N >= 2, 12\] features"):
        ref.fid(torch.zeros(5, 3))
