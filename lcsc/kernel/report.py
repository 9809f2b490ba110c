"""The report's tables and sentences: FIDs per variant and NFE in, markdown out, with the claims
of the paper (and where they fail) stated in numbers. Kept free of torch (the report's env has none)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import variants

TITLES = {"dm": " (diffusion model)", "cm_cd": " (consistency distillation)", "cm_ct": " (consistency training)"}


def fmt(x: float) -> str:
    return f"{x:.2f}"


def best_baselines(results: dict[str, dict[int, float]], nfes: list[int]) -> dict[int, str]:
    """The best variant other than lcsc at each NFE (none when lcsc is the only one)."""
    others = [v for v in results if v != variants.LCSC]
    return {n: min(others, key=lambda v: results[v][n]) for n in nfes} if others else {}


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


def markdown_table(results: dict[str, dict[int, float]], nfes: list[int], spread: Spread | None = None) -> str:
    """Variant x NFE table: the best value of each column in bold, the best baseline marked †;
    with `spread`, each mean followed by ± its standard deviation over the runs."""
    best = {n: min(r[n] for r in results.values()) for n in nfes}
    base = best_baselines(results, nfes)
    lines = [
        "| variant | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "| --- | " + " | ".join("---:" for _ in nfes) + " |",
    ]
    for v, r in results.items():
        cells = []
        for n in nfes:
            cell = f"**{fmt(r[n])}**" if r[n] == best[n] else fmt(r[n])
            if spread and n in spread.get(v, {}):
                cell += f" ± {fmt(spread[v][n][0])}"
            cells.append(cell + (" †" if base.get(n) == v else ""))
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


def kid_text(kid: float) -> str:
    """KID to 3 significant digits, whole numbers from 100 on (no exponent in a table)."""
    return f"{kid:.0f}" if abs(kid) >= 100 else f"{kid:.3g}"


def quality_table(quality: dict[str, dict[str, dict[int, float]]], nfes: list[int]) -> str:
    """Variant x NFE table of KID (3 significant digits: its scale is the feature space's, cubed,
    so 0.00x in Inception's and hundreds in a trained classifier's), precision and recall (k = 3)."""
    lines = [
        "| variant | " + " | ".join(f"NFE {n}: KID / P / R" for n in nfes) + " |",
        "| --- | " + " | ".join("---:" for _ in nfes) + " |",
    ]
    for v, q in quality.items():
        cells = [f"{kid_text(q['kid'][n])} / {q['precision'][n]:.2f} / {q['recall'][n]:.2f}" for n in nfes]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_rows(truncated: dict[float, dict], full: dict[str, dict[int, float]], nfe: int) -> list[dict]:
    """The training-cost curve of one model: for each fraction (its trail's `kept` record and FIDs),
    LCSC's FID at `nfe` on the truncated trail, that trail's last, the full run's last and best
    EMA, and the implied speed-up where LCSC matches the best of the full run's two."""
    ema = best_ema(full, nfe)
    refs = {variants.LAST: full[variants.LAST][nfe]} | ({ema: full[ema][nfe]} if ema else {})
    best_name = min(refs, key=refs.get)
    rows = []
    for fraction, t in sorted(truncated.items()):
        lcsc = t["results"][variants.LCSC][nfe]
        kept = t["kept"]
        rows.append(
            {
                "fraction": fraction,
                "checkpoints": kept["checkpoints"],
                "steps": kept["steps"],
                "total": kept["total"],
                "searched": lcsc,
                "part_last": t["results"][variants.LAST][nfe],
                "full_last": refs[variants.LAST],
                "full_ema": refs.get(ema),
                "ema": ema,
                "reference": best_name,
                "speedup": kept["total"] / kept["steps"] if lcsc <= refs[best_name] else None,
            }
        )
    return rows


def cost_table(rows: list[dict], nfe: int) -> str:
    ema = rows[0]["ema"] if rows else None
    lines = [
        f"| fraction | checkpoints | steps | lcsc at NFE {nfe} | that trail's last | full run's last | "
        f"full run's {ema or 'EMA'} | speed-up |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        speed = f"{r['speedup']:.1f}x" if r["speedup"] else "none"
        lines.append(
            f"| {r['fraction']:g} | {r['checkpoints']} | {r['steps']} of {r['total']} | {fmt(r['searched'])} | "
            f"{fmt(r['part_last'])} | {fmt(r['full_last'])} | "
            f"{fmt(r['full_ema']) if r['full_ema'] is not None else '-'} | {speed} |"
        )
    return "\n".join(lines)


def cost_curve_claim(model: str, rows: list[dict], nfe: int) -> str:
    """The largest training speed-up the curve shows, or that none of its fractions reaches the full run."""
    reached = [r for r in rows if r["speedup"]]
    ref = rows[0]["reference"]
    target = rows[0]["full_last"] if ref == variants.LAST else rows[0]["full_ema"]
    if not reached:
        best = min(rows, key=lambda r: r["searched"])
        fractions = ", ".join(f"{r['fraction']:g}" for r in rows)
        return (
            f"Training cost, {model}: on none of the truncated trails (fractions {fractions}) "
            f"does LCSC reach the full run's best ({ref}, {fmt(target)}) at {nfe} NFE; the closest is "
            f"{fmt(best['searched'])} at fraction {best['fraction']:g}: no training speed-up shown."
        )
    top = max(reached, key=lambda r: r["speedup"])
    return (
        f"Training cost, {model}: LCSC over the first {top['fraction'] * 100:g}% of training ({top['steps']} of "
        f"{top['total']} iterations) scores {fmt(top['searched'])} at {nfe} NFE, at or below the full run's best "
        f"({ref}, {fmt(target)}): a {top['speedup']:.1f}x training speed-up."
    )


def kept_emas(results: dict[str, dict[int, float]]) -> list[str]:
    """The variants that are EMAs kept during training."""
    return [v for v in results if variants.source(v) == variants.TRAIL]


def best_ema(results: dict[str, dict[int, float]], nfe: int) -> str | None:
    """The kept EMA with the lowest FID at `nfe` (None when there is none)."""
    emas = kept_emas(results)
    return min(emas, key=lambda v: results[v][nfe]) if emas else None


def consistency_claim(
    results: dict[str, dict[int, float]], search_nfe: int, nfes: list[int], noise: Noise = NO_NOISE
) -> str | None:
    """The paper's consistency-model claim, measured: LCSC at the search NFE (1 by default) against
    the base model (the last checkpoint and the best EMA) at the next NFE of the sweep (2)."""
    more = [n for n in nfes if n > search_nfe]
    if not more:
        return None
    m, n = search_nfe, min(more)
    lcsc, last = results[variants.LCSC][m], results[variants.LAST][n]
    ema = best_ema(results, n)
    # LCSC at m against the others at n: a win only beyond the noise (the threshold is never negative)
    beats_last = last - lcsc > noise.threshold(variants.LCSC, variants.LAST, n)
    beats_ema = ema is None or results[ema][n] - lcsc > noise.threshold(variants.LCSC, ema, n)
    versus = f"the last checkpoint at {n} NFE scores {fmt(last)}" + (
        f" and the best EMA at {n} NFE ({ema}) {fmt(results[ema][n])}" if ema else ""
    )
    if beats_last and beats_ema:
        verdict = f"LCSC at {m} NFE beats the base model at {n} NFE: the paper's claim holds here"
    elif beats_last:
        verdict = (
            f"LCSC at {m} NFE beats the last checkpoint but not the best EMA at {n} NFE: "
            "the paper's claim holds only against the last checkpoint here"
        )
    else:
        verdict = (
            f"LCSC at {m} NFE does NOT beat the base model at {n} NFE"
            + (" by more than the noise" if noise is not NO_NOISE and lcsc < last else "")
            + ": the paper's claim does not hold here"
        )
    return (
        f"Paper's claim, LCSC at {m} NFE vs the base model at {n} NFE: LCSC scores {fmt(lcsc)} at {m} NFE; "
        f"{versus}. {verdict} (evaluation seeds the search never saw)."
    )


def cost_claim(
    model: str, truncated: dict[str, dict[int, float]], full: dict[str, dict[int, float]], nfe: int, kept: dict
) -> str:
    """The training-cost experiment: LCSC over the first part of a trail against the full run."""
    steps, total = kept["steps"], kept["total"]
    lcsc = truncated[variants.LCSC][nfe]
    ema = best_ema(full, nfe)
    refs = {variants.LAST: full[variants.LAST][nfe]} | ({ema: full[ema][nfe]} if ema else {})
    best_name = min(refs, key=refs.get)
    text = (
        f"LCSC over the first {kept['fraction'] * 100:g}% of {model}'s training ({kept['checkpoints']} checkpoints, "
        f"steps up to {steps} of {total}) scores FID {fmt(lcsc)} at {nfe} NFE; that trail's own last "
        f"checkpoint scores {fmt(truncated[variants.LAST][nfe])}, and the full run's last "
        f"{fmt(full[variants.LAST][nfe])}" + (f" and its best EMA ({ema}) {fmt(full[ema][nfe])}" if ema else "") + ". "
    )
    if lcsc <= refs[best_name]:
        return text + (
            f"It matches or beats the full run's best ({best_name}) with {steps} of {total} training "
            f"iterations: an implied training speed-up of {total}/{steps} = {total / steps:.1f}x."
        )
    return text + (
        f"It does not reach the full run's best ({best_name}, {fmt(refs[best_name])}), so this run "
        f"implies no training speed-up at this fraction."
    )


def claims(
    results: dict[str, dict[int, float]], search_nfe: int, nfes: list[int], noise: Noise = NO_NOISE
) -> list[str]:
    """Plain sentences comparing LCSC with the last checkpoint and the best EMA, with numbers; with
    `noise`, a win only where the gap is beyond it ("no measurable difference" otherwise)."""
    lcsc, last = results[variants.LCSC], results[variants.LAST]
    emas = {v: results[v] for v in kept_emas(results)}
    out = []
    at = search_nfe
    if emas:
        best_ema = min(emas, key=lambda v: emas[v][at])
        below = lcsc[at] < min(last[at], emas[best_ema][at])
        verdict = "below" if below else "NOT below"
        if below and not (
            noise.beats(results, variants.LCSC, variants.LAST, at)
            and noise.beats(results, variants.LCSC, best_ema, at)
        ):
            verdict = "below, but not by more than the noise (no measurable difference from at least one of)"
        out.append(
            f"At the search NFE {at}, LCSC's FID {fmt(lcsc[at])} is {verdict} both the last "
            f"checkpoint's {fmt(last[at])} and the best EMA's ({best_ema}) {fmt(emas[best_ema][at])}, "
            f"on evaluation seeds the search never saw."
        )
    base = best_baselines(results, nfes)[at]
    verdict = "beats" if lcsc[at] < results[base][at] else "does NOT beat"
    if lcsc[at] < results[base][at] and not noise.beats(results, variants.LCSC, base, at):
        verdict = "shows no measurable difference from"
    out.append(f"At NFE {at} LCSC {verdict} the best baseline, {base} ({fmt(results[base][at])}).")
    for v in emas:
        profile = variants.kept_ema_profile(v)
        if profile in results:
            out.append(
                f"The EMA {variants.kept_ema_decay(v)} kept during training scores {fmt(emas[v][at])} at "
                f"NFE {at}; the same EMA computed afterwards from the sparse trail ({profile}) scores "
                f"{fmt(results[profile][at])}."
            )
    if emas:
        for n in nfes:
            ref = min(r[n] for r in emas.values())
            cheaper = [m for m in nfes if m < n and lcsc[m] <= ref]
            if cheaper:
                m = min(cheaper)
                within = noise.floor is not None and ref - lcsc[m] <= noise.floor
                out.append(
                    f"LCSC at NFE {m} (FID {fmt(lcsc[m])}) matches or beats the best EMA at "
                    f"NFE {n} (FID {fmt(ref)})" + (": a match, the gap is within the noise floor." if within else ".")
                )
    return out


def versus_best_baseline(results: dict[str, dict[int, float]], nfes: list[int], noise: Noise = NO_NOISE) -> str | None:
    """One sentence on LCSC against the best baseline at every NFE: where it wins, where it loses
    and by how much (every variant but lcsc counts as a baseline, the greedy soup too)."""
    if variants.LCSC not in results:
        return None
    base = best_baselines(results, nfes)
    if not base:
        return None
    lcsc = results[variants.LCSC]
    wins = [n for n in nfes if lcsc[n] < results[base[n]][n]]
    ties = [n for n in wins if not noise.beats(results, variants.LCSC, base[n], n)]
    wins = [n for n in wins if n not in ties]
    losses = [n for n in nfes if n not in wins and n not in ties]

    def at(n: int) -> str:
        ref = results[base[n]][n]
        return f"NFE {n} ({fmt(lcsc[n])} vs {base[n]} {fmt(ref)}, {lcsc[n] - ref:+.2f})"

    tied = (
        f"; no measurable difference (a smaller gap than the noise) at {', '.join(at(n) for n in ties)}"
        if ties
        else ""
    )
    if not losses and not ties:
        return (
            f"Against the best baseline at each NFE, LCSC wins at every evaluated NFE: "
            f"{', '.join(at(n) for n in nfes)}."
        )
    if not losses:
        return (
            f"Against the best baseline at each NFE, LCSC wins at "
            f"{', '.join(at(n) for n in wins) if wins else 'no evaluated NFE'}{tied}."
        )
    text = f"Against the best baseline at each NFE, LCSC LOSES at {', '.join(at(n) for n in losses)}"
    return (
        text
        + (f"; it wins at {', '.join(at(n) for n in wins)}" if wins else "; it wins at no evaluated NFE")
        + tied
        + "."
    )


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


def nfe_saving_claim(results: dict[str, dict[int, float]], nfes: list[int]) -> str | None:
    """The paper's diffusion claim in its own terms: the largest measured saving, LCSC at m NFE at
    or below the best baseline at n > m, both evaluated (no interpolation)."""
    base = best_baselines(results, nfes)
    if variants.LCSC not in results or not base:
        return None
    lcsc = results[variants.LCSC]
    pairs = [(n / m, m, n) for n in nfes for m in nfes if m < n and lcsc[m] <= results[base[n]][n]]
    if not pairs:
        return (
            "NFE saving: at no evaluated NFE does LCSC reach the best baseline's FID at a larger evaluated "
            "NFE; the table gives the interpolated NFEs."
        )
    _, m, n = max(pairs)
    return (
        f"NFE saving: LCSC at {m} NFE ({fmt(lcsc[m])}) matches or beats the best baseline at {n} NFE "
        f"({base[n]}, {fmt(results[base[n]][n])}), {n / m:.2f}x fewer network evaluations, both measured."
    )


def coefficient_stats(coefficients: dict[str, list[float]]) -> str:
    """Sum, L2 norm and largest magnitude of each variant's coefficients over the trail."""
    lines = [
        "| variant | sum | L2 norm | largest abs coefficient | negative coefficients |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for v, c in coefficients.items():
        norm = math.sqrt(sum(x * x for x in c))
        lines.append(
            f"| {v} | {sum(c):.3f} | {norm:.3f} | {max(abs(x) for x in c):.3f} | "
            f"{sum(1 for x in c if x < 0)} of {len(c)} |"
        )
    return "\n".join(lines)


def monotone_claim(lcsc: dict[int, float], nfes: list[int], floor: float | None = None) -> str | None:
    """Whether LCSC gets no worse with more steps (a consistency model's second step should help);
    with `floor`, worse only by more than the noise floor."""
    pts = sorted(nfes)
    worse = [(a, b) for a, b in zip(pts, pts[1:]) if lcsc[b] - lcsc[a] > (floor or 0.0)]
    if len(pts) < 2:
        return None
    if not worse:
        return (
            f"LCSC gets no worse with more steps{' (beyond the noise floor)' if floor is not None else ''}: "
            f"{', '.join(f'{fmt(lcsc[n])} at {n}' for n in pts)}."
        )
    a, b = worse[0]
    return (
        f"LCSC is WORSE at {b} NFE ({fmt(lcsc[b])}) than at {a} NFE ({fmt(lcsc[a])}): "
        "more steps do not help the searched combination here."
    )


def sampler_line(settings: dict) -> str:
    """What a model was sampled with, from its sampler's settings (as evaluate records them): the
    sampler's name, and a clip lcsc adds to match the run's own pipeline."""
    text = f"sampler: {settings.get('sampler', 'unknown')}"
    clip = settings.get("x0_clip")
    if clip is not None:
        text += (
            f", its predicted clean image clipped to [-{clip:g}, {clip:g}] at every step as the run's own "
            "pipeline clips it (the scheduler config's clip_sample)"
        )
    return text


def feature_space_line(kind: str, tag: str) -> str:
    """What a FID in this run's feature space can be compared with."""
    if kind in ("classifier", "autoencoder"):
        return (
            f"The FIDs are in a feature space trained on this run's own data ({tag}: features.kind {kind}); "
            "they compare the variants of this run with each other, never with any published FID or with "
            "another run's."
        )
    return (
        f"The FIDs are in the {tag} feature space; they compare with other projects' only at the same reference "
        "set, image size and sample count."
    )
