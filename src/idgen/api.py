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
from idgen.pipelines.base import IdentityPipeline, model_source
from idgen.pipelines.lowvram import check_quantize, load_transformer_file, quantize_pipeline
from idgen.pipelines.names import BACKBONES, DEFAULT_BACKBONE, NO_OFFLOAD, OFFLOADS
from idgen.pipelines.pulid_flux import FLUX_HUB_REPO, load_flux, pretrained_flux
from idgen.pipelines.tiny import TINY_RANDOM

__all__ = ["BACKBONES", "FLUX_HUB_REPO", "OFFLOADS", "TINY_RANDOM", "load", "load_flux"]


def load(
    flux: Any = FLUX_HUB_REPO,
    pulid: str | os.PathLike[str] | PuLIDAdapter | Any | None = PULID_HUB_REPO,
    encoder: str | IdentityEncoder = "pulid",
    *,
    backbone: str = DEFAULT_BACKBONE,
    device: str = "cuda" if torch.cuda.is_available() else "cpu",
    torch_dtype: torch.dtype | None = None,
    seed: int = 0,
    offload: str = "none",
    quantize: str = "none",
    transformer: str | os.PathLike[str] | None = None,
    **encoder_kwargs: Any,
) -> IdentityPipeline:
    """Load an identity pipeline; by default PuLID-FLUX (+ SpatialID) around a FluxPipeline.

    flux:     the base model: a diffusers pipeline object, a local folder, a hub id, or "tiny-random".
    pulid:    the identity adapter: for "flux-pulid" a PuLIDAdapter, an official pulid_flux_v0.9.x file,
              one of our folders, or a hub id; for the W+ backbones their adapter object or folder.
    encoder:  an IdentityEncoder, "pulid" (antelopev2 + facexlib + EVA02-CLIP; idgen[pulid]) or "tiny-random".
    backbone: one of BACKBONES ("flux-pulid", "flux-wplus", "sd15-wplus").
    offload:  one of OFFLOADS: "none" (everything on `device`), or diffusers' "model", "sequential" or
              "group" offload (FLUX backbones): the models are loaded on the CPU and visit `device`, an
              accelerator, as they run; the identity encoder is built on `device`.
    quantize: one of idgen.pipelines.lowvram.QUANTIZE_CHOICES: the FLUX transformer's weights stored
              quantised (FLUX backbones), applied before any offload.
    transformer: a file in place of the base's transformer (FLUX backbones, `flux` a folder or hub id):
              GGUF, or safetensors in any layout `idgen.pipelines.lowvram.load_transformer_file` reads.
    """
    if backbone not in BACKBONES:
        raise IdgenError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    check_offload(offload, device, backbone)
    check_quantize(quantize, device, backbone)
    if torch_dtype is None:
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    where = device if offload == NO_OFFLOAD else "cpu"
    if transformer is not None:
        flux = flux_with_transformer_file(flux, transformer, backbone, quantize, torch_dtype).to(where)
    module, name = BACKBONES[backbone].split(":")
    build = getattr(import_module(module), name)
    if offload != NO_OFFLOAD and encoder == "pulid" and backbone == DEFAULT_BACKBONE:  # on the accelerator
        from idgen.pipelines.pulid_flux import identity_encoder

        encoder, encoder_kwargs = identity_encoder(encoder, device, seed, None, **encoder_kwargs), {}
    pipe: IdentityPipeline = build(
        flux, pulid, encoder, device=where, torch_dtype=torch_dtype, seed=seed, **encoder_kwargs
    )
    quantize_pipeline(pipe, quantize)
    enable_offload(pipe, offload, device)
    return pipe


def flux_with_transformer_file(
    flux: Any, transformer: str | os.PathLike[str], backbone: str, quantize: str, dtype: torch.dtype
) -> Any:
    """The base FLUX pipeline with `transformer`'s file in place of its own transformer, which is never
    loaded; both are checked before anything loads."""
    base = transformer_base(flux, backbone)
    loaded = load_transformer_file(transformer, base, dtype, quantize=quantize)
    return pretrained_flux(base, None, dtype, 0, transformer=loaded)


def transformer_base(flux: Any, backbone: str) -> str:
    """The base a transformer file goes into, checked before anything loads: a FLUX backbone's folder (`~`
    expanded) or hub id, which gives the file's config and the pipeline's other parts."""
    if not backbone.startswith("flux"):
        raise IdgenError(f"a transformer file replaces FLUX's transformer; backbone {backbone!r} has none")
    if not isinstance(flux, (str, os.PathLike)) or flux == TINY_RANDOM:
        raise IdgenError("a transformer file needs the base model as a FLUX folder or hub id (its config)")
    return model_source(flux, "a FLUX pipeline")


def check_offload(offload: str, device: str, backbone: str = DEFAULT_BACKBONE) -> None:
    """One-line errors for an offload option that cannot be honoured, before anything loads."""
    if offload not in OFFLOADS:
        raise IdgenError(f"unknown offload {offload!r}; choose one of {', '.join(OFFLOADS)}")
    if offload == NO_OFFLOAD:
        return
    if torch.device(device).type == "cpu":
        raise IdgenError(
            f"offload {offload!r} moves models between the CPU and an accelerator; it needs a GPU device "
            f"(e.g. cuda), not {device!r}"
        )
    if not backbone.startswith("flux"):
        raise IdgenError(f"offload {offload!r} needs a FLUX backbone, not {backbone!r}")


def enable_offload(pipe: Any, offload: str, device: str) -> None:
    """Turn on diffusers' offload of that name on an IdentityFluxPipeline ("none": nothing)."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload == "group":
        pipe.enable_group_offload(device, offload_type="block_level", num_blocks_per_group=1)
