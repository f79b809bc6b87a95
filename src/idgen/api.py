"""`idgen.load(...)`: build an IdentityFluxPipeline from names, paths or objects the user already has."""

from __future__ import annotations

import os
from typing import Any

import torch

from idgen.errors import IdgenError
from idgen.identity.base import IdentityEncoder
from idgen.models.checkpoint import DOCTOR_HINT
from idgen.models.loading import PULID_HUB_REPO, load_pulid_adapter
from idgen.models.pulid import PuLIDAdapter
from idgen.pipelines.pulid_flux import IdentityFluxPipeline

TINY_RANDOM = "tiny-random"  # built-in: tiny random-weight models, CPU, for tests and smoke runs
FLUX_HUB_REPO = "black-forest-labs/FLUX.1-dev"


def load_flux(source: str | os.PathLike[str], device: str, dtype: torch.dtype) -> Any:
    """A diffusers FluxPipeline from a local folder or a hub id (offline: must be in the cache)."""
    from diffusers import FluxPipeline

    try:
        flux = FluxPipeline.from_pretrained(str(source), torch_dtype=dtype)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = first.rstrip(".")
        raise IdgenError(f"cannot load a FLUX pipeline from {source}: {first}; {DOCTOR_HINT}") from None
    return flux.to(device)


def load(
    flux: Any = FLUX_HUB_REPO,
    pulid: str | os.PathLike[str] | PuLIDAdapter | None = PULID_HUB_REPO,
    encoder: str | IdentityEncoder = "pulid",
    *,
    device: str = "cuda" if torch.cuda.is_available() else "cpu",
    torch_dtype: torch.dtype | None = None,
    seed: int = 0,
    **encoder_kwargs: Any,
) -> IdentityFluxPipeline:
    """Load PuLID-FLUX (+ SpatialID) around a FluxPipeline.

    flux:    a FluxPipeline object, a local folder, a hub id, or "tiny-random".
    pulid:   a PuLIDAdapter, an official pulid_flux_v0.9.x file, one of our folders, or a hub id.
    encoder: an IdentityEncoder, "pulid" (antelopev2 + facexlib + EVA02-CLIP; needs idgen[pulid]),
             or "tiny-random".
    """
    if torch_dtype is None:
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if flux == TINY_RANDOM or pulid == TINY_RANDOM or encoder == TINY_RANDOM:
        from idgen.pipelines.tiny import tiny_flux_pipeline, tiny_identity_encoder, tiny_pulid_adapter

        if flux == TINY_RANDOM:
            flux = tiny_flux_pipeline(seed).to(device, torch_dtype)
        if pulid in (TINY_RANDOM, None) and not isinstance(pulid, PuLIDAdapter):
            pulid = tiny_pulid_adapter(seed)
        if encoder == TINY_RANDOM:
            encoder = tiny_identity_encoder(seed, **encoder_kwargs)
    if isinstance(flux, (str, os.PathLike)):
        flux = load_flux(flux, device, torch_dtype)
    if pulid is None:
        raise IdgenError("a PuLID checkpoint is needed (pulid=...)")
    adapter = (
        pulid
        if isinstance(pulid, PuLIDAdapter)
        else load_pulid_adapter(pulid, device=device, dtype=torch_dtype)
    )
    if isinstance(encoder, str):
        if encoder != "pulid":
            raise IdgenError(f"unknown identity encoder {encoder!r}; choose 'pulid' or '{TINY_RANDOM}'")
        from idgen.identity.pulid import PuLIDIdentityEncoder

        encoder = PuLIDIdentityEncoder(device=device, **encoder_kwargs)
    return IdentityFluxPipeline(flux, adapter, encoder)
