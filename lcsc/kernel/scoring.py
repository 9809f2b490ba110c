"""Scoring: weights -> samples at an NFE -> FID against reference statistics, one way for all.

The baselines and the search score candidates with it on fixed noise (common random numbers);
the evaluate stage scores each variant at every NFE of the sweep on seeds the search never saw.
The fitness settings and keys say what a score depends on, so scores made under other settings
are never compared or reused.
"""

from __future__ import annotations

import hashlib
import math
import queue
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, InputError
from .families import check_source, family_for
from .families.base import Family
from .features import load_features
from .fid import Reference, load_reference_features, load_stats
from .io import sha256
from .models import check_trail, nfe_weights
from .quality import quality as sample_quality
from .trail import ChunkedTrail, FlatLoader, Trail, check_state, combine, flatten_state

WORST_FID = 1e6  # fitness of a candidate whose samples are not finite
NOISE_LIMIT = 4 * 2**30  # bytes of noise one stage may draw in advance (DDPM: one image per step)


def make_noise(n: int, shape: tuple[int, ...], seed: int, device, steps: int | None = None) -> torch.Tensor:
    """Latent noise drawn on the CPU from `seed`: the same on every machine and device.

    With `steps`, [n, steps, *shape]: one noise image per sampling step (a consistency model's
    multistep sampling), drawn step by step, so [:, 0] equals the noise without `steps` and the
    first k steps do not depend on how many there are."""
    gen = torch.Generator().manual_seed(seed)
    if steps is None:
        return torch.randn((n, *shape), generator=gen).to(device)
    size = 4 * n * steps * math.prod(shape)
    if size > NOISE_LIMIT:
        raise ConfigError(
            f"the sampler draws {steps} noise images per sample in advance (diffusion.sampler ddpm: the "
            f"largest NFE plus one), {size / 2**30:.1f} GiB for {n} samples, over the "
            f"{NOISE_LIMIT // 2**30} GiB lcsc allows; lower the NFE or the samples, or use ddim or dpmpp2m"
        )
    return torch.randn((steps, n, *shape), generator=gen).transpose(0, 1).contiguous().to(device)


def label_seed(seed: int) -> int:
    """The seed of the labels drawn with the noise of `seed`: a stream of their own, so that the
    noise of a seed is the same for a conditional model as for an unconditional one."""
    return int.from_bytes(hashlib.sha256(f"lcsc-labels:{seed}".encode()).digest()[:7], "little")


def make_labels(n: int, num_classes: int, seed: int, device) -> torch.Tensor:
    """`n` class labels drawn from `seed`, class-balanced: every class n // num_classes times, the
    n % num_classes left over classes drawn without repeats, the whole in a random order. The same
    on every machine and device, like the noise."""
    gen = torch.Generator().manual_seed(label_seed(seed))
    rest = torch.randperm(num_classes, generator=gen)[: n % num_classes]
    labels = torch.cat([torch.arange(num_classes).repeat(n // num_classes), rest])
    return labels[torch.randperm(n, generator=gen)].to(device)


def labels_drawn(n: int, num_classes: int) -> str:
    """How the labels of `n` samples are drawn, in words (the report's and the evaluation's)."""
    per, rest = divmod(n, num_classes)
    if rest == 0:
        return f"class-balanced labels: each of the {num_classes} classes {per} times"
    return (
        f"class-balanced labels: each of the {num_classes} classes {per} or {per + 1} times ({rest} classes "
        "drawn for the remainder)"
    )


@dataclass(frozen=True)
class Latents:
    """What samples depend on besides the weights and the sampler: the noise and, for a
    class-conditional model, each sample's label; both drawn from one seed."""

    noise: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.noise.shape[0]

    def __getitem__(self, part: slice) -> Latents:
        return Latents(self.noise[part], None if self.labels is None else self.labels[part])


def open_trail(manifest: str | Path, model: str | None = None, cfg: dict | None = None) -> Trail:
    """The trail of `manifest`, checked to hold `model` (if given) and to be the trail `cfg` names
    (lcsc.kernel.families.check_source) before any of its files is read."""
    trail = Trail.open(manifest, verify=False)
    if cfg is not None:
        check_source(trail, cfg)
    if model is not None:
        check_trail(model, trail.manifest, manifest)
    trail.verify()
    return trail


class Scorer:
    """The one path from a candidate's weights to its FID: the family's network holds the weights
    (written in place from the stacked trail), its sampler turns noise into images at an NFE, the
    feature network embeds them, and the reference statistics score them."""

    def __init__(
        self,
        family: Family,
        features: str | Path,
        stats: str | Path,
        device: torch.device,
        batch_size: int,
        chunk_mb: float | None = None,
        compile: bool = False,
        cfg: dict | None = None,
    ):
        self.device = torch.device(device)
        self.chunk_mb = chunk_mb
        self.batch_size = batch_size
        self.family = family
        self.trail = family.trail
        self.shape = family.noise_shape
        self.model = family.build_network().to(device).eval()
        if compile:  # the compiled forward reads the parameters that each candidate rewrites in place
            self.model.forward = torch.compile(self.model.forward)
        self.loader = FlatLoader(self.model)
        self.sampler = family.sampler
        self.features = load_features(features, device, cfg)
        self.ref_mu, self.ref_sigma = load_stats(stats, self.features.hash)
        self.reference = Reference(self.ref_mu, self.ref_sigma, self.device)  # its factor, once
        self.stats_hash = sha256(stats)[:16]
        self.stats_path = Path(stats)
        self._ref_features: torch.Tensor | None | bool = False  # False: not read yet
        self._W: torch.Tensor | None = None
        if chunk_mb is None and self.device.type == "cuda":  # decided once: stream only what does not fit
            free, _ = torch.cuda.mem_get_info(self.device)
            self.chunk_mb = 256.0 if self.trail_bytes > free / 2 else None

    @classmethod
    def open(
        cls,
        cfg: dict,
        manifest: str | Path,
        features: str | Path,
        stats: str | Path,
        device: torch.device,
        batch_size: int,
        chunk_mb: float | None = None,
        model: str | None = None,
    ) -> Scorer:
        """A Scorer over the trail of `manifest` (which must hold `model`, if given), sampled as `cfg` says."""
        return cls(
            family_for(open_trail(manifest, model, cfg), cfg), features, stats, device, batch_size, chunk_mb, cfg=cfg
        )

    @property
    def num_classes(self) -> int | None:
        return self.family.num_classes

    def make_noise(self, samples: int, seed: int) -> Latents:
        """The noise of `samples` samples from `seed`, with their labels for a class-conditional model."""
        noise = make_noise(samples, self.shape, seed, self.device, self.family.noise_steps)
        classes = self.num_classes
        return Latents(noise, None if classes is None else make_labels(samples, classes, seed, self.device))

    @property
    def trail_bytes(self) -> int:
        return len(self.trail) * self.loader.numel * 4

    def trail_placement(self) -> str:
        """Where the stacked trail lives: whole on the device, or (with `chunk_mb`, given or chosen
        because the trail needs more than half the free device memory) streamed from host memory."""
        mb = self.trail_bytes / 2**20
        if self.chunk_mb:
            return (
                f"{len(self.trail)} x {self.loader.numel} float32 = {mb:.1f} MB in host memory, "
                f"streamed to {self.device} in chunks of {self.chunk_mb:g} MB"
            )
        return f"{len(self.trail)} x {self.loader.numel} float32 = {mb:.1f} MB on {self.device}"

    @property
    def W(self) -> torch.Tensor | ChunkedTrail:
        """The trail stacked as [K, P], loaded on first use: on the device, or chunked in host memory."""
        if self._W is None:
            if self.chunk_mb:
                self._W = ChunkedTrail(
                    self.trail.stack(self.loader.shapes, load=self.family.load_checkpoint), self.chunk_mb, self.device
                )
            else:
                self._W = self.trail.stack(self.loader.shapes, device=self.device, load=self.family.load_checkpoint)
        return self._W

    def share_trail(self, others: list[Scorer]) -> None:
        """Load the stacked trail once for `others` too (scorers of the same trail on other
        devices). They all take this scorer's placement, so every device sums the trail the same
        way: streamed, from this scorer's one set of host blocks; whole, one copy per device, shared
        by the scorers on it. Call it before their threads start."""
        held: dict[torch.device, torch.Tensor] = {}  # the trail held whole on a device
        for scorer in others:
            scorer.chunk_mb = self.chunk_mb
        for scorer in [self, *others]:
            if self.chunk_mb:
                scorer._W = self.W if scorer is self else self.W.on(scorer.device)
            elif scorer.device in held:
                scorer._W = held[scorer.device]
            else:
                held[scorer.device] = scorer.W

    def weights_of(self, coefficients) -> torch.Tensor:
        return combine(self.W, coefficients)

    def score(self, coefficients, nfe: int, noise: Latents | torch.Tensor) -> tuple[float, torch.Tensor]:
        """FID of the combination c @ W, written straight into the model's parameters."""
        self.loader.combine_into(self.W, coefficients)
        return self.fid(None, nfe, noise)

    def measure(self, coefficients, objective: Objective, noises: dict[int, Latents]) -> tuple[float, dict]:
        """The objective's fitness of the combination c @ W, and the FID at each of its NFEs
        (none sampled for a candidate over the norm bound)."""
        if not objective.feasible(coefficients):
            return WORST_FID, {}
        self.loader.combine_into(self.W, coefficients)
        fids = {n: self.fid(None, n, noises[n])[0] for n in objective.nfes}
        return objective.combine(fids) + objective.penalty_of(coefficients), fids

    def weights_from_file(self, path: str | Path) -> torch.Tensor:
        state = self.family.load_checkpoint(path, self.device)
        check_state(state, self.loader.shapes, path)
        return flatten_state(state, self.loader.keys)

    @torch.no_grad()
    def sample(self, flat: torch.Tensor | None, nfe: int, noise: Latents | torch.Tensor) -> torch.Tensor:
        """Samples of the weights `flat` (None: the weights already in the model) from `noise`
        (its labels passed to every network call of a class-conditional model)."""
        if flat is not None:
            self.loader.load(flat)
        latents = noise if isinstance(noise, Latents) else Latents(noise)
        if (latents.labels is None) != (self.num_classes is None):
            raise ValueError(
                f"the model is {'class-conditional' if self.num_classes else 'unconditional'}, but the "
                f"noise comes {'without' if latents.labels is None else 'with'} labels"
            )
        out = []
        for i in range(0, len(latents), self.batch_size):
            part = latents[i : i + self.batch_size]
            if part.labels is None:  # (an unconditional sampler need not take labels at all)
                out.append(self.sampler.sample(self.model, part.noise, nfe))
            else:
                out.append(self.sampler.sample(self.model, part.noise, nfe, labels=part.labels))
        return torch.cat(out)

    def embed(
        self, flat: torch.Tensor | None, nfe: int, noise: Latents | torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(features, images) of the samples; features None when samples or features are not finite."""
        images = self.sample(flat, nfe, noise)
        if not torch.isfinite(images).all():
            warnings.warn(f"non-finite samples at NFE {nfe}: scored as FID {WORST_FID:g}", stacklevel=3)
            return None, images
        features = self.features(images, self.batch_size)
        if not torch.isfinite(features).all():
            warnings.warn(f"non-finite features at NFE {nfe}: scored as FID {WORST_FID:g}", stacklevel=3)
            return None, images
        return features, images

    def fid(self, flat: torch.Tensor | None, nfe: int, noise: Latents | torch.Tensor) -> tuple[float, torch.Tensor]:
        features, images = self.embed(flat, nfe, noise)
        return (WORST_FID if features is None else self.reference.fid(features)), images

    @property
    def reference_features(self) -> torch.Tensor | None:
        """The reference images' features the stats file keeps (None in files of older versions)."""
        if self._ref_features is False:
            found = load_reference_features(self.stats_path)
            if found is not None and found.shape[1] != self.ref_mu.size:
                raise InputError(
                    f"{self.stats_path}: its reference features are {found.shape[1]}-d, its mu "
                    f"{self.ref_mu.size}-d; rerun reference_stats"
                )
            self._ref_features = (
                None if found is None else torch.as_tensor(found, dtype=torch.float64, device=self.device)
            )
        return self._ref_features

    def quality(self, flat: torch.Tensor | None, nfe: int, noise: Latents | torch.Tensor) -> tuple[dict, torch.Tensor]:
        """FID, and where the stats keep reference features, KID, precision and recall (k = 3) of
        the samples in the same feature space; with non-finite samples, FID WORST_FID alone."""
        features, images = self.embed(flat, nfe, noise)
        if features is None:
            return {"fid": WORST_FID}, images
        out = {"fid": self.reference.fid(features)}
        if self.reference_features is not None:
            out |= sample_quality(self.reference_features, features.to(self.device, torch.float64))
        return out, images


def simplex_distance(c: np.ndarray) -> float:
    """L2 distance of c from the probability simplex (non-negative, summing to 1): the distance to
    its Euclidean projection, max(c - tau, 0) with the tau that makes it sum to 1."""
    c = np.asarray(c, dtype=np.float64)
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
    if scorer.num_classes is not None:  # (absent for an unconditional model: its keys stay as they were)
        out["labels"] = f"balanced:{scorer.num_classes}"
    return out


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

    def noise(self, scorer: Scorer, samples: int, seed: int) -> Latents:
        key = (str(scorer.device), samples, seed)
        if key not in self._noise:
            self._noise[key] = scorer.make_noise(samples, seed)
        return self._noise[key]

    def noises(self, scorer: Scorer, objective: Objective, samples: int, seed: int) -> dict[int, Latents]:
        """The fixed noise of each of the objective's NFEs on `scorer`'s device."""
        return {n: self.noise(scorer, samples, objective.noise_seed(seed, n)) for n in objective.nfes}

    def _score(
        self, scorer: Scorer, c: np.ndarray, objective: Objective, samples: int, seed: int
    ) -> tuple[float, dict, float]:
        t0 = time.perf_counter()
        fitness, fids = scorer.measure(c, objective, self.noises(scorer, objective, samples, seed))
        if scorer.device.type == "cuda":
            torch.cuda.synchronize(scorer.device)
        return fitness, fids, time.perf_counter() - t0

    def evaluate(
        self, cs: list[np.ndarray], places: list[int], objective: Objective, samples: int, seed: int, on_result
    ) -> None:
        """Calls on_result(i, fitness, fids, seconds) for every cs[i] as soon as it is scored. With several
        devices, cs[i] goes to device places[i] % devices, its place in the optimizer's ask-batch: the
        batch's candidates spread evenly (8 on 8 GPUs: one each), and a candidate is scored on the
        same device whether it comes in a fresh batch or in what is left of one after a resume."""
        if len(self.scorers) == 1:
            for i, c in enumerate(cs):
                on_result(i, *self._score(self.scorers[0], c, objective, samples, seed))
            return
        done: queue.Queue = queue.Queue()
        stop = threading.Event()
        shares = [[] for _ in self.scorers]
        for i, place in enumerate(places):
            shares[place % len(self.scorers)].append(i)

        def work(scorer: Scorer, share: list[int]) -> None:
            try:
                for i in share:
                    if stop.is_set():
                        return
                    done.put((i, *self._score(scorer, cs[i], objective, samples, seed)))
            except BaseException as exc:  # surfaced in the main thread
                done.put((None, exc, None, None))

        threads = [
            threading.Thread(target=work, args=(s, share), daemon=True)
            for s, share in zip(self.scorers, shares)
            if share
        ]
        for t in threads:
            t.start()
        finished = False
        try:
            for _ in range(len(cs)):
                i, fitness, fids, seconds = done.get()
                if i is None:
                    raise fitness
                on_result(i, fitness, fids, seconds)
            finished = True
        finally:
            stop.set()
            for t in threads:  # an interrupt or error need not wait for the candidates in flight
                t.join(None if finished else 2.0)  # (daemon threads; their results are not kept)
