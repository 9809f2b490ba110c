"""Stage export: a variant's merged weights, taken back where the trail came from.

`<model>/export/<variant>/` holds the weights in the trail's own format, as its family writes them
(lcsc.kernel.families; diffusers: a `save_pretrained` UNet folder and a `DDPMPipeline` folder, or a
`ConsistencyModelPipeline` folder; state_dict: the input's key path, prefix and dtypes, in its file
format; lcsc: safetensors), `coefficients.json`, and a model card `README.md` with the
evaluation's FIDs against last and the kept EMAs, the trail's fingerprint, the search settings, how
to load it and how to reproduce it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..kernel import variants
from ..kernel.errors import ConfigError, InputError
from ..kernel.families import family_for
from ..kernel.io import read_json, write_json, write_text
from ..kernel.models import nfe_list
from ..kernel.paths import feature_tag
from ..kernel.report import (
    Noise,
    evaluation_floor,
    evaluation_spread,
    feature_space_line,
    noise_line,
    sampler_line,
    verdicts,
)
from ..kernel.scoring import open_trail
from ..kernel.tensors import os_errors
from ..kernel.trail import FlatLoader, check_state, flatten_state

NAME = "export"
CARD, COEFFICIENTS, SAMPLES = "README.md", "coefficients.json", "samples.png"


@dataclass(frozen=True)
class Paths:
    manifest: Path
    evaluations: tuple[Path, ...]  # the model's evaluation JSONs: the variant's, last's and the kept EMAs'
    out: Path  # the export folder
    coefficients: Path | None = None  # the search's, for lcsc
    baselines: Path | None = None  # the baselines stage's, for a profile
    real: Path | None = None  # a grid of reference images, the first panel of the card's picture


def run(cfg: dict, paths: Paths, model: str, variant: str, device=None, stage_run=None) -> Path:
    trail = open_trail(paths.manifest, model, cfg)
    family = family_for(trail, cfg)
    net = family.build_network()
    loader = FlatLoader(net)  # the network's own storage: the combination is written straight into it
    c = variants.coefficients_of(trail, variant, paths.coefficients, paths.baselines, cfg["baselines"])
    if c is None:  # a kept EMA: its own file
        path = variants.checkpoint_file(trail, variant)
        ema = family.load_checkpoint(path)
        check_state(ema, loader.shapes, path)
        loader.load(flatten_state(ema, loader.keys))
    else:
        loader.combine_into(trail.stack(loader.shapes, load=family.load_checkpoint), c)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    out = Path(paths.out)
    out.mkdir(parents=True, exist_ok=True)
    kind = trail.manifest.get("kind", "dm")
    with os_errors(out):  # diffusers' save_pretrained writes through safetensors too
        written = family.export(cfg, net, state, out)
    fingerprint = hashlib.sha256("".join(trail.fingerprint).encode()).hexdigest()
    write_json(
        out / COEFFICIENTS,
        {
            "model": model,
            "variant": variant,
            "coefficients": c,
            "steps": trail.steps,
            "files": [trail.checkpoint_path(i).as_posix() for i in range(len(trail))],
            "trail_sha256": trail.fingerprint,
            "trail_fingerprint": fingerprint,
        },
    )
    evaluations = [read_evaluation(p) for p in paths.evaluations]
    sampler = sampler_line(family.sampler.settings(None)).removeprefix("sampler: ")
    picture = _samples_picture(model, variant, paths.evaluations, evaluations, out / SAMPLES, paths.real)
    write_text(
        out / CARD,
        model_card(cfg, model, variant, kind, sampler, written, evaluations, fingerprint, len(trail), family.loading)
        + picture,
    )
    print(f"[export] {model}/{variant}: {', '.join(written)} in {out}")
    if stage_run is not None:
        # Not the dot files: Snakemake marks the folder it declared with .snakemake_timestamp.
        for path in sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")):
            stage_run.log_artifact(path, f"export/{variant}/{path.parent.relative_to(out).as_posix()}".rstrip("/."))
        if cfg["export"]["register"]:
            version = stage_run.register_model(cfg["export"]["register"], f"export/{variant}")
            if version:
                print(f"[export] registered as {cfg['export']['register']} version {version}")
    return out


def _samples_picture(
    model: str, variant: str, files, evaluations: list[dict], out: Path, real: Path | None = None
) -> str:
    """Real images, then the exported variant's samples, last's and the kept EMAs', each from the
    same noise (the grid each evaluate job saved beside its JSON), as the model card's picture; ""
    where a grid is missing or unreadable (the card then goes without it)."""
    grids = {e["variant"]: Path(f).with_suffix(".png") for f, e in zip(files, evaluations) if e.get("model") == model}
    order = [variant, variants.LAST, *[v for v in grids if variants.kept_ema_decay(v) is not None]]
    rows = {v: grids[v] for v in dict.fromkeys(order) if v in grids}
    if len(rows) < 2 or not all(p.is_file() for p in rows.values()):
        return ""
    from ..kernel.plots import side_by_side  # matplotlib: only when there is a picture to draw

    title = f"{model}: {', '.join(rows)} from the same noise"
    if real is not None and real.is_file():  # real images first, where there are any
        rows = {"real images": real, **rows}
    try:
        side_by_side(rows, out, title)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for a file that is no image
        print(f"[export] no samples picture in the model card: a sample grid is not a readable PNG ({exc})")
        return ""
    lead = "Real images, then the" if "real images" in rows else "The"
    return f"\n## Samples\n\n{lead} same noise through each variant, at the search NFE:\n\n![samples]({out.name})\n"


def read_evaluation(path: Path) -> dict:
    """An evaluate stage's JSON, with the keys and types the model card reads; anything else is
    an InputError naming the file."""
    e = read_json(path, "rerun the evaluate stage", keys=("model", "variant", "fid", "samples", "seed"))
    fid = e["fid"]
    ok = (
        isinstance(e["model"], str)
        and isinstance(e["variant"], str)
        and isinstance(fid, dict)
        and fid
        and all(
            isinstance(k, str) and k.isdigit() and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in fid.items()
        )
        and all(isinstance(e[k], int) and not isinstance(e[k], bool) for k in ("samples", "seed"))
    )
    if not ok:
        raise InputError(
            f"{path}: not an evaluation the evaluate stage writes (model and variant names, fid as "
            "{NFE: number}, samples and seed as integers); rerun the evaluate stage"
        )
    return e


def model_card(
    cfg: dict,
    model: str,
    variant: str,
    kind: str,
    sampler: str,
    written: list[str],
    evaluations: list[dict],
    fingerprint: str,
    n_checkpoints: int,
    loading: list[str],
) -> str:
    by_variant = {e["variant"]: e for e in evaluations if e.get("model") == model}
    if variant not in by_variant:
        raise ConfigError(f"export: no evaluation of {model}/{variant} among the files passed; run its evaluate job")
    # the variant first, then last and the kept EMAs it is compared with, each once
    shown = [
        v
        for v in (variant, variants.LAST, *[n for n in by_variant if variants.kept_ema_decay(n) is not None])
        if v in by_variant
    ]
    shown = list(dict.fromkeys(shown))
    nfes = sorted({int(n) for e in by_variant.values() for n in e["fid"]})
    e = by_variant[variant]
    lines = [
        f"# {model} / {variant}: a linear combination of saved checkpoints",
        "",
        f"Exported by lcsc from a trail of {n_checkpoints} checkpoints ({kind}); files: {', '.join(written)}.",
        "",
        f"## FID ({e['samples']} samples, evaluation seed {e['seed']}, which the search never saw)",
        "",
        feature_space_line(cfg["features"]["kind"], feature_tag(cfg["features"])),
        "",
        *_fid_table(by_variant, shown, nfes),
        "",
        *_noise_lines(by_variant, shown, variant, nfes),
        *_provenance_lines(cfg["search"], fingerprint, sampler),
        *_usage_lines(model, variant, loading),
    ]
    return "\n".join(lines)


def _fid_table(by_variant: dict, shown: list[str], nfes: list[int]) -> list[str]:
    """One row per shown variant, one column per evaluated NFE (nan where it was not evaluated)."""
    return [
        "| variant | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "| --- | " + " | ".join("---:" for _ in nfes) + " |",
        *[
            f"| {v} | " + " | ".join(f"{by_variant[v]['fid'].get(str(n), float('nan')):.2f}" for n in nfes) + " |"
            for v in shown
        ],
    ]


def _noise_lines(by_variant: dict, shown: list[str], variant: str, nfes: list[int]) -> list[str]:
    """How large the noise of the FIDs is, and which gaps it leaves standing; none with one variant."""
    results = {v: {int(n): f for n, f in by_variant[v]["fid"].items()} for v in shown}
    spread = {v: evaluation_spread(by_variant[v]) for v in shown if evaluation_spread(by_variant[v])}
    floor = evaluation_floor(by_variant[variant])
    # the verdicts compare the variants at the NFEs every one of them was evaluated at
    common = [n for n in nfes if all(n in r for r in results.values())]
    if len(shown) <= 1:
        return []
    return [
        noise_line(floor, spread, common)
        or "No data-vs-data floor was measured (an evaluation older than the floor): the gaps below may be noise.",
        "",
        verdicts(
            results,
            Noise(floor["fid"] if floor else None, spread),
            variant,
            [v for v in shown if v != variant],
            common,
        ),
        "",
    ]


def _provenance_lines(scfg: dict, fingerprint: str, sampler: str) -> list[str]:
    return [
        "## Provenance",
        "",
        f"- trail fingerprint (sha256 of its checkpoints' sha256s): `{fingerprint}`",
        f"- search: {scfg['optimizer']}, budget {scfg['budget']}, "
        f"NFE {', '.join(str(n) for n in nfe_list(scfg['nfe']))}, {scfg['samples']} samples, "
        f"seed {scfg['seed']}, bounds {scfg['bounds']}",
        f"- sampler: {sampler}",
        "",
    ]


def _usage_lines(model: str, variant: str, loading: list[str]) -> list[str]:
    """How to load the export, and how to make it again."""
    return [
        "## Load it",
        "",
        "```python",
        *loading,
        "```",
        "",
        "## Reproduce it",
        "",
        "With the config of this run (its experiment, trail, search and evaluate sections):",
        "",
        "```bash",
        "snakemake --cores all --configfile <config.yaml>",
        f"python -m lcsc export --config <config.yaml> --model {model} --variant {variant}",
        "```",
        "",
        f"The same trail (same fingerprint) and seeds give the same coefficients and FIDs on the same machine and "
        f"torch build. Without any search: `{COEFFICIENTS}` lists every checkpoint file with its coefficient; "
        "theta = sum_i c_i theta_i, combined in float32.",
        "",
    ]
