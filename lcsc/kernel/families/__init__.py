"""Model families, by the `kind` a trail's manifest declares: `dm`, the VP diffusion model, and
`cm`, the consistency model. `family_for` is the one place that picks a family."""

from __future__ import annotations

from ..errors import TrailError
from .base import Family
from .consistency import ConsistencyFamily
from .diffusion import DiffusionFamily

FAMILIES: dict[str, type[Family]] = {"dm": DiffusionFamily, "cm": ConsistencyFamily}


def family_for(trail, cfg: dict) -> Family:
    """The family of `trail`'s model, checked against the config that samples it."""
    kind = trail.manifest.get("kind", "dm")
    if kind not in FAMILIES:
        raise TrailError(f"{trail.root / 'manifest.json'}: kind {kind!r} is no model family lcsc knows "
                         f"({', '.join(FAMILIES)}); rerun the stage that wrote the trail")
    return FAMILIES[kind](trail, cfg)


__all__ = ["FAMILIES", "Family", "family_for"]
