"""Model families, by the `kind` a trail's manifest declares: `dm`, the VP diffusion model, and
`cm`, the consistency model, trained here; `diffusers`, a diffusers UNet2DModel trail; and
`state_dict`, plain state dicts of the user's own network, sampled as `dm` or `cm` (the
manifest's `sampler`). `family_for` is the one place that picks a family.

A manifest lies in the results folder, which is data anyone may have sent: the family is picked
and built from the config. The manifest must agree with it (`check_source`), and nothing a
manifest names is imported or called."""

from __future__ import annotations

from ..errors import TrailError
from ..io import resolve_path
from ..models import IMPORTED_KINDS, TRAINED_HERE
from .base import Family
from .consistency import ConsistencyFamily
from .diffusers import DiffusersFamily
from .diffusion import DiffusionFamily
from .state_dict import StateDictCheckpoints


class StateDictDiffusion(StateDictCheckpoints, DiffusionFamily):
    """A state-dict trail sampled by the VP diffusion samplers."""


class StateDictConsistency(StateDictCheckpoints, ConsistencyFamily):
    """A state-dict trail sampled as a consistency model."""


FAMILIES: dict[str, type[Family]] = {"dm": DiffusionFamily, "cm": ConsistencyFamily, "diffusers": DiffusersFamily}
STATE_DICT = {"dm": StateDictDiffusion, "cm": StateDictConsistency}
# the manifest kinds each `trail.source` writes
SOURCE_KINDS = {TRAINED_HERE: ("dm", "cm"), "diffusers": ("diffusers",), "state_dict": ("state_dict",)}
# the `trail` keys an imported trail's manifest records as its `source`
SOURCE_KEYS = {"diffusers": ("unet", "ema"), "state_dict": ("key", "prefix", "factory", "factory_kwargs", "code")}


def source_record(t: dict) -> dict:
    """The `source` record of an imported trail, from the config's `trail` section: what its
    family reads and builds the network with (`code` as an absolute folder)."""
    out = {k: t[k] for k in SOURCE_KEYS[t["source"]]}
    if out.get("code"):
        out["code"] = str(resolve_path(out["code"], "trail.code"))
    return out


def check_source(trail, cfg: dict) -> None:
    """The trail is the one the config names: its kind is one that `trail.source` writes and, for
    an imported trail, its `root` is `trail.path` and its `source` record the config's (the
    factory, its arguments and its code folder among them). Anything else is a TrailError naming
    both values: a results folder edited, sent from elsewhere, or made with another config."""
    t = cfg.get("trail") or {"source": TRAINED_HERE}
    manifest = trail.root / "manifest.json"
    kind, source = trail.manifest.get("kind", "dm"), t["source"]
    rerun = "rerun import_trail with this config" if source in IMPORTED_KINDS else "rerun the stage that wrote it"
    if kind not in SOURCE_KINDS[source]:
        raise TrailError(f"{manifest}: a trail of kind {kind!r}, but the config's trail.source is {source!r}, whose "
                         f"trails are of kind {' or '.join(map(repr, SOURCE_KINDS[source]))}; this manifest was not "
                         f"written for this config: {rerun}")
    if source not in IMPORTED_KINDS:
        return
    configured = resolve_path(t["path"], "trail.path")
    declared = trail.manifest.get("root")
    if not isinstance(declared, str) or resolve_path(declared, f"{manifest}: root") != configured:
        raise TrailError(f"{manifest}: root {declared!r}, but the config's trail.path is {configured}; an imported "
                         f"trail's files are read from the folder the config names only: {rerun}")
    recorded, expected = trail.manifest.get("source"), source_record(t)
    recorded = recorded if isinstance(recorded, dict) else {}
    for key, value in expected.items():
        if recorded.get(key) != value:
            raise TrailError(f"{manifest}: source.{key} {recorded.get(key)!r}, but the config's trail.{key} is "
                             f"{value!r}; the stages build and read the network as the config says, never as a "
                             f"results file says: {rerun}")
    if source == "state_dict" and trail.manifest.get("sampler") != t["sampler"]:
        raise TrailError(f"{manifest}: sampler {trail.manifest.get('sampler')!r}, but the config's trail.sampler is "
                         f"{t['sampler']!r}: {rerun}")


def family_for(trail, cfg: dict) -> Family:
    """The family of `trail`'s model, as the config says (check_source), checked against the config
    that samples it."""
    check_source(trail, cfg)
    kind = trail.manifest.get("kind", "dm")
    if kind == "state_dict":
        return STATE_DICT[cfg["trail"]["sampler"]](trail, cfg)
    return FAMILIES[kind](trail, cfg)


__all__ = ["FAMILIES", "Family", "check_source", "family_for", "source_record"]
