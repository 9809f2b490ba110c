"""Stage import_trail: a training run of another trainer (`trail.source` diffusers or state_dict)
-> the same trail manifest as lcsc's own training writes, listing the files where they are.

Each checkpoint's step is parsed from its path (`trail.pattern`: digits), the checkpoints are
thinned as asked (`trail.every`, `trail.last`), and every kept file is read once, as data, to check
that it lies in `trail.path` (symlinks followed) and has the network's keys and shapes and finite
float tensors; the manifest records each file's sha256, bytes, dtype and parameter count, so a file
changed after the import stops every later stage with its name. Nothing is copied.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..kernel.checkpoints import FOREIGN, check_finite, describe, first_difference, read_state
from ..kernel.config import check_glob
from ..kernel.errors import ConfigError, TrailError
from ..kernel.families import source_record
from ..kernel.io import inside, read_json, resolve_path, sha256, write_json
from ..kernel.progress import progress
from ..kernel.tensors import load_tensors
from ..kernel.trail import MANIFEST_FORMAT, check_steps

NAME = "import_trail"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DEFAULT_FILES = {"diffusers": "checkpoint-*/{unet}/" + DIFFUSERS_WEIGHTS, "state_dict": "*.pt"}
KEEP_LAST = "last"  # trail.last: how many of the last checkpoints to keep
DEFAULT_PATTERN = {"diffusers": r"checkpoint-(\d+)", "state_dict": r"(\d+)\D*$"}


@dataclass(frozen=True)
class Paths:
    manifest: Path  # the imported trail's manifest (results/<experiment>/imported/trail/manifest.json)


def run(cfg: dict, paths: Paths, device=None, stage_run=None) -> dict:
    t = cfg["trail"]
    root = resolve_path(t["path"], "trail.path")
    if not root.is_dir():
        raise ConfigError(f"trail.path: {root} is not a folder (the training run's output folder)")
    for key in ("files", "ema"):
        if t[key] and (t["source"] == "state_dict" or key == "files"):
            check_glob(t[key], f"trail.{key}")
    ema = _ema_file(t, root)
    emas = set(root.glob(t["ema"])) if t["source"] == "state_dict" and t["ema"] else set()
    files = select(checkpoint_files(t, root, exclude=emas), t["every"], t[KEEP_LAST])
    for folder, why in skipped_folders(t, root):
        print(f"[import_trail] skipped {folder}: {why}", flush=True)
    if len(files) < 2:
        raise TrailError(f"{root}: {len(files)} checkpoint(s) kept of trail.files {_glob(t)!r}; LCSC needs at least 2")
    check_steps(f"{root} (trail.pattern)", [step for step, _ in files])
    check_counts(cfg, len(files), root)
    reader = _reader(t)
    reference = _network_state(t, files[-1][1])
    entries = []
    bar = progress(len(files), "import_trail", stream=sys.stdout)
    for step, path in files:
        entries.append({"step": step, **_entry(path, root, reader, reference)})
        bar.update(1)
    bar.close()
    manifest = {"format": MANIFEST_FORMAT, "kind": t["source"], "root": str(root), "iterations": files[-1][0],
                "source": source_record(t), "checkpoints": entries,
                "data": {"image_size": cfg["data"]["image_size"], "channels": cfg["data"]["channels"]},
                "ema": [] if ema is None else [{"decay": t["ema_decay"], **_entry(ema, root, reader, reference)}]}
    if t["source"] == "diffusers":
        from ..kernel.families.diffusers import check_unet_fits

        manifest["model_config"] = read_json(files[-1][1].parent / "config.json", "the UNet's config.json is missing")
        check_unet_fits(manifest["model_config"], cfg, files[-1][1].parent / "config.json")
        manifest["scheduler_config"] = _scheduler_config(t, root, cfg["diffusion"]["sampler"])
    else:
        manifest["sampler"] = t["sampler"]
        if t["sampler"] == "cm":
            manifest["consistency"] = {k: cfg["consistency"][k] for k in ("sigma_min", "sigma_max", "sigma_data", "rho")}
    write_json(paths.manifest, manifest)
    dtypes = sorted({e["dtype"] for e in entries})
    print(f"[import_trail] {len(entries)} checkpoints of {root} (steps {entries[0]['step']}..{entries[-1]['step']}, "
          f"{entries[0]['params']} parameters, {'/'.join(dtypes)}; combined in float32)"
          + (f", EMA {ema.relative_to(root)}" if ema else "") + f" -> {paths.manifest}")
    if stage_run is not None:
        stage_run.log_metrics({"checkpoints": len(entries), "parameters": entries[0]["params"]}, step=0)
    return manifest


def _glob(t: dict) -> str:
    return t["files"] or DEFAULT_FILES[t["source"]].format(unet=t["unet"])


def checkpoint_files(t: dict, root: Path, exclude: set = frozenset()) -> list[tuple[int, Path]]:
    """(step, file) of every checkpoint `trail.files` matches (but those in `exclude`), by step."""
    pattern = re.compile(t["pattern"] or DEFAULT_PATTERN[t["source"]])
    found, seen = [], {}
    for path in sorted(root.glob(_glob(t))):
        if not path.is_file() or path in exclude:
            continue
        if not inside(path, root):
            raise TrailError(f"{path}: matched by trail.files {_glob(t)!r} but it lies outside trail.path {root} "
                             "(a symlink leads out); a trail's files stay in its folder: narrow trail.files")
        rel = path.relative_to(root).as_posix()
        match = pattern.search(rel if t["pattern"] or t["source"] == "diffusers" else path.name)
        if match is None:
            raise TrailError(f"{path}: no training step in its path (trail.pattern {pattern.pattern!r}); set "
                             "trail.pattern or trail.files")
        digits = match.group(1)
        if digits is None or not re.fullmatch(r"[0-9]+", digits):
            raise TrailError(f"{path}: trail.pattern {pattern.pattern!r} reads the step as {digits!r}, not as digits; "
                             r"make its group match the step's digits only, e.g. (\d+)")
        step = int(digits)
        if step in seen:
            raise TrailError(f"{path}: step {step} again (also {seen[step]}); narrow trail.files or trail.pattern")
        seen[step] = path
        found.append((step, path))
    if not found:
        raise TrailError(f"{root}: no file matches trail.files {_glob(t)!r}")
    return sorted(found)


def select(files: list, every: int, last: int | None) -> list:
    """Every `every`-th checkpoint counted back from the last (always kept), then the last `last`."""
    kept = files[::-1][::every][::-1]
    return kept[-last:] if last else kept


def _ema_file(t: dict, root: Path) -> Path | None:
    if not t["ema"]:
        return None
    if t["source"] == "diffusers":
        last = checkpoint_files(t, root)[-1][1]  # .../checkpoint-<step>/<unet>/<weights>
        path = last.parent.parent / t["ema"] / DIFFUSERS_WEIGHTS
        if not path.is_file():
            raise TrailError(f"{path}: trail.ema {t['ema']!r} names no EMA folder in the last checkpoint; set trail.ema "
                             "to its folder (unet_ema in diffusers' examples) or null")
        if not inside(path, root):
            raise TrailError(f"{path}: the EMA's weights lie outside trail.path {root} (a symlink leads out); a "
                             "trail's files stay in its folder")
        settings = read_json(path.parent / "config.json", "the EMA's config.json is missing", keys=())
        recorded = settings.get("decay") if isinstance(settings, dict) else None
        if not isinstance(recorded, (int, float, type(None))) or isinstance(recorded, bool):
            raise TrailError(f"{path.parent / 'config.json'}: decay {recorded!r} is not a number; not the config "
                             "diffusers' EMAModel.save_pretrained writes")
        _check_ema_decay(float(t["ema_decay"]), recorded, settings, path.parent / "config.json")
        return path
    emas = checkpoint_files(dict(t, files=t["ema"]), root)
    return emas[-1][1]


EMA_SCHEDULE = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma", "power")


def _check_ema_decay(configured: float, recorded, settings, where: Path) -> None:
    """trail.ema_decay names the kept EMA, so it must be the decay the run's EMA had at its last
    update: with warm-up (or diffusers' default schedule) that is below the recorded maximum until
    late in a run. Equal within 5% of 1 - decay (0.998 for 0.99801)."""
    used = effective_decay(settings)
    if used is None:  # settings without the schedule: only the recorded decay can be compared
        if recorded is not None and float(recorded) != configured:
            raise ConfigError(f"trail.ema_decay: {configured} in the config, but {where} records decay {recorded}")
        return
    if used != configured and (used >= 1 or configured >= 1
                               or abs(math.log((1 - used) / (1 - configured))) > 0.05):
        schedule = ", ".join(f"{k} {settings[k]}" for k in EMA_SCHEDULE if k in settings)
        raise ConfigError(f"trail.ema_decay: {configured} in the config, but the run's EMA averaged with decay "
                          f"{used:.6g} at its last update ({where}: {schedule}); set trail.ema_decay: {used:.4g} "
                          "so that the kept EMA is named for the decay it had")


def effective_decay(settings) -> float | None:
    """The decay diffusers' EMAModel applied at its last update, from the settings its
    save_pretrained records (None where they are incomplete): after `update_after_step`, with
    warm-up 1 - (1 + step / inv_gamma)^-power, else (1 + step) / (10 + step), capped by `decay`
    and floored by `min_decay`."""
    if not isinstance(settings, dict):
        return None
    try:
        decay, low = float(settings["decay"]), float(settings.get("min_decay", 0.0))
        step = max(0, int(settings["optimization_step"]) - int(settings.get("update_after_step", 0)) - 1)
        if step <= 0:
            return 0.0
        if settings.get("use_ema_warmup"):
            value = 1 - (1 + step / float(settings.get("inv_gamma", 1.0))) ** -float(settings.get("power", 2 / 3))
        else:
            value = (1 + step) / (10 + step)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return max(min(value, decay), low)


def skipped_folders(t: dict, root: Path) -> list[tuple[str, str]]:
    """The checkpoint folders of a diffusers run (`checkpoint-<step>/`, with the default
    trail.files) that hold no UNet weights, each with what it lacks: they are left out, and said."""
    if t["source"] != "diffusers" or t["files"]:
        return []
    wanted = f"{t['unet']}/{DIFFUSERS_WEIGHTS}"
    out = []
    for folder in sorted(p for p in root.glob("checkpoint-*") if p.is_dir()):
        if not (folder / wanted).is_file():
            has = sorted(c.name for c in folder.iterdir())[:4]
            out.append((folder.name, f"no {wanted} in it (it holds {', '.join(has) if has else 'nothing'}); "
                        "a checkpoint saved without its UNet, or trail.unet names another folder"))
    return out


def check_counts(cfg: dict, kept: int, root: Path) -> None:
    """The config's counts of checkpoints fit the trail as imported (a parse cannot know its length)."""
    too_long = [n for n in cfg["baselines"]["lawa_last"] if n > kept]
    if too_long:
        raise ConfigError(f"baselines.lawa_last: {too_long[0]} exceeds the {kept} checkpoints imported from {root}; "
                          f"use windows of at most {kept} (or keep more checkpoints: trail.every, trail.last)")


def _reader(t: dict):
    if t["source"] == "diffusers":
        return lambda path: load_tensors(path, fix=FOREIGN)
    return lambda path: read_state(path, t["key"], t["prefix"])


def _network_state(t: dict, last: Path) -> dict:
    """The keys and shapes the network has, which every checkpoint must match."""
    if t["source"] == "diffusers":
        from ..kernel.families.diffusers import unet_from_config

        config_file = last.parent / "config.json"
        net = unet_from_config(read_json(config_file, "the UNet's config.json is missing"), config_file)
    else:
        from ..kernel.families.state_dict import build_from_factory

        net = build_from_factory(t["factory"], t["factory_kwargs"], t["code"])
    return net.state_dict()


def _entry(path: Path, root: Path, reader, reference: dict) -> dict:
    state = reader(path)
    difference = first_difference(state, reference)
    if difference is not None:
        raise TrailError(f"{path}: not a checkpoint of the trail's network ({difference}); remove it from the "
                         "trail (trail.files) or fix trail.key / trail.prefix / the factory")
    dtype, params = describe(state, path)
    check_finite(state, path)
    return {"file": path.relative_to(root).as_posix(), "sha256": sha256(path), "bytes": path.stat().st_size,
            "dtype": dtype, "params": params}


def _scheduler_config(t: dict, root: Path, sampler: str) -> dict:
    from ..kernel.families.diffusers import check_scheduler, scheduler_from_config

    path = Path(t["scheduler"]).expanduser() if t["scheduler"] else root / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        raise ConfigError(f"trail.scheduler: {path} does not exist; give the run's scheduler_config.json (what "
                          "DDPMPipeline.save_pretrained writes under scheduler/)")
    config = read_json(path, "give the run's scheduler_config.json as trail.scheduler")
    scheduler_from_config(config, sampler, path, nfe=1)  # diffusers accepts it: checked here, not at a later stage
    check_scheduler(config, sampler, path)  # and lcsc samples it as the trainer's pipeline does
    return config
