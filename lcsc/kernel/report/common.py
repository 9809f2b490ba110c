"""What the report's tables and sentences share: the FID format, the titles and which variant is best."""

from __future__ import annotations

from .. import variants
from ..metrics import FID

TITLES = {"dm": " (diffusion model)", "cm_cd": " (consistency distillation)", "cm_ct": " (consistency training)"}


def fmt(x: float) -> str:
    """A FID (or its spread), as every table and sentence shows it."""
    return FID.text(x)


def best_baselines(results: dict[str, dict[int, float]], nfes: list[int]) -> dict[int, str]:
    """The best variant other than lcsc at each NFE (none when lcsc is the only one)."""
    others = [v for v in results if v != variants.LCSC]
    return {n: min(others, key=lambda v: results[v][n]) for n in nfes} if others else {}


def kept_emas(results: dict[str, dict[int, float]]) -> list[str]:
    """The variants that are EMAs kept during training."""
    return [v for v in results if variants.source(v) == variants.TRAIL]


def best_ema(results: dict[str, dict[int, float]], nfe: int) -> str | None:
    """The kept EMA with the lowest FID at `nfe` (None when there is none)."""
    emas = kept_emas(results)
    return min(emas, key=lambda v: results[v][nfe]) if emas else None
