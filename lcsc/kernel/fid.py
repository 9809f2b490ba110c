"""Frechet distance between Gaussians fitted to features, computed the fast way on the device.

FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2) (Dowson & Landau 1982; Heusel et al.
2017). With any factor S1 = A A^T, the eigenvalues of A^T S2 A equal those of S1 S2, and that
matrix is symmetric PSD, so tr((S1 S2)^1/2) = sum sqrt(eigvalsh(A^T S2 A)): a Cholesky factor (or,
for a singular S1, the symmetric square root by `eigh`) and one symmetric eigenvalue problem
replace scipy's general-matrix sqrtm.
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .io import atomic_path, reading


def _moments(f: torch.Tensor, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance of [N, D] float64 features, where they are."""
    if f.ndim != 2 or f.shape[0] < 2 or (dim is not None and f.shape[1] != dim):
        raise ValueError(f"need [N >= 2, {dim or 'D'}] features, got shape {tuple(f.shape)}")
    mu = f.mean(0)
    # Centred before the product: the one-pass E[f f^T] - mu mu^T loses most of its digits to cancellation.
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of [N, D] features, in float64, as numpy arrays."""
    mu, sigma = _moments(torch.as_tensor(features).double())
    return mu.cpu().numpy(), sigma.cpu().numpy()


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(a)
    # Rounding leaves tiny negative eigenvalues on a singular covariance; clamped so the root stays real.
    return (v * w.clamp(min=0).sqrt()) @ v.T


def _factor(a: torch.Tensor) -> torch.Tensor:
    """A with A A^T = a (symmetric PSD): the Cholesky factor, or the square root when a is
    singular (fewer samples than dimensions), where Cholesky fails."""
    # cholesky_ex reports a failure in `info` instead of raising, so the singular case falls back
    # without an exception.
    factor, info = torch.linalg.cholesky_ex(a)
    return factor if int(info) == 0 else _sqrt_psd(a)


def _trace_sqrt_product(factor: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """tr((F F^T sigma)^1/2) = sum sqrt(eig(F^T sigma F))."""
    middle = factor.T @ sigma @ factor
    # F^T sigma F is symmetric only up to rounding and eigvalsh reads one triangle, so it is
    # symmetrised first; eigenvalues rounded below zero are clamped before the root.
    return torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()


def frechet_distance(mu1, sigma1, mu2, sigma2, device: str | torch.device = "cpu") -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64 on `device`."""
    return Reference(mu1, sigma1, device).distance(mu2, sigma2)


class Reference:
    """Reference statistics held on the device, with a factor of their covariance computed once:
    each FID against them then costs one symmetric eigenvalue problem."""

    def __init__(self, mu, sigma, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.mu = torch.as_tensor(mu, dtype=torch.float64, device=self.device)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=self.device)
        if sigma.shape != (self.mu.numel(), self.mu.numel()):
            raise ValueError(f"reference sigma has shape {tuple(sigma.shape)}, mu has {self.mu.numel()} entries")
        # Symmetrised once, so the Cholesky factor and every trace see the same exactly symmetric matrix.
        self.sigma = (sigma + sigma.T) / 2
        self.factor = _factor(self.sigma)
        self.trace = torch.trace(self.sigma)

    def moments(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased covariance of [N, D] features, float64 on the reference's device."""
        return _moments(torch.as_tensor(features).to(self.device, torch.float64), self.mu.numel())

    def distance(self, mu, sigma) -> float:
        mu = torch.as_tensor(mu, dtype=torch.float64, device=self.device)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=self.device)
        if mu.shape != self.mu.shape or sigma.shape != self.sigma.shape:
            raise ValueError(
                f"shape mismatch: mu {tuple(mu.shape)} vs {tuple(self.mu.shape)}, "
                f"sigma {tuple(sigma.shape)} vs {tuple(self.sigma.shape)}"
            )
        tr_covmean = _trace_sqrt_product(self.factor, sigma)
        diff = mu - self.mu
        return float(diff @ diff + torch.trace(sigma) + self.trace - 2 * tr_covmean)

    def fid(self, features: torch.Tensor) -> float:
        """FID of [N, D] features against the reference."""
        return self.distance(*self.moments(features))


def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray, **meta) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, mu=mu, sigma=sigma, **{k: np.asarray(v) for k, v in meta.items()})


def load_stats(path: str | Path, feature_hash: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reference mu/sigma; with `feature_hash`, refuse stats made by another feature network."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            errno.ENOENT, "no reference stats here; the reference_stats stage writes them", str(path)
        )
    rerun = "rerun reference_stats (or pass the right --stats)"
    # Whatever np.load cannot read (a truncated zip, a pickle, text) becomes one InputError naming the
    # file; allow_pickle=False because a stats file is data, and unpickling it could run code.
    with reading(path, "a readable reference-stats .npz file", rerun):
        with np.load(path, allow_pickle=False) as z:
            if not {"mu", "sigma", "feature_hash"} <= set(z.files):
                raise InputError(
                    f"{path}: not a reference-stats file (needs mu, sigma, feature_hash; has "
                    f"{', '.join(z.files) or 'nothing'}); {rerun}"
                )
            if feature_hash is not None and str(z["feature_hash"]) != feature_hash:
                raise InputError(
                    f"{path}: made with feature network {z['feature_hash']}, "
                    f"but the one in use is {feature_hash}; {rerun}"
                )
            mu, sigma = z["mu"], z["sigma"]
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise InputError(f"{path}: mu has shape {mu.shape} and sigma {sigma.shape}, not [D] and [D, D]; {rerun}")
    return mu, sigma


def load_reference_features(path: str | Path) -> np.ndarray | None:
    """The reference features a stats file keeps beside mu and sigma (for precision, recall and
    KID), or None for a file without them."""
    with reading(path, "a readable reference-stats .npz file", "rerun reference_stats (or pass the right --stats)"):
        with np.load(path, allow_pickle=False) as z:
            if "reference_features" not in z.files:
                return None
            features = z["reference_features"]
    if features.ndim != 2 or len(features) < 2:
        raise InputError(
            f"{path}: its reference features have shape {features.shape}, not [N >= 2, D]; rerun reference_stats"
        )
    return features
