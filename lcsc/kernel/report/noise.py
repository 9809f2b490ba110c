"""The noise a claim must beat: the data-vs-data floor and the spread over evaluation seeds, and the
gaps that exceed it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .. import variants
from .common import best_baselines, fmt

Spread = dict[str, dict[int, tuple[float, int]]]  # variant -> NFE -> (standard deviation, runs)


@dataclass(frozen=True)
class Noise:
    """What a gap between two FIDs must exceed to count: the data-vs-data floor (FID of real images
    against real images) and, where the evaluation ran on several seeds, two standard errors."""

    floor: float | None = None
    spread: Spread = field(default_factory=dict)

    def threshold(self, a: str, b: str, n: int) -> float:
        both = n in self.spread.get(a, {}) and n in self.spread.get(b, {})
        return max(self.floor or 0.0, two_standard_errors(self.spread, a, b, n) if both else 0.0)

    def beats(self, results: dict[str, dict[int, float]], a: str, b: str, n: int) -> bool:
        """Whether a's FID is below b's at NFE n by more than the noise."""
        return results[b][n] - results[a][n] > self.threshold(a, b, n)


NO_NOISE = Noise()


def evaluation_spread(res: dict) -> dict[int, tuple[float, int]]:
    """An evaluation's standard deviation at each NFE and its number of runs (none for one run)."""
    runs = res.get("repeats", {}).get("n", 1)
    return {int(n): (sd, runs) for n, sd in res.get("fid_std", {}).items()} if runs > 1 else {}


def evaluation_floor(res: dict) -> dict | None:
    """An evaluation's data-vs-data floor, if it has a readable one (older evaluations have none)."""
    f = res.get("floor")
    ok = isinstance(f, dict) and all(
        isinstance(f.get(k), (int, float)) and math.isfinite(f[k]) for k in ("fid", "n", "of", "samples")
    )
    return f if ok else None


def verdicts(results: dict[str, dict[int, float]], noise: Noise, a: str, others: list[str], nfes: list[int]) -> str:
    """`a` against each of `others` at each NFE, in words: a win or a loss only beyond the noise."""
    out = []
    for b in others:
        for n in nfes:
            gap = results[b][n] - results[a][n]
            limit = noise.threshold(a, b, n)
            word = (
                f"beats {b}"
                if gap > limit
                else f"is worse than {b}"
                if -gap > limit
                else f"shows no measurable difference from {b}"
            )
            out.append(f"{a} {word} at NFE {n} (gap {abs(gap):.2f}, noise {limit:.2f})")
    return "; ".join(out) + "."


def noise_line(floor: dict | None, spread: Spread, nfes: list[int]) -> str | None:
    """The noise a claim must beat, in words: the floor and the evaluation-seed spread."""
    if not floor:
        return None
    text = (
        f"Noise floor: two disjoint sets of {floor['n']} real images score FID {fmt(floor['fid'])} against "
        f"each other (of the data set's {floor['of']}; the evaluation draws {floor['samples']} samples)"
    )
    sds = [sd for v in spread.values() for n, (sd, _) in v.items() if n in nfes]
    if sds:
        runs = next(iter(next(iter(spread.values())).values()))[1]
        text += (
            f"; over {runs} evaluation runs a variant's FID varies by a standard deviation of "
            f"{fmt(min(sds))} to {fmt(max(sds))}"
        )
    else:
        text += "; one evaluation seed, so no seed spread was measured (evaluate.repeats: 2 measures it)"
    return text + (
        ". A gap counts only beyond the floor and two standard errors; a smaller one is reported as "
        "no measurable difference."
    )


def gap_test(results: dict[str, dict[int, float]], spread: Spread, a: str, b: str, n: int) -> tuple[float, float]:
    """(mean of a - mean of b, two standard errors of that difference) at NFE n: 2 sqrt(s_a^2/n_a
    + s_b^2/n_b), from each variant's standard deviation over its runs."""
    return results[a][n] - results[b][n], two_standard_errors(spread, a, b, n)


def two_standard_errors(spread: Spread, a: str, b: str, n: int) -> float:
    """2 sqrt(s_a^2/n_a + s_b^2/n_b) at NFE n, from each variant's deviation over its runs."""
    (sa, na), (sb, nb) = spread[a][n], spread[b][n]
    return 2 * math.sqrt(sa * sa / na + sb * sb / nb)


def significance_claim(results: dict[str, dict[int, float]], spread: Spread, nfes: list[int]) -> str | None:
    """Which of LCSC's gaps to the best baseline at each NFE exceed two standard errors (runs:
    evaluation seeds, times searches for lcsc)."""
    base = best_baselines(results, nfes)
    if (
        variants.LCSC not in results
        or not base
        or not all(n in spread.get(v, {}) for n in nfes for v in (variants.LCSC, *base.values()))
    ):
        return None
    beyond, within = [], []
    for n in nfes:
        gap, two_se = gap_test(results, spread, variants.LCSC, base[n], n)
        (beyond if abs(gap) > two_se else within).append(
            f"NFE {n} ({'LCSC better' if gap < 0 else 'LCSC worse'} by {abs(gap):.2f}, 2 SE {two_se:.2f}, "
            f"vs {base[n]})"
        )
    runs = spread[variants.LCSC][nfes[0]][1], spread[base[nfes[0]]][nfes[0]][1]
    text = (
        f"Error bars (mean ± standard deviation over {runs[0]} lcsc runs and {runs[1]} of each baseline): "
        f"the gap between LCSC and the best baseline exceeds two standard errors at "
        f"{', '.join(beyond) if beyond else 'no evaluated NFE'}"
    )
    return text + (f"; it is within noise at {', '.join(within)}." if within else ".")
