"""The data-vs-data noise floor of an FID: the distance between two disjoint sets of real images.

Two FIDs of the same kind of samples differ by chance, and two perfect models would still score
above zero: real images against real images give the scale below which a gap says nothing. The
floor here is the FID between two disjoint random halves of the data set's real images (train and
test splits together), each of the evaluation's sample count where the data set holds that many,
else half of it (the report names the size). It is cached by the images' content, the feature
network's hash and the size, so every evaluate job of an experiment computes it once.
"""

from __future__ import annotations

import hashlib
import json
import math

import torch

from .data import content_digest, load_split
from .fid import feature_stats, frechet_distance
from .io import write_json

SEED = 0  # which images fall into each half: fixed, so the floor is the same on every rerun


def data_floor(data_cfg: dict, features, samples: int, cache) -> dict:
    """{"fid", "n" (images in each half), "of" (real images there are), "samples"} for the feature
    extractor `features` and an evaluation of `samples` samples."""
    images = load_split(data_cfg, "all").images
    n = min(samples, len(images) // 2)
    key = hashlib.sha256(f"{content_digest(images)} {features.hash} {n} {SEED}".encode()).hexdigest()[:24]
    path = cache / "floors" / f"{key}.json"
    try:
        cached = json.loads(path.read_text())
        if (
            isinstance(cached, dict)
            and isinstance(cached.get("fid"), float)
            and math.isfinite(cached["fid"])
            and cached.get("n") == n
        ):  # the cache lies in the results folder: a NaN or a stray value is recomputed
            return {**cached, "samples": samples}
    except (OSError, ValueError):
        pass  # computed below: a missing or damaged cache entry only costs time
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SEED))
    a, b = images[order[:n]], images[order[n : 2 * n]]
    fid = float(frechet_distance(*feature_stats(features(a)), *feature_stats(features(b))))
    floor = {"fid": fid, "n": n, "of": len(images)}
    write_json(path, floor)
    return {**floor, "samples": samples}
