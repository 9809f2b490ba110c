"""The metrics an evaluation measures, one registry for every stage that writes or reads them:
evaluate measures and summarises each, the report tabulates and describes each, the CSV has the
columns they name. Adding a metric is one more Metric in METRICS (and its function, named by
`compute`). Kept free of torch (the report's env has none): a function is imported when it is first called."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


def two_decimals(x: float) -> str:
    return f"{x:.2f}"


def kid_text(kid: float) -> str:
    """KID to 3 significant digits, whole numbers from 100 on (no exponent in a table)."""
    return f"{kid:.0f}" if abs(kid) >= 100 else f"{kid:.3g}"


@dataclass(frozen=True)
class Metric:
    name: str  # the key of the evaluation JSON (and `<name>_std` with repeats)
    words: str  # how the report's sentences name it
    short: str  # its table header
    lower_is_better: bool
    text: Callable[[float], str] = two_decimals  # how a table shows a value
    # "module:function" over (reference features, sample features) returning a dict of metric values
    # (one function may measure several); None for FID, which the reference statistics give
    compute: str | None = None
    source: str | None = None  # the reference the report cites for it
    note: str | None = None  # a caveat the report states with it
    column: str | None = None  # the summary CSV's column at NFE n, formatted with n (None: not in the CSV)


FID = Metric("fid", "FID", "FID", lower_is_better=True, column="nfe{n}")
# KID's scale is the feature space's, cubed: 0.00x in Inception's, hundreds in a trained classifier's
KID = Metric(
    "kid",
    "KID",
    "KID",
    lower_is_better=True,
    text=kid_text,
    compute="lcsc.kernel.quality:kid_metrics",
    note="KID's scale is the feature space's, so compare it between variants only",
)
PR_SOURCE = "k = 3, Kynkäänniemi et al. 2019"
PR = "lcsc.kernel.quality:precision_recall_metrics"
PRECISION = Metric("precision", "precision", "P", lower_is_better=False, compute=PR, source=PR_SOURCE)
RECALL = Metric("recall", "recall", "R", lower_is_better=False, compute=PR, source=PR_SOURCE)

# In the order of the evaluation JSON's keys and the report's columns
METRICS: tuple[Metric, ...] = (FID, KID, PRECISION, RECALL)


def names() -> tuple[str, ...]:
    return tuple(m.name for m in METRICS)


def quality_metrics() -> tuple[Metric, ...]:
    """The metrics measured from reference features (all but FID): an evaluation has them only
    where the reference statistics keep those features."""
    return tuple(m for m in METRICS if m.compute is not None)


def by_name(name: str) -> Metric:
    return next(m for m in METRICS if m.name == name)


def computations() -> list[Callable]:
    """Each quality metric's function, once (precision and recall share one), in METRICS' order."""
    names = list(dict.fromkeys(m.compute for m in quality_metrics()))
    out = []
    for target in names:
        module, _, function = target.partition(":")
        out.append(getattr(importlib.import_module(module), function))
    return out
