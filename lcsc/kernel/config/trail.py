"""Checks of an imported trail's keys (its family checks the keys of its own)."""

from __future__ import annotations

import re

from .. import families
from ..errors import ConfigError
from ..models import cost_fractions
from .consistency import consistency_checks


def trail_checks(cfg: dict) -> list[str]:
    """An imported trail needs its folder; its family checks the keys of its own
    (lcsc.kernel.families.config_errors)."""
    t, errors = cfg["trail"], []
    source = t["source"]
    if not t["path"]:
        errors.append(f"trail.path: required with trail.source {source!r} (the training run's folder)")
    if bool(t["ema"]) != (t["ema_decay"] is not None):
        errors.append(
            "trail.ema_decay: give it together with trail.ema (the decay names the variant ema_<decay>)"
            if t["ema"]
            else "trail.ema: trail.ema_decay is set, but no trail.ema names the EMA's files"
        )
    errors += _file_checks(t)
    if cost_fractions(cfg):
        errors.append(
            "cost.fractions: the training-cost experiment truncates trails trained here; set it to [] "
            "(and cost.fraction to null) for an imported trail"
        )
    errors += families.config_errors(cfg)
    if t["sampler"] == "cm" and source in families.SOURCES:
        # an imported consistency model trains nothing here (no modes), and a pipeline that samples
        # at its own noise levels is not bounded by consistency.sampling_sigmas
        errors += consistency_checks(
            dict(cfg, consistency=dict(cfg["consistency"], modes=[])), sigmas=families.samples_with_config_sigmas(cfg)
        )
    return errors


def _file_checks(t: dict) -> list[str]:
    """trail.pattern finds the step in a file name; trail.files stays inside the trail's folder."""
    errors = []
    if t["pattern"] is not None:
        try:
            if re.compile(t["pattern"]).groups != 1:
                errors.append(f"trail.pattern: {t['pattern']!r} must have exactly one group (the step)")
        except re.error as exc:
            errors.append(f"trail.pattern: {t['pattern']!r} is not a regular expression ({exc})")
    try:
        check_glob(t["files"], "trail.files")
    except ConfigError as exc:
        errors.append(str(exc))
    return errors


def check_glob(pattern: str | None, key: str) -> None:
    """A glob of files inside the trail's folder: relative, and never climbing out with `..`."""
    if not pattern:
        return
    parts = pattern.replace("\\", "/").split("/")
    if pattern.startswith(("/", "~")) or re.match(r"[A-Za-z]:", pattern) or ".." in parts:
        raise ConfigError(
            f"{key}: {pattern!r} must be a glob relative to trail.path that stays inside it (no "
            "absolute path, no '..'); move trail.path to the folder that holds the files"
        )
