"""Run-time keys: where and how a job runs, not what it computes."""

from __future__ import annotations

import copy
from typing import Any

from ..errors import ConfigError

# Keys that say where and how a job runs, not what it computes: they reach a stage at run time
# (`runtime_config`) and are never part of a stage's slice, so changing them reruns no job.
RUNTIME_KEYS = (
    ("experiment",),
    ("results_dir",),
    ("device",),
    ("mlflow",),
    ("search", "devices"),
    ("search", "trail_chunk_mb"),
    ("data", "root"),
    ("data", "download"),
    ("features", "cache_dir"),
    ("train", "gpus"),
    ("consistency", "train", "gpus"),
)


def runtime_config(cfg: dict) -> dict:
    """The RUNTIME_KEYS of a validated config, nested as in the config."""
    out: dict[str, Any] = {}
    for path in RUNTIME_KEYS:
        node, dst = cfg, out
        for key in path[:-1]:
            node, dst = node[key], dst.setdefault(key, {})
        dst[path[-1]] = copy.deepcopy(node[path[-1]])
    return out


def with_runtime(cfg: dict, runtime: dict, source: str = "--runtime-json") -> dict:
    """`cfg` (a stage's slice) with the runtime keys of `runtime` set; any other key is refused,
    with the `source` of `runtime` named (the flag, or the environment variable the workflow sets)."""
    out = copy.deepcopy(cfg)
    allowed = {".".join(p) for p in RUNTIME_KEYS}
    for dotted, value in flatten(runtime).items():
        if dotted not in allowed and not any(dotted.startswith(a + ".") for a in allowed):
            raise ConfigError(f"{source}: {dotted}: not a run-time key (those are {', '.join(sorted(allowed))})")
    for path in RUNTIME_KEYS:
        node = runtime
        for key in path:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            dst = out
            for key in path[:-1]:
                dst = dst.setdefault(key, {})
            dst[path[-1]] = copy.deepcopy(node)
    return out


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for MLflow params: {'train': {'lr': 1}} -> {'train.lr': 1}."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
