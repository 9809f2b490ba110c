"""The training-cost experiment: LCSC over the first part of a trail against the full run."""

from __future__ import annotations

from .. import variants
from .common import best_ema, fmt


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
