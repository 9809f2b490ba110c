"""The Scorer: a candidate's weights -> samples at an NFE -> FID (and the quality metrics of
lcsc.kernel.metrics) against the reference statistics."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .. import metrics
from ..errors import InputError
from ..families import check_source, family_for
from ..families.base import Family
from ..features import load_features
from ..fid import Reference, load_reference_features, load_stats
from ..io import sha256
from ..models import check_trail
from ..trail import ChunkedTrail, FlatLoader, Trail, check_state, combine, flatten_state
from .latents import Latents, make_labels, make_noise

if TYPE_CHECKING:
    from .objective import Objective

WORST_FID = 1e6  # fitness of a candidate whose samples are not finite


def open_trail(manifest: str | Path, model: str | None = None, cfg: dict | None = None) -> Trail:
    """The trail of `manifest`, checked to hold `model` (if given) and to be the trail `cfg` names
    (lcsc.kernel.families.check_source) before any of its files is read."""
    # Opened unhashed: verifying hashes every checkpoint, so the cheap checks that this is the
    # right trail come first.
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
        # The compiled forward reads the parameters that each candidate rewrites in place.
        if compile:
            self.model.forward = torch.compile(self.model.forward)
        # Built after .to(device): moving the model later would cut its parameters off the flat vector.
        self.loader = FlatLoader(self.model)
        self.sampler = family.sampler
        self.features = load_features(features, device, cfg)
        self.ref_mu, self.ref_sigma = load_stats(stats, self.features.hash)
        # The reference's covariance factor is computed once, here.
        self.reference = Reference(self.ref_mu, self.ref_sigma, self.device)
        self.stats_hash = sha256(stats)[:16]
        self.stats_path = Path(stats)
        self._ref_features: torch.Tensor | None | bool = False  # False: not read yet
        self._W: torch.Tensor | None = None
        # Decided once: the trail is streamed only when it would take more than half the free device
        # memory, which leaves the rest for sampling and the feature network.
        if chunk_mb is None and self.device.type == "cuda":
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
            # An unconditional sampler need not take labels at all.
            if part.labels is None:
                out.append(self.sampler.sample(self.model, part.noise, nfe))
            else:
                out.append(self.sampler.sample(self.model, part.noise, nfe, labels=part.labels))
        return torch.cat(out)

    def embed(
        self, flat: torch.Tensor | None, nfe: int, noise: Latents | torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(features, images) of the samples; features None when samples or features are not finite."""
        images = self.sample(flat, nfe, noise)
        # A non-finite sample would make the statistics NaN, and a NaN fitness compares false with
        # everything, so the optimizer could not rank it: such a candidate gets WORST_FID instead.
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
        """FID, and where the stats keep reference features, each quality metric of lcsc.kernel.metrics
        (KID, precision and recall) of the samples in the same feature space; with non-finite samples,
        FID WORST_FID alone."""
        features, images = self.embed(flat, nfe, noise)
        if features is None:
            return {metrics.FID.name: WORST_FID}, images
        out = {metrics.FID.name: self.reference.fid(features)}
        if self.reference_features is not None:
            fake = features.to(self.device, torch.float64)
            for compute in metrics.computations():
                out |= compute(self.reference_features, fake)
        return out, images
