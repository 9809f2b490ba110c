"""The report's tables and sentences: FIDs per variant and NFE in, markdown out, with the claims
of the paper (and where they fail) stated in numbers. Kept free of torch (the report's env has none).

common: the FID format and which variant is best; noise: the floor and seed spread a claim must
beat; tables; claims; savings (the NFE saving); cost (the training-cost experiment); model: what
the report says of one model; document: summary.md, section by section."""

from ..metrics import kid_text
from .claims import claims, consistency_claim, feature_space_line, monotone_claim, sampler_line, versus_best_baseline
from .common import TITLES, best_baselines, best_ema, fmt, kept_emas
from .cost import cost_claim, cost_curve_claim, cost_rows, cost_table
from .document import markdown, quality_sentence, search_line, search_targets
from .model import ModelReport, cost_curves, kept
from .noise import (
    NO_NOISE,
    Noise,
    Spread,
    evaluation_floor,
    evaluation_spread,
    gap_test,
    noise_line,
    significance_claim,
    two_standard_errors,
    verdicts,
)
from .savings import measured_savings, nfe_saving, nfe_saving_claim, nfe_saving_table, nfe_savings
from .tables import coefficient_stats, markdown_table, quality_table

__all__ = [
    "NO_NOISE",
    "TITLES",
    "ModelReport",
    "Noise",
    "Spread",
    "best_baselines",
    "best_ema",
    "claims",
    "coefficient_stats",
    "consistency_claim",
    "cost_claim",
    "cost_curve_claim",
    "cost_curves",
    "cost_rows",
    "cost_table",
    "evaluation_floor",
    "evaluation_spread",
    "feature_space_line",
    "fmt",
    "gap_test",
    "kept",
    "kept_emas",
    "kid_text",
    "markdown",
    "markdown_table",
    "measured_savings",
    "monotone_claim",
    "nfe_saving",
    "nfe_saving_claim",
    "nfe_saving_table",
    "nfe_savings",
    "noise_line",
    "quality_sentence",
    "quality_table",
    "sampler_line",
    "search_line",
    "search_targets",
    "significance_claim",
    "two_standard_errors",
    "verdicts",
    "versus_best_baseline",
]
