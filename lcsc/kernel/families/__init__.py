"""Model families and the registry that picks one. Trails trained here have the manifest kind
`dm` (the VP diffusion model) or `cm` (the consistency model); an imported trail's kind is its
`trail.source`, and its family (an `ImportedFamily`) says everything that depends on it: its
`trail` keys, finding, reading and checking its files, its manifest, its network, its sampler and
its export. The stages only call the family.

The registry names modules, not classes, so that the config (which runs without torch) can list
the sources; a family module is imported when a trail of its kind is used, and holds its class as
`FAMILY`. A new source is one module and one entry in `SOURCES` (or `register`). A source whose
runs hold consistency models as well (`trail.sampler: cm`) names their family in `CONSISTENCY`;
a source sampled as the config says (`sampled_by_config`: state_dict) is combined with the dm or
cm family instead.

A manifest lies in the results folder, which is data anyone may have sent: the family is picked
and built from the config. The manifest must agree with it (`check_source`), and nothing a
manifest names is imported or called."""

from __future__ import annotations

import importlib
from functools import cache

from ..errors import ConfigError, TrailError
from ..io import resolve_path
from ..models import TRAINED_HERE

# the manifest kinds of the trails trained here -> the module of their family
TRAINED = {"dm": "lcsc.kernel.families.diffusion", "cm": "lcsc.kernel.families.consistency"}
# trail.source of another trainer's runs -> the module of its family (the manifest's kind is the source)
SOURCES = {"diffusers": "lcsc.kernel.families.diffusers", "state_dict": "lcsc.kernel.families.state_dict"}
# trail.source -> the module of the family of its consistency models (trail.sampler: cm)
CONSISTENCY = {"diffusers": "lcsc.kernel.families.diffusers_cm"}


def register(source: str, module: str, consistency: str | None = None) -> None:
    """Adds the family of `trail.source: <source>`, whose class is `FAMILY` in `module` (and in
    `consistency`, that of its consistency models)."""
    if source == TRAINED_HERE or source in TRAINED:
        raise ValueError(f"{source!r} names the trails trained here")
    SOURCES[source] = module
    if consistency:
        CONSISTENCY[source] = consistency


def sources() -> list[str]:
    """Every value trail.source may take."""
    return [TRAINED_HERE, *SOURCES]


def _load(module: str):
    return importlib.import_module(module).FAMILY


def imported_family(source: str):
    """The family class of an imported trail's source; an unknown source is one line."""
    if source not in SOURCES:
        raise ConfigError(f"trail.source: {source!r} is not a source lcsc knows (the sources: {', '.join(sources())})")
    return _load(SOURCES[source])


def trained_family(kind: str):
    return _load(TRAINED[kind])


# The imported family comes first in the bases, so its network, files and export win; the trained
# family after it supplies the sampler (and its config checks, reached through super()).
# Cached, so one pair is always the same class rather than a new one per call.
@cache
def _sampled(family, sampling):
    """`family`'s network and files, sampled as the trained family `sampling` samples."""
    return type(f"{family.__name__}As{sampling.__name__}", (family, sampling), {})


def source_record(t: dict) -> dict:
    """The `source` record of an imported trail, from the config's `trail` section."""
    return imported_family(t["source"]).source_record(t)


def check_source(trail, cfg: dict) -> None:
    """The trail is the one the config names: its kind is one that `trail.source` writes and, for
    an imported trail, its `root` is `trail.path` and its `source` record (and whatever else its
    family records) the config's. Anything else is a TrailError naming both values: a results
    folder edited, sent from elsewhere, or made with another config."""
    t = cfg.get("trail") or {"source": TRAINED_HERE}
    manifest = trail.root / "manifest.json"
    kind, source = trail.manifest.get("kind", "dm"), t["source"]
    imported = source != TRAINED_HERE
    rerun = "rerun import_trail with this config" if imported else "rerun the stage that wrote it"
    kinds = (source,) if imported else tuple(TRAINED)
    if kind not in kinds:
        raise TrailError(
            f"{manifest}: a trail of kind {kind!r}, but the config's trail.source is {source!r}, whose "
            f"trails are of kind {' or '.join(map(repr, kinds))}; this manifest was not "
            f"written for this config: {rerun}"
        )
    if not imported:
        return
    configured = resolve_path(t["path"], "trail.path")
    declared = trail.manifest.get("root")
    if not isinstance(declared, str) or resolve_path(declared, f"{manifest}: root") != configured:
        raise TrailError(
            f"{manifest}: root {declared!r}, but the config's trail.path is {configured}; an imported "
            f"trail's files are read from the folder the config names only: {rerun}"
        )
    family = imported_family(source)
    recorded, expected = trail.manifest.get("source"), family.source_record(t)
    recorded = recorded if isinstance(recorded, dict) else {}
    for key, value in expected.items():
        if recorded.get(key) != value:
            raise TrailError(
                f"{manifest}: source.{key} {recorded.get(key)!r}, but the config's trail.{key} is "
                f"{value!r}; the stages build and read the network as the config says, never as a "
                f"results file says: {rerun}"
            )
    family.check_manifest(trail, t, rerun)


def family_class(cfg: dict, kind: str | None = None):
    """The family class that samples a trail of `kind` (a trail trained here) or of the config's
    imported source (with its `trail.sampler`)."""
    t = cfg.get("trail") or {"source": TRAINED_HERE}
    if t["source"] == TRAINED_HERE:
        return trained_family(kind or "dm")
    family = imported_family(t["source"])
    if family.sampled_by_config:
        return _sampled(family, trained_family(t["sampler"]))
    if t["sampler"] == "cm" and t["source"] in CONSISTENCY:
        return _load(CONSISTENCY[t["source"]])
    return family


def family_for(trail, cfg: dict):
    """The family of `trail`'s model, as the config says (check_source), checked against the config
    that samples it."""
    check_source(trail, cfg)
    return family_class(cfg, trail.manifest.get("kind", "dm"))(trail, cfg)


def config_errors(cfg: dict) -> list[str]:
    """What the family of the config's imported trail finds wrong with its `trail` keys (importing
    that family's module, and so torch)."""
    t = cfg["trail"]
    try:
        family = imported_family(t["source"])
    except ConfigError as exc:
        return [str(exc)]
    if t["sampler"] != "dm" and not family.sampled_by_config and t["source"] not in CONSISTENCY:
        return [
            *family.config_errors(cfg),
            f"trail.sampler: a {t['source']} trail samples as its family says; "
            "trail.sampler applies to sources sampled as the config says (state_dict) or with a family of "
            f"consistency models ({', '.join(CONSISTENCY)})",
        ]
    return family_class(cfg).config_errors(cfg)


def samples_with_config_sigmas(cfg: dict) -> bool:
    """Whether the config's consistency model samples at `consistency.sampling_sigmas` (lcsc's own
    sampler), rather than as its source's pipeline does (a diffusers consistency model)."""
    t = cfg.get("trail") or {"source": TRAINED_HERE}
    return t["source"] == TRAINED_HERE or imported_family(t["source"]).sampled_by_config


def diffusion_samplers(cfg: dict) -> tuple[str, ...]:
    """The diffusion.sampler values the config's trail is sampled with."""
    t = cfg.get("trail") or {"source": TRAINED_HERE}
    if t["source"] == TRAINED_HERE:
        return ("ddim", "dpmpp2m")
    return imported_family(t["source"]).diffusion_samplers


__all__ = [
    "CONSISTENCY",
    "SOURCES",
    "TRAINED",
    "check_source",
    "config_errors",
    "family_class",
    "family_for",
    "register",
    "samples_with_config_sigmas",
    "source_record",
    "sources",
]
