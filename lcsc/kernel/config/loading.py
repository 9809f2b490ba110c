"""Reading a config: the YAML file, the overrides, the schema's defaults and its checks."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ..errors import ConfigError
from ..models import imported

# (renamed: validate's flag `cross_checks` would hide it)
from .cross import cross_checks as _cross_checks

# Inside the package (its package data), so an installed lcsc validates as a checkout does.
SCHEMA_PATH = Path(__file__).resolve().with_name("config.schema.yaml")


def _schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def _fill_defaults(schema: dict, instance: dict) -> None:
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict) and "properties" in sub:
            _fill_defaults(sub, instance[key])


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _non_finite(node, path=()) -> list[str]:
    """NaN and infinities pass a JSON schema's range checks (every comparison with NaN is false)."""
    if isinstance(node, dict):
        return [e for k, v in node.items() for e in _non_finite(v, (*path, k))]
    if isinstance(node, list):
        return [e for i, v in enumerate(node) for e in _non_finite(v, (*path, i))]
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{_dotted(path)}: {node} is not a finite number"]
    return []


def _schema_errors(schema: dict, cfg: dict) -> list[str]:
    """The schema's complaints, one line per key, sorted by key."""
    validator = jsonschema.Draft7Validator(schema)
    errors = []
    for err in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path))):
        if err.validator == "additionalProperties":
            allowed = sorted(err.schema.get("properties", {}))
            extra = sorted(set(err.instance) - set(allowed))
            for key in extra:
                errors.append(f"{_dotted([*err.absolute_path, key])}: unknown key; allowed here: {', '.join(allowed)}")
        elif err.validator == "anyOf":  # name the accepted forms instead of "not valid under any schema"
            forms = [
                f"{sub['const']!r}"
                if "const" in sub
                else f"a non-empty list of {sub['items'].get('title', sub['items']['type'] + 's')}"
                if sub.get("type") == "array"
                else str(sub.get("type"))
                for sub in err.validator_value
            ]
            errors.append(f"{_dotted(err.absolute_path)}: {err.instance!r} is not one of: {' or '.join(forms)}")
        else:
            errors.append(f"{_dotted(err.absolute_path)}: {err.message}")
    return errors


def validate(config: dict | None, cross_checks: bool = True) -> dict:
    """Return a copy of `config` with defaults filled in; raise ConfigError naming every bad key.

    `cross_checks=False` is for a stage's slice of an already validated config, whose other
    sections hold defaults that need not agree with each other.
    """
    cfg = copy.deepcopy(config or {})
    if not isinstance(cfg, dict):
        raise ConfigError(f"<top level>: the config must be a mapping, got {type(cfg).__name__}")
    schema = _schema()
    if isinstance(cfg.get("trail"), dict) and isinstance(cfg.get("evaluate", {}), dict) and imported(cfg):
        # one evaluation seed cannot tell a win from that seed's luck: an imported run defaults to two
        cfg.setdefault("evaluate", {}).setdefault("repeats", 2)
    _fill_defaults(schema, cfg)
    errors = _schema_errors(schema, cfg) + _non_finite(cfg)
    # the cross-key checks read keys the schema has checked: they run on a config it accepts only
    if not errors and cross_checks:
        errors = _cross_checks(cfg)
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return cfg


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Read a YAML config file (or none: all defaults), apply overrides, validate."""
    cfg: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as fh:  # bytes: PyYAML reports a file that is not text as a YAML error
            cfg = yaml.safe_load(fh) or {}
        if not isinstance(cfg, dict):
            raise ConfigError(f"{path}: the config must be a mapping of keys, got a YAML {type(cfg).__name__}")
    return validate(apply_overrides(cfg, overrides))


def apply_overrides(cfg: dict, overrides: dict | None) -> dict:
    """Set dotted keys in place: {'train.iterations': 100} -> cfg['train']['iterations'] = 100."""
    for dotted, value in (overrides or {}).items():
        node = cfg
        *parents, last = dotted.split(".")
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(parents[: i + 1])}: holds {node!r}, not a section; cannot set {dotted}")
        node[last] = value
    return cfg
