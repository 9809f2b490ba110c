"""The paper's claims about LCSC against the other variants, stated in numbers and judged against the noise."""

from __future__ import annotations

from .. import variants
from .common import best_baselines, best_ema, fmt, kept_emas
from .noise import NO_NOISE, Noise


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
    return out + (_cheaper_than_emas(lcsc, emas, nfes, noise) if emas else [])


def _cheaper_than_emas(
    lcsc: dict[int, float], emas: dict[str, dict[int, float]], nfes: list[int], noise: Noise
) -> list[str]:
    """For each NFE n, the fewest NFEs at which LCSC matches or beats the best kept EMA at n."""
    out = []
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
