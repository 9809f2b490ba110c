"""Stage truncate_trail: the training-cost experiment's trail, the first part of a model's trail
(a manifest that lists the full run's files; nothing is copied)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..kernel.errors import ConfigError, TrailError
from ..kernel.io import write_json
from ..kernel.models import truncation
from ..kernel.trail import Trail

NAME = "truncate_trail"


@dataclass(frozen=True)
class Paths:
    manifest: Path  # the full trail's manifest
    out: Path  # the truncated trail's manifest


def run(cfg: dict, paths: Paths, model: str, device=None, stage_run=None) -> dict:
    """The manifest of `model`, a truncated name (`<model>_first<percent>`)."""
    fraction = truncation(model)
    if fraction is None:
        raise ConfigError(
            f"--model: {model!r} does not name a truncated trail; pass <model>_first<percent>, e.g. cm_ct_first25"
        )
    manifest = truncate(paths.manifest, fraction, paths.out)
    print(
        f"[truncate_trail] {model}: {len(manifest['checkpoints'])} checkpoints up to step "
        f"{manifest['iterations']} of {manifest['truncated_from']['iterations']}"
    )
    return manifest


def truncate(manifest_path: str | Path, fraction: float, out: str | Path) -> dict:
    """A manifest for the first `fraction` of a trail's training: the checkpoints at steps up to
    fraction x iterations, with paths relative to `out`'s folder (the files are not copied; their
    sha256s are checked on every open, as for any trail). The EMAs kept during training belong to
    the full run, so the truncated trail lists none."""
    source = Trail.open(manifest_path)
    if source.manifest.get("kind", "dm") not in ("dm", "cm"):
        raise TrailError(
            f"{manifest_path}: a trail of kind {source.manifest.get('kind')!r}; the training-cost "
            "experiment truncates the trails trained here (kind dm or cm) only"
        )
    out = Path(out)
    if not isinstance(source.manifest.get("iterations"), int):
        raise TrailError(
            f"{manifest_path}: no iterations (the length of the training); the manifest is damaged: "
            "rerun the stage that wrote the trail"
        )
    limit = fraction * source.manifest["iterations"]
    kept = [c for c in source.manifest["checkpoints"] if c["step"] <= limit]
    if len(kept) < 2:
        raise TrailError(
            f"{manifest_path}: the first {fraction:g} of training (steps up to {limit:g}) holds "
            f"{len(kept)} checkpoint(s); LCSC needs at least 2"
        )
    rel = os.path.relpath(source.root, out.parent)
    manifest = {k: v for k, v in source.manifest.items() if k not in ("checkpoints", "ema", "iterations", "root")}
    manifest |= {
        "root": os.path.relpath(source.files_root, out.parent),
        "iterations": kept[-1]["step"],
        "ema": [],
        "checkpoints": [dict(c, file=f"{rel}/{c['file']}") for c in kept],
        "truncated_from": {
            "manifest": str(Path(manifest_path)),
            "fraction": fraction,
            "iterations": source.manifest["iterations"],
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    missing = [c["file"] for c in manifest["checkpoints"] if not (out.parent / c["file"]).exists()]
    if missing:  # the relative paths must reach the files (their bytes were checked just above)
        raise TrailError(f"{out}: {missing[0]} is not reachable from its folder")
    write_json(out, manifest)
    return manifest
