"""The NFE saving: how many fewer network evaluations LCSC needs for the best baseline's FID."""

from __future__ import annotations

import math

from .. import variants
from .common import best_baselines, fmt


def _lcsc_nfe_for(lcsc: dict[int, float], nfes: list[int], target: float) -> tuple[float | None, str]:
    """The smallest NFE at which LCSC's FID reaches `target`, reading FID as linear in log NFE
    between evaluated NFEs: (NFE, how: `measured`, `interpolated`, `at most` the smallest evaluated
    NFE, or `not reached` with None)."""
    pts = sorted(nfes)
    if lcsc[pts[0]] <= target:
        return float(pts[0]), "measured" if lcsc[pts[0]] == target else "at most"
    for lo, hi in zip(pts, pts[1:]):
        if lcsc[hi] <= target:
            if lcsc[hi] == target:
                return float(hi), "measured"
            f_lo, f_hi = lcsc[lo], lcsc[hi]
            t = (f_lo - target) / (f_lo - f_hi)
            return float(math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))), "interpolated"
    return None, "not reached"


def nfe_savings(results: dict[str, dict[int, float]], nfes: list[int]) -> list[dict]:
    """For each evaluated NFE n: the best baseline's FID there, and the NFE at which LCSC reaches it."""
    base = best_baselines(results, nfes)
    if variants.LCSC not in results or not base:
        return []
    out = []
    for n in sorted(nfes):
        target = results[base[n]][n]
        m, how = _lcsc_nfe_for(results[variants.LCSC], nfes, target)
        out.append({"nfe": n, "baseline": base[n], "fid": target, "lcsc_nfe": m, "how": how})
    return out


def nfe_saving_table(savings: list[dict]) -> str:
    def cell(s: dict) -> str:
        if s["lcsc_nfe"] is None:
            return "not reached"
        if s["how"] == "interpolated":
            return f"{s['lcsc_nfe']:.1f} (interpolated)"
        return f"{'at most ' if s['how'] == 'at most' else ''}{s['lcsc_nfe']:g}"

    def saving(s: dict) -> str:
        if s["lcsc_nfe"] is None:
            return "none"
        return f"{s['nfe'] / s['lcsc_nfe']:.2f}x" + (" or more" if s["how"] == "at most" else "")

    lines = [
        "| best baseline at NFE | its FID | LCSC reaches that FID at NFE | NFE saving |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {s['nfe']} ({s['baseline']}) | {fmt(s['fid'])} | {cell(s)} | {saving(s)} |" for s in savings]
    return "\n".join(lines)


def measured_savings(results: dict[str, dict[int, float]], nfes: list[int]) -> list[tuple[float, int, int]]:
    """Every measured saving (n / m, m, n): LCSC at m NFE at or below the best baseline at n > m,
    both evaluated (no interpolation). The claim and the run's headline number both read it."""
    base = best_baselines(results, nfes)
    if variants.LCSC not in results or not base:
        return []
    lcsc = results[variants.LCSC]
    return [(n / m, m, n) for n in nfes for m in nfes if m < n and lcsc[m] <= results[base[n]][n]]


def nfe_saving(results: dict[str, dict[int, float]], nfes: list[int]) -> float:
    """The largest measured saving, 1 for none."""
    return max((ratio for ratio, _, _ in measured_savings(results, nfes)), default=1.0)


def nfe_saving_claim(results: dict[str, dict[int, float]], nfes: list[int]) -> str | None:
    """The paper's diffusion claim in its own terms: the largest measured saving, LCSC at m NFE at
    or below the best baseline at n > m, both evaluated (no interpolation)."""
    base = best_baselines(results, nfes)
    if variants.LCSC not in results or not base:
        return None
    pairs = measured_savings(results, nfes)
    if not pairs:
        return (
            "NFE saving: at no evaluated NFE does LCSC reach the best baseline's FID at a larger evaluated "
            "NFE; the table gives the interpolated NFEs."
        )
    _, m, n = max(pairs)
    return (
        f"NFE saving: LCSC at {m} NFE ({fmt(results[variants.LCSC][m])}) matches or beats the best baseline at "
        f"{n} NFE ({base[n]}, {fmt(results[base[n]][n])}), {n / m:.2f}x fewer network evaluations, both measured."
    )
