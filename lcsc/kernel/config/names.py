"""Checks of the names and paths that become folder, file, rule and registry names."""

from __future__ import annotations

import re

from .. import variants
from ..models import models, truncation

# Names that become folder and file names (experiment, models, variants): anchored at both ends,
# so a trailing newline or a path separator never passes.
NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]*\Z")


def name_and_path_checks(cfg: dict) -> list[str]:
    errors = []
    # paths that become (part of) a rule's input or output
    for key in ("results_dir", "data.folder", "features.weights", "features.reference_folder"):
        section, _, name = key.rpartition(".")
        value = (cfg[section] if section else cfg)[name]
        if isinstance(value, str) and any(ch in value for ch in "{}"):
            errors.append(f"{key}: {value!r} holds '{{' or '}}', which Snakemake reads as wildcards; rename it")
    if (
        cfg["mlflow"]["enabled"]
        and cfg["mlflow"]["tracking_uri"] is None
        and any(ch in cfg["results_dir"] for ch in "?#")
    ):
        errors.append(
            f"results_dir: {cfg['results_dir']!r} holds '?' or '#', which end the path of the default "
            "MLflow store's SQLite URI (<results_dir>/mlflow.db); rename it or set mlflow.tracking_uri"
        )
    if errors:
        return errors
    for model in models(cfg):
        names = [model, *variants.names(cfg, model)]
        bad = [n for n in names if not NAME.match(n)]
        if bad:
            errors.append(f"{model}: the names {bad} would not be safe file names (letters, digits, '.', '_', '-')")
        unknown = [v for v in cfg["export"]["variants"] if v not in names[1:]]
        if unknown and truncation(model) is None:
            errors.append(f"export.variants: {unknown} are not variants of {model} ({', '.join(names[1:])})")
    return errors


def registry_checks(cfg: dict) -> list[str]:
    """A name MLflow's model registry takes: not blank, no '/' or ':' (MLflow refuses them), nor a
    name a path would read as another ('.', '..'); no quote or control character either (lcsc
    finds its versions with a registry search, whose filter quotes the name)."""
    name = cfg["export"]["register"]
    if name is None:
        return []
    if (
        not name.strip()
        or any(ch in name for ch in "/:'\"\\")
        or name.startswith(".")
        or any(ord(ch) < 32 or ord(ch) == 127 for ch in name)
    ):
        return [
            f"export.register: {name!r} is not a name MLflow's model registry takes (not blank, no '/', ':', "
            "quotes, backslashes or control characters, not starting with '.'); e.g. lcsc-digits"
        ]
    return []
