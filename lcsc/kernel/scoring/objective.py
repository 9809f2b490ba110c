"""The search's fitness: the Objective over one or more NFEs, and the settings and keys that say
what a score depends on, so scores made under other settings are never compared or reused."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..models import nfe_weights

if TYPE_CHECKING:
    from .scorer import Scorer


def simplex_distance(c: np.ndarray) -> float:
    """L2 distance of c from the probability simplex (non-negative, summing to 1): the distance to
    its Euclidean projection, max(c - tau, 0) with the tau that makes it sum to 1."""
    c = np.asarray(c, dtype=np.float64)
    # The sort-based projection (Held et al. 1974; Duchi et al. 2008): rho is the last sorted entry
    # still positive after the shift, and tau = cum[rho] / (rho + 1).
    u = np.sort(c)[::-1]
    cum = np.cumsum(u) - 1.0
    k = np.arange(1, len(u) + 1)
    rho = np.nonzero(u - cum / k > 0)[0][-1]
    projected = np.maximum(c - cum[rho] / (rho + 1), 0.0)
    return float(np.linalg.norm(c - projected))


@dataclass(frozen=True)
class Objective:
    """The search's fitness: the FIDs at one or more NFEs, each on its own fixed noise, combined as
    a weighted mean (of their logs, or of the FIDs), plus an optional coefficient penalty; a
    candidate over `max_norm` is not sampled and gets WORST_FID."""

    weights: dict[int, float]  # NFE -> weight, summing to 1, in the config's order
    mean: str = "log"
    penalty: str = "none"
    penalty_weight: float = 0.0
    max_norm: float | None = None

    @classmethod
    def of(cls, scfg: dict) -> Objective:
        return cls(
            nfe_weights(scfg),
            scfg.get("fitness_mean", "log"),
            scfg.get("penalty", "none"),
            float(scfg.get("penalty_weight", 0.0)),
            scfg.get("max_norm"),
        )

    @property
    def nfes(self) -> list[int]:
        return list(self.weights)

    def noise_seed(self, seed: int, nfe: int) -> int:
        """The seed of NFE `nfe`'s noise: `seed` itself for a one-NFE fitness; for several, one
        derived from (seed, nfe), so that each NFE has noise of its own."""
        if len(self.weights) == 1:
            return seed
        return int.from_bytes(hashlib.sha256(f"lcsc-fitness-noise:{seed}:{nfe}".encode()).digest()[:7], "little")

    def combine(self, fids: dict[int, float]) -> float:
        """The weighted mean of the per-NFE FIDs (of their logs, for `log`)."""
        if len(self.weights) == 1:
            return float(fids[self.nfes[0]])
        if self.mean == "log":
            # Floored so that an FID of 0 does not send the log to -inf.
            return float(np.exp(sum(w * np.log(max(fids[n], 1e-12)) for n, w in self.weights.items())))
        return float(sum(w * fids[n] for n, w in self.weights.items()))

    def penalty_of(self, c) -> float:
        if self.penalty == "none" or self.penalty_weight == 0:
            return 0.0
        c = np.asarray(c, dtype=np.float64)
        distance = float(np.linalg.norm(c)) if self.penalty == "l2" else simplex_distance(c)
        return self.penalty_weight * distance

    def feasible(self, c) -> bool:
        return self.max_norm is None or float(np.linalg.norm(np.asarray(c, dtype=np.float64))) <= self.max_norm

    def settings(self) -> dict:
        """What the fitness depends on besides the samples (kept in every fitness key)."""
        # Each setting joins only when it is in use: a plain one-NFE fitness keeps the keys (and the
        # fitness cached under them) it had before these options existed.
        out = {"nfe": self.nfes[0] if len(self.weights) == 1 else self.nfes}
        if len(self.weights) > 1:
            out |= {"nfe_weights": list(self.weights.values()), "fitness_mean": self.mean}
        if self.penalty != "none" and self.penalty_weight:
            out |= {"penalty": self.penalty, "penalty_weight": self.penalty_weight}
        if self.max_norm is not None:
            out["max_norm"] = self.max_norm
        return out


def fitness_settings(scfg: dict, scorer: Scorer) -> dict:
    """Everything a search fitness depends on besides the trail: scores made under other
    settings must not be compared with the search's own."""
    objective = Objective.of(scfg)
    out = {
        **objective.settings(),
        "samples": scfg["samples"],
        "seed": scfg["seed"],
        "feature_hash": scorer.features.hash,
        "stats_hash": scorer.stats_hash,
        **scorer.sampler.settings(max(objective.nfes)),
        "batch_size": scfg["batch_size"],
    }
    # Absent for an unconditional model: its keys stay as they were.
    if scorer.num_classes is not None:
        out["labels"] = f"balanced:{scorer.num_classes}"
    return out


def fitness_key(coefficients, settings_digest: str) -> str:
    """The cache key of one evaluation: the coefficients' float64 bytes under fitness settings."""
    h = hashlib.sha256(settings_digest.encode())
    # Little-endian float64 bytes whatever the input's dtype or layout: equal coefficients give
    # the same key on every machine.
    h.update(np.ascontiguousarray(coefficients, dtype="<f8").tobytes())
    return h.hexdigest()[:32]
