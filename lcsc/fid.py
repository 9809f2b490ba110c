"""Frechet distance between Gaussians fitted to features, computed the fast way on the device.

FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), and tr((S1 S2)^1/2) equals
tr((S1^1/2 S2 S1^1/2)^1/2), whose argument is symmetric PSD: two `eigh` calls replace scipy's
sqrtm (Dowson & Landau 1982; Heusel et al. 2017).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .io import atomic_path


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of [N, D] features, in float64."""
    f = torch.as_tensor(features).double()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need [N >= 2, D] features, got shape {tuple(f.shape)}")
    mu = f.mean(0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return mu.cpu().numpy(), sigma.cpu().numpy()


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2, device: str | torch.device = "cpu") -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64 on `device`."""
    m1, m2 = (torch.as_tensor(m, dtype=torch.float64, device=device) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64, device=device) for s in (sigma1, sigma2))
    if m1.shape != m2.shape or s1.shape != s2.shape:
        raise ValueError(f"shape mismatch: mu {tuple(m1.shape)} vs {tuple(m2.shape)}, "
                         f"sigma {tuple(s1.shape)} vs {tuple(s2.shape)}")
    root1 = _sqrt_psd((s1 + s1.T) / 2)
    middle = root1 @ s2 @ root1
    eig = torch.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = eig.clamp(min=0).sqrt().sum()
    diff = m1 - m2
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean)


def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray, **meta) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, mu=mu, sigma=sigma, **{k: np.asarray(v) for k, v in meta.items()})


def load_stats(path: str | Path, feature_hash: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reference mu/sigma; with `feature_hash`, refuse stats made by another feature network."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"reference stats not found: {path} (the reference_stats stage writes it)")
    with np.load(path, allow_pickle=False) as z:
        if not {"mu", "sigma", "feature_hash"} <= set(z.files):
            raise ValueError(f"{path}: not a reference-stats file (needs mu, sigma, feature_hash; has {z.files})")
        if feature_hash is not None and str(z["feature_hash"]) != feature_hash:
            raise ValueError(f"{path}: made with feature network {z['feature_hash']}, "
                             f"but the one in use is {feature_hash}; rerun reference_stats")
        return z["mu"], z["sigma"]
