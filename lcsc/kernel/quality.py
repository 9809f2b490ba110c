"""Precision, recall and KID of generated samples against reference samples, in one feature space.

- Precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of balls around
  its points, each with the radius of the distance to that point's k-th nearest neighbour in its
  own set. Precision is the share of generated points inside the reference manifold (samples that
  look real); recall the share of reference points inside the generated manifold (how much of the
  data the model covers).
- KID (Binkowski et al. 2018): the unbiased estimate of the squared MMD with the cubic polynomial
  kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets; unlike FID it has an unbiased
  estimator, so small sample sizes do not inflate it.

Everything in float64 on the inputs' device; distances are computed a block of rows at a time.
"""

from __future__ import annotations

import torch

# Entries of one whole-set kernel matrix KID may hold (128 MB in float64).
KERNEL_LIMIT = 2**24


def _check(real: torch.Tensor, fake: torch.Tensor, least: int) -> None:
    for name, x in (("real", real), ("fake", fake)):
        if x.ndim != 2 or x.shape[0] < least:
            raise ValueError(f"{name} features: need [N >= {least}, D], got shape {tuple(x.shape)}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real features are {real.shape[1]}-d, fake {fake.shape[1]}-d")


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances [len(a), len(b)], exact enough at float64 (clamped at 0 before the root)."""
    # |a - b|^2 expanded into the norms and one matrix product: no [len(a), len(b), D] difference tensor.
    sq = (a * a).sum(1, keepdim=True) - 2 * a @ b.T + (b * b).sum(1)
    return sq.clamp(min=0).sqrt()


def knn_radii(x: torch.Tensor, k: int, batch: int = 1024) -> torch.Tensor:
    """Distance of each point of x to its k-th nearest neighbour in x, itself excluded."""
    out = []
    # A block of rows at a time: the distances are batch x N, never the whole N x N matrix.
    for i in range(0, len(x), batch):
        d = _distances(x[i : i + batch], x)
        # the k+1 smallest include the point itself at distance 0
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch: int) -> torch.Tensor:
    """For each point, whether it lies within radius of some centre."""
    out = []
    for i in range(0, len(points), batch):
        d = _distances(points[i : i + batch], centres)
        out.append((d <= radii[None, :]).any(1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, batch: int = 1024) -> tuple[float, float]:
    """(precision, recall) of `fake` against `real`, [N, D] and [M, D] features."""
    real, fake = torch.as_tensor(real).double(), torch.as_tensor(fake).double()
    _check(real, fake, k + 1)
    real_r, fake_r = knn_radii(real, k, batch), knn_radii(fake, k, batch)
    precision = _inside(fake, real, real_r, batch).double().mean()
    recall = _inside(real, fake, fake_r, batch).double().mean()
    return float(precision), float(recall)


def _kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b.T / a.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased squared MMD of sets x [n, d] and y [m, d] with the cubic polynomial kernel:
    the mean of k over distinct pairs within x, plus that within y, minus twice the mean over x-y pairs."""
    x, y = torch.as_tensor(x).double(), torch.as_tensor(y).double()
    _check(x, y, 2)
    n, m = len(x), len(y)
    kxx, kyy = _kernel(x, x), _kernel(y, y)
    # The diagonal (each point with itself) is left out: averaging over distinct pairs only is
    # what makes the estimate unbiased.
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2 * _kernel(x, y).mean())


def _subset_mmd2s(real: torch.Tensor, fake: torch.Tensor, picks: list) -> list[float]:
    """mmd2_unbiased of each subset pair (indices into real, fake), from the kernel over the whole
    sets: a subset's sum over its pairs is r' K r for its 0/1 indicator r, so all subsets take one
    product per kernel matrix instead of three kernels each (100 subsets of 1000 of 2000 points in
    64-d: about 20 times less work). Equal to the subset-by-subset values to float64 rounding."""
    r = torch.zeros(len(real), len(picks), dtype=torch.float64, device=real.device)
    f = torch.zeros(len(fake), len(picks), dtype=torch.float64, device=fake.device)
    for j, (ri, fi) in enumerate(picks):
        r[ri.to(r.device), j] = 1
        f[fi.to(f.device), j] = 1
    size = len(picks[0][0])

    # The sum over distinct pairs of each subset: v' K v for each 0/1 column v, less the diagonal
    # terms k_ii v_i^2, which are k_ii v_i since v is 0 or 1.
    def within(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k = _kernel(x, x)
        return ((k @ v) * v).sum(0) - (k.diagonal()[:, None] * v).sum(0)

    between = ((_kernel(real, fake) @ f) * r).sum(0)
    mmd2 = (within(real, r) + within(fake, f)) / (size * (size - 1)) - 2 * between / (size * size)
    return mmd2.tolist()


def kid(
    real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: (mean, standard deviation) of mmd2_unbiased over `subsets` random subsets of
    min(subset_size, N, M) points of each set, drawn without replacement by a CPU generator
    seeded with `seed` (the same subsets on every device). With subsets as large as both sets,
    every subset is the whole set."""
    real, fake = torch.as_tensor(real).double(), torch.as_tensor(fake).double()
    _check(real, fake, 2)
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"kid: subsets of {size} points; need at least 2")
    gen = torch.Generator().manual_seed(seed)
    picks = [
        (torch.randperm(len(real), generator=gen)[:size], torch.randperm(len(fake), generator=gen)[:size])
        for _ in range(subsets)
    ]
    # The whole-set kernel matrices would pass KERNEL_LIMIT: one subset at a time instead, with
    # kernels only the subsets' size.
    if max(len(real), len(fake)) ** 2 > KERNEL_LIMIT:
        values = [mmd2_unbiased(real[ri.to(real.device)], fake[fi.to(fake.device)]) for ri, fi in picks]
    else:
        values = _subset_mmd2s(real, fake, picks)
    v = torch.tensor(values, dtype=torch.float64)
    # One subset has no spread (the unbiased std of one value would be NaN).
    return float(v.mean()), float(v.std(unbiased=True)) if len(v) > 1 else 0.0


def quality(
    real: torch.Tensor,
    fake: torch.Tensor,
    k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Precision, recall (k-NN, k = 3) and KID (mean and standard deviation over subsets)."""
    return precision_recall_metrics(real, fake, k) | kid_metrics(real, fake, kid_subsets, kid_subset_size, seed)


# The functions lcsc.kernel.metrics names: each gives its metrics by name, so a scorer merges them
def precision_recall_metrics(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    precision, recall = precision_recall(real, fake, k)
    return {"precision": precision, "recall": recall}


def kid_metrics(
    real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> dict[str, float]:
    """KID and its standard deviation over subsets (kid_std, which the evaluation leaves out)."""
    mean, std = kid(real, fake, subsets, subset_size, seed)
    return {"kid": mean, "kid_std": std}
