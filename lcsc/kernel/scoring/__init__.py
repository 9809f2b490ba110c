"""Scoring: weights -> samples at an NFE -> FID against reference statistics, one way for all.

The baselines and the search score candidates with it on fixed noise (common random numbers);
the evaluate stage scores each variant at every NFE of the sweep on seeds the search never saw.
The fitness settings and keys say what a score depends on, so scores made under other settings
are never compared or reused.
"""

from .evaluator import Evaluator
from .latents import NOISE_LIMIT, Latents, label_seed, labels_drawn, make_labels, make_noise
from .objective import Objective, fitness_key, fitness_settings, simplex_distance
from .scorer import WORST_FID, Scorer, open_trail

__all__ = [
    "NOISE_LIMIT",
    "WORST_FID",
    "Evaluator",
    "Latents",
    "Objective",
    "Scorer",
    "fitness_key",
    "fitness_settings",
    "label_seed",
    "labels_drawn",
    "make_labels",
    "make_noise",
    "open_trail",
    "simplex_distance",
]
