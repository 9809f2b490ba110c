"""Stage import_trail: a training run of another trainer (any `trail.source` but lcsc: diffusers,
state_dict) -> the same trail manifest as lcsc's own training writes, listing the files where they are.

The source's family (lcsc.kernel.families) finds the checkpoint files and the EMA, reads them and
builds the network they must match; each checkpoint's step is parsed from its path (`trail.pattern`:
digits), the checkpoints are thinned as asked (`trail.every`, `trail.last`), and every kept file is
read once, as data, to check that it lies in `trail.path` (symlinks followed) and has the network's
keys and shapes and finite float tensors; the manifest records each file's sha256, bytes, dtype and
parameter count, so a file changed after the import stops every later stage with its name. Nothing
is copied.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..kernel.checkpoints import check_finite, describe, first_difference
from ..kernel.config import check_glob
from ..kernel.errors import ConfigError, TrailError
from ..kernel.families import family_class
from ..kernel.io import resolve_path, sha256, write_json
from ..kernel.progress import progress
from ..kernel.trail import MANIFEST_FORMAT, check_steps

NAME = "import_trail"
KEEP_LAST = "last"  # trail.last: how many of the last checkpoints to keep


@dataclass(frozen=True)
class Paths:
    manifest: Path  # the imported trail's manifest (results/<experiment>/imported/trail/manifest.json)


def run(cfg: dict, paths: Paths, device=None, stage_run=None) -> dict:
    t = cfg["trail"]
    family = family_class(cfg)  # what depends on the kind of run (and trail.sampler): the family's
    root = resolve_path(t["path"], "trail.path")
    if not root.is_dir():
        raise ConfigError(f"trail.path: {root} is not a folder (the training run's output folder)")
    check_glob(t["files"], "trail.files")
    ema, emas = family.ema_files(t, root)
    files = select(family.checkpoint_files(t, root, exclude=emas), t["every"], t[KEEP_LAST])
    for folder, why in family.skipped_folders(t, root):
        print(f"[import_trail] skipped {folder}: {why}", flush=True)
    if len(files) < 2:
        raise TrailError(
            f"{root}: {len(files)} checkpoint(s) kept of trail.files {family.files_glob(t)!r}; LCSC needs at least 2"
        )
    check_steps(f"{root} (trail.pattern)", [step for step, _ in files])
    check_counts(cfg, len(files), root)
    reader = family.reader(t)
    reference = family.network_state(t, files[-1][1])
    entries = []
    bar = progress(len(files), "import_trail", stream=sys.stdout)
    for step, path in files:
        entries.append({"step": step, **_entry(path, root, reader, reference)})
        bar.update(1)
    bar.close()
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": t["source"],
        "root": str(root),
        "iterations": files[-1][0],
        "source": family.source_record(t),
        "checkpoints": entries,
        "data": {"image_size": cfg["data"]["image_size"], "channels": cfg["data"]["channels"]},
        "ema": [] if ema is None else [{"decay": t["ema_decay"], **_entry(ema, root, reader, reference)}],
        **family.manifest_extra(cfg, root, files[-1][1]),
    }
    write_json(paths.manifest, manifest)
    dtypes = sorted({e["dtype"] for e in entries})
    print(
        f"[import_trail] {len(entries)} checkpoints of {root} (steps {entries[0]['step']}..{entries[-1]['step']}, "
        f"{entries[0]['params']} parameters, {'/'.join(dtypes)}; combined in float32)"
        + (f", EMA {ema.relative_to(root)}" if ema else "")
        + f" -> {paths.manifest}"
    )
    if stage_run is not None:
        stage_run.log_metrics({"checkpoints": len(entries), "parameters": entries[0]["params"]}, step=0)
    return manifest


def select(files: list, every: int, last: int | None) -> list:
    """Every `every`-th checkpoint counted back from the last (always kept), then the last `last`."""
    kept = files[::-1][::every][::-1]
    return kept[-last:] if last else kept


def check_counts(cfg: dict, kept: int, root: Path) -> None:
    """The config's counts of checkpoints fit the trail as imported (a parse cannot know its length)."""
    too_long = [n for n in cfg["baselines"]["lawa_last"] if n > kept]
    if too_long:
        raise ConfigError(
            f"baselines.lawa_last: {too_long[0]} exceeds the {kept} checkpoints imported from {root}; "
            f"use windows of at most {kept} (or keep more checkpoints: trail.every, trail.last)"
        )


def _entry(path: Path, root: Path, reader, reference: dict) -> dict:
    state = reader(path)
    difference = first_difference(state, reference)
    if difference is not None:
        raise TrailError(
            f"{path}: not a checkpoint of the trail's network ({difference}); remove it from the "
            "trail (trail.files) or fix trail.key / trail.prefix / the factory"
        )
    dtype, params = describe(state, path)
    check_finite(state, path)
    return {
        "file": path.relative_to(root).as_posix(),
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "dtype": dtype,
        "params": params,
    }
