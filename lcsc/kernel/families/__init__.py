"""Model families, by the `kind` a trail's manifest declares: `dm`, the VP diffusion model, and
`cm`, the consistency model, trained here; `diffusers`, a diffusers UNet2DModel trail; and
`state_dict`, plain state dicts of the user's own network, sampled as `dm` or `cm` (the
manifest's `sampler`). `family_for` is the one place that picks a family."""

from __future__ import annotations

from ..errors import TrailError
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


def family_for(trail, cfg: dict) -> Family:
    """The family of `trail`'s model, checked against the config that samples it."""
    kind = trail.manifest.get("kind", "dm")
    if kind == "state_dict" and trail.manifest.get("sampler") in STATE_DICT:
        return STATE_DICT[trail.manifest["sampler"]](trail, cfg)
    if kind not in FAMILIES:
        raise TrailError(f"{trail.root / 'manifest.json'}: kind {kind!r} is no model family lcsc knows "
                         f"({', '.join([*FAMILIES, 'state_dict'])}); rerun the stage that wrote the trail")
    return FAMILIES[kind](trail, cfg)


__all__ = ["FAMILIES", "Family", "family_for"]
