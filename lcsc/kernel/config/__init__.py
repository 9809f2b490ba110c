"""Typed, validated configuration: the schema beside this file (config.schema.yaml) fills defaults
and rejects bad keys.

The package: `loading` (the file, the overrides, the schema and `validate`), `cross` (keys that
are each valid but disagree), `search_keys`, `consistency`, `trail` and `names` (the checks of
those keys), `advice` (legal but useless settings: `config_warnings`) and `runtime` (the keys that
say where a job runs, not what it computes).
"""

from .advice import DATASET_SIZES, config_warnings
from .cross import DATASET_CLASSES
from .loading import SCHEMA_PATH, apply_overrides, load_config, validate
from .names import NAME
from .runtime import RUNTIME_KEYS, flatten, runtime_config, with_runtime
from .search_keys import COMMON_OPTIMIZERS, largest_nfe
from .trail import check_glob

__all__ = [
    "COMMON_OPTIMIZERS",
    "DATASET_CLASSES",
    "DATASET_SIZES",
    "NAME",
    "RUNTIME_KEYS",
    "SCHEMA_PATH",
    "apply_overrides",
    "check_glob",
    "config_warnings",
    "flatten",
    "largest_nfe",
    "load_config",
    "runtime_config",
    "validate",
    "with_runtime",
]
