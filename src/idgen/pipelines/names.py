"""The names users choose by: identity modes and backbones. Plain strings with no heavy imports, so the
command line can offer them without loading torch."""

from __future__ import annotations

SPATIAL, UNIFORM, NONE = "spatial", "uniform", "none"
MODES: tuple[str, ...] = (SPATIAL, UNIFORM, NONE)
IDENTITY_MODES: tuple[str, ...] = (UNIFORM, SPATIAL)  # the modes that inject an identity

# Backbone name -> "module:function" that builds its pipeline from (model, adapter, encoder, device=,
# torch_dtype=, seed=, **encoder_kwargs). A new backbone is its module plus one line here.
SD15_BACKBONE = "sd15-wplus"
BACKBONES: dict[str, str] = {
    "flux-pulid": "idgen.pipelines.pulid_flux:load_flux_pulid",
    "flux-wplus": "idgen.pipelines.pulid_flux:load_flux_wplus",
    SD15_BACKBONE: "idgen.pipelines.pidiff_sd15:load_sd15_wplus",
}
DEFAULT_BACKBONE = "flux-pulid"

NO_OFFLOAD = "none"
OFFLOADS = (NO_OFFLOAD, "model", "sequential", "group")  # diffusers' offload methods, by name

# How several photos of one person are joined (idgen.pipelines.multi.COMBINATIONS); the default was chosen
# on the demo world's validation split (docs/multi-identity.md).
PHOTO_COMBINATIONS = ("mean-all", "mean-embedding-concat-tokens")
DEFAULT_PHOTO_COMBINATION = "mean-all"
# What each person's negative pass sees under true CFG when several people share an image: PuLID's uncond
# id tokens, or the other people's own tokens (each person steered away from the others). The default is
# `pipelines.multi.negative_identity_rule`'s: "others" where the people's masks compete, else "uncond".
NEGATIVE_IDENTITIES = ("uncond", "others")
PULID_NEGATIVE_IDENTITY, OTHERS_NEGATIVE_IDENTITY = NEGATIVE_IDENTITIES
