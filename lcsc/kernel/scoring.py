"""Scoring: weights -> samples at an NFE -> FID against reference statistics, one way for all.

The baselines and the search score candidates with it on fixed noise (common random numbers);
the evaluate stage scores each variant at every NFE of the sweep on seeds the search never saw.
The fitness settings and keys say what a score depends on, so scores made under other settings
are never compared or reused.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .families import Family, family_for
from .features import load_features
from .fid import Reference, load_stats
from .io import sha256
from .models import check_trail
from .trail import ChunkedTrail, FlatLoader, Trail, check_state, combine, flatten_state

WORST_FID = 1e6  # fitness of a candidate whose samples are not finite


def make_noise(n: int, shape: tuple[int, ...], seed: int, device, steps: int | None = None) -> torch.Tensor:
    """Latent noise drawn on the CPU from `seed`: the same on every machine and device.

    With `steps`, [n, steps, *shape]: one noise image per sampling step (a consistency model's
    multistep sampling), drawn step by step, so [:, 0] equals the noise without `steps` and the
    first k steps do not depend on how many there are."""
    gen = torch.Generator().manual_seed(seed)
    if steps is None:
        return torch.randn((n, *shape), generator=gen).to(device)
    return torch.randn((steps, n, *shape), generator=gen).transpose(0, 1).contiguous().to(device)


def open_trail(manifest: str | Path, model: str | None = None) -> Trail:
    """The trail of `manifest`, checked to hold `model` (if given) before its files are hashed."""
    trail = Trail.open(manifest, verify=False)
    if model is not None:
        check_trail(model, trail.manifest, manifest)
    trail.verify()
    return trail


class Scorer:
    """The one path from a candidate's weights to its FID: the family's network holds the weights
    (written in place from the stacked trail), its sampler turns noise into images at an NFE, the
    feature network embeds them, and the reference statistics score them."""

    def __init__(self, family: Family, features: str | Path, stats: str | Path, device: torch.device,
                 batch_size: int, chunk_mb: float | None = None):
        self.device = torch.device(device)
        self.chunk_mb = chunk_mb
        self.batch_size = batch_size
        self.family = family
        self.trail = family.trail
        self.shape = family.noise_shape
        self.model = family.build_network().to(device).eval()
        self.loader = FlatLoader(self.model)
        self.sampler = family.sampler
        self.features = load_features(features, device)
        self.ref_mu, self.ref_sigma = load_stats(stats, self.features.hash)
        self.reference = Reference(self.ref_mu, self.ref_sigma, self.device)  # its factor, once
        self.stats_hash = sha256(stats)[:16]
        self._W: torch.Tensor | None = None
        if chunk_mb is None and self.device.type == "cuda":  # decided once: stream only what does not fit
            free, _ = torch.cuda.mem_get_info(self.device)
            self.chunk_mb = 256.0 if self.trail_bytes > free / 2 else None

    @classmethod
    def open(cls, cfg: dict, manifest: str | Path, features: str | Path, stats: str | Path, device: torch.device,
             batch_size: int, chunk_mb: float | None = None, model: str | None = None) -> Scorer:
        """A Scorer over the trail of `manifest` (which must hold `model`, if given), sampled as `cfg` says."""
        return cls(family_for(open_trail(manifest, model), cfg), features, stats, device, batch_size, chunk_mb)

    def make_noise(self, samples: int, seed: int) -> torch.Tensor:
        return make_noise(samples, self.shape, seed, self.device, self.family.noise_steps)

    @property
    def trail_bytes(self) -> int:
        return len(self.trail) * self.loader.numel * 4

    def trail_placement(self) -> str:
        """Where the stacked trail lives: whole on the device, or (with `chunk_mb`, given or chosen
        because the trail needs more than half the free device memory) streamed from host memory."""
        mb = self.trail_bytes / 2**20
        if self.chunk_mb:
            return f"{len(self.trail)} x {self.loader.numel} float32 = {mb:.1f} MB in host memory, " \
                   f"streamed to {self.device} in chunks of {self.chunk_mb:g} MB"
        return f"{len(self.trail)} x {self.loader.numel} float32 = {mb:.1f} MB on {self.device}"

    @property
    def W(self) -> torch.Tensor | ChunkedTrail:
        """The trail stacked as [K, P], loaded on first use: on the device, or chunked in host memory."""
        if self._W is None:
            if self.chunk_mb:
                self._W = ChunkedTrail(self.trail.stack(self.loader.shapes, load=self.family.load_checkpoint),
                                       self.chunk_mb, self.device)
            else:
                self._W = self.trail.stack(self.loader.shapes, device=self.device, load=self.family.load_checkpoint)
        return self._W

    def weights_of(self, coefficients) -> torch.Tensor:
        return combine(self.W, coefficients)

    def score(self, coefficients, nfe: int, noise: torch.Tensor) -> tuple[float, torch.Tensor]:
        """FID of the combination c @ W, written straight into the model's parameters."""
        self.loader.combine_into(self.W, coefficients)
        return self.fid(None, nfe, noise)

    def weights_from_file(self, path: str | Path) -> torch.Tensor:
        state = self.family.load_checkpoint(path, self.device)
        check_state(state, self.loader.shapes, path)
        return flatten_state(state, self.loader.keys)

    @torch.no_grad()
    def sample(self, flat: torch.Tensor | None, nfe: int, noise: torch.Tensor) -> torch.Tensor:
        """Samples of the weights `flat` (None: the weights already in the model)."""
        if flat is not None:
            self.loader.load(flat)
        out = [self.sampler.sample(self.model, noise[i:i + self.batch_size], nfe)
               for i in range(0, len(noise), self.batch_size)]
        return torch.cat(out)

    def fid(self, flat: torch.Tensor | None, nfe: int, noise: torch.Tensor) -> tuple[float, torch.Tensor]:
        images = self.sample(flat, nfe, noise)
        if not torch.isfinite(images).all():
            warnings.warn(f"non-finite samples at NFE {nfe}: scored as FID {WORST_FID:g}", stacklevel=2)
            return WORST_FID, images
        features = self.features(images, self.batch_size)
        if not torch.isfinite(features).all():
            warnings.warn(f"non-finite features at NFE {nfe}: scored as FID {WORST_FID:g}", stacklevel=2)
            return WORST_FID, images
        return self.reference.fid(features), images


def fitness_settings(scfg: dict, scorer: Scorer) -> dict:
    """Everything a search fitness depends on besides the trail: scores made under other
    settings must not be compared with the search's own."""
    return {"nfe": scfg["nfe"], "samples": scfg["samples"], "seed": scfg["seed"],
            "feature_hash": scorer.features.hash, "stats_hash": scorer.stats_hash,
            **scorer.sampler.settings(scfg["nfe"]), "batch_size": scfg["batch_size"]}


def fitness_key(coefficients, settings_digest: str) -> str:
    """The cache key of one evaluation: the coefficients' float64 bytes under fitness settings."""
    h = hashlib.sha256(settings_digest.encode())
    h.update(np.ascontiguousarray(coefficients, dtype="<f8").tobytes())
    return h.hexdigest()[:32]


class Evaluator:
    """Scores batches of coefficient vectors with one Scorer per device (each its own model,
    stacked trail and copy of the noise). With several devices, each scores its share of a batch
    in its own thread; results come back in the main thread as they finish."""

    def __init__(self, scorers: list[Scorer]):
        self.scorers = scorers
        self._noise: dict[tuple, torch.Tensor] = {}

    def noise(self, scorer: Scorer, samples: int, seed: int) -> torch.Tensor:
        key = (str(scorer.device), samples, seed)
        if key not in self._noise:
            self._noise[key] = scorer.make_noise(samples, seed)
        return self._noise[key]

    def _score(self, scorer: Scorer, c: np.ndarray, nfe: int, samples: int, seed: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        fitness, _ = scorer.score(c, nfe, self.noise(scorer, samples, seed))
        if scorer.device.type == "cuda":
            torch.cuda.synchronize(scorer.device)
        return fitness, time.perf_counter() - t0

    def evaluate(self, cs: list[np.ndarray], keys: list[str], nfe: int, samples: int, seed: int,
                 on_result) -> None:
        """Calls on_result(i, fitness, seconds) for every cs[i] as soon as it is scored. With several
        devices, a candidate goes to the device its key picks, so it is scored on the same device
        whether it comes in a fresh batch or in what is left of one after a resume."""
        if len(self.scorers) == 1:
            for i, c in enumerate(cs):
                on_result(i, *self._score(self.scorers[0], c, nfe, samples, seed))
            return
        done: queue.Queue = queue.Queue()
        stop = threading.Event()
        shares = [[] for _ in self.scorers]
        for i, key in enumerate(keys):
            shares[int(key, 16) % len(self.scorers)].append(i)

        def work(scorer: Scorer, share: list[int]) -> None:
            try:
                for i in share:
                    if stop.is_set():
                        return
                    done.put((i, *self._score(scorer, cs[i], nfe, samples, seed)))
            except BaseException as exc:  # surfaced in the main thread
                done.put((None, exc, None))

        threads = [threading.Thread(target=work, args=(s, share), daemon=True)
                   for s, share in zip(self.scorers, shares) if share]
        for t in threads:
            t.start()
        finished = False
        try:
            for _ in range(len(cs)):
                i, fitness, seconds = done.get()
                if i is None:
                    raise fitness
                on_result(i, fitness, seconds)
            finished = True
        finally:
            stop.set()
            for t in threads:  # an interrupt or error need not wait for the candidates in flight
                t.join(None if finished else 2.0)  # (daemon threads; their results are not kept)
