"""`idgen.load(...)`: build an identity pipeline of any registered backbone from names, paths or objects
the user already has."""

from __future__ import annotations

import os
from importlib import import_module
from typing import Any

import torch

from idgen.errors import IdgenError
from idgen.identity.base import IdentityEncoder
from idgen.models.loading import PULID_HUB_REPO
from idgen.models.pulid import PuLIDAdapter
from idgen.pipelines.base import IdentityPipeline
from idgen.pipelines.names import BACKBONES, DEFAULT_BACKBONE
from idgen.pipelines.pulid_flux import FLUX_HUB_REPO, load_flux
from idgen.pipelines.tiny import TINY_RANDOM

__all__ = ["BACKBONES", "FLUX_HUB_REPO", "TINY_RANDOM", "load", "load_flux"]


def load(
    flux: Any = FLUX_HUB_REPO,
    pulid: str | os.PathLike[str] | PuLIDAdapter | Any | None = PULID_HUB_REPO,
    encoder: str | IdentityEncoder = "pulid",
    *,
    backbone: str = DEFAULT_BACKBONE,
    device: str = "cuda" if torch.cuda.is_available() else "cpu",
    torch_dtype: torch.dtype | None = None,
    seed: int = 0,
    **encoder_kwargs: Any,
) -> IdentityPipeline:
    """Load an identity pipeline; by default PuLID-FLUX (+ SpatialID) around a FluxPipeline.

    flux:     the base model: a diffusers pipeline object, a local folder, a hub id, or "tiny-random".
    pulid:    the identity adapter: for "flux-pulid" a PuLIDAdapter, an official pulid_flux_v0.9.x file,
              one of our folders, or a hub id; for the W+ backbones their adapter object or folder.
    encoder:  an IdentityEncoder, "pulid" (antelopev2 + facexlib + EVA02-CLIP; needs idgen[pulid]),
              or "tiny-random".
    backbone: one of BACKBONES ("flux-pulid", "flux-wplus", "sd15-wplus").
    """
    if backbone not in BACKBONES:
        raise IdgenError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    if torch_dtype is None:
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    module, name = BACKBONES[backbone].split(":")
    build = getattr(import_module(module), name)
    pipe: IdentityPipeline = build(
        flux, pulid, encoder, device=device, torch_dtype=torch_dtype, seed=seed, **encoder_kwargs
    )
    return pipe
