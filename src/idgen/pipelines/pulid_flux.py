"""PuLID-FLUX with SpatialID on a stock diffusers FluxPipeline."""

from __future__ import annotations

import os
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from idgen.backbones.flux import FluxIdentityInjector, IdentityAdapter, encode_id_tokens
from idgen.backbones.run import InjectionRun, Recorder
from idgen.core.gate import MaskPolicy, SpatialMask
from idgen.core.schedule import TemporalSpatialScheduler
from idgen.errors import IdgenError
from idgen.identity.base import IdentityEncoder, IdentityFeatures
from idgen.io import load_image
from idgen.pipelines.base import (
    MODES,
    SPATIAL,
    IdentityPipelineOutput,
    PhotoInput,
    batch_size,
    check_generation_inputs,
    encode_photo,
    from_pretrained,
    mask_policy,
    resolve_features,
    seed_generators,
    with_defaults,
)
from idgen.pipelines.multi import (
    Identities,
    PhotoCombination,
    check_identities,
    competing_run,
    scalar_weight,
    several_identities,
)
from idgen.pipelines.tiny import TINY_RANDOM, tiny_flux_pipeline, tiny_identity_encoder, tiny_pulid_adapter

__all__ = [
    "FLUX_DEFAULTS",
    "MODES",
    "IdentityFluxPipeline",
    "IdentityPipelineOutput",
    "check_generation_inputs",
    "load_flux",
    "load_flux_pulid",
    "load_flux_wplus",
    "mask_box",
    "mask_policy",
    "seed_generators",
    "user_mask",
]


def user_mask(image: str | os.PathLike[str] | Image.Image) -> torch.Tensor:
    """A mask picture (white = identity here) -> (h, w) float tensor in [0, 1]."""
    picture = image if isinstance(image, Image.Image) else load_image(image, what="mask image")
    return torch.from_numpy(np.asarray(picture.convert("L"), dtype=np.float32) / 255.0)


def mask_box(mask: torch.Tensor, threshold: float = 0.5) -> tuple[float, float, float, float] | None:
    """Bounding box (left, top, right, bottom) in [0, 1] of mask > threshold; None if empty."""
    rows = torch.nonzero((mask > threshold).any(dim=1)).flatten()
    cols = torch.nonzero((mask > threshold).any(dim=0)).flatten()
    if rows.numel() == 0:
        return None
    h, w = mask.shape
    return (cols[0].item() / w, rows[0].item() / h, (cols[-1].item() + 1) / w, (rows[-1].item() + 1) / h)


FLUX_HUB_REPO = "black-forest-labs/FLUX.1-dev"
FLUX_PIXEL_MULTIPLE = 16  # VAE /8, then 2x2 packing
FLUX_DEFAULTS: dict[str, Any] = dict(
    height=1024,
    width=1024,
    num_inference_steps=20,
    guidance_scale=4.0,
    max_sequence_length=128,
    true_cfg_scale=1.0,
    negative_prompt=None,
    true_cfg_start_step=1,  # PuLID-FLUX's sampler: the negative pass first counts at step 1
)


class IdentityFluxPipeline:
    """Wraps a FluxPipeline the user already has; the transformer is hooked, never copied.

    >>> pipe = IdentityFluxPipeline(flux_pipe, adapter, encoder)
    >>> image = pipe("a person in a snowy forest", id_image="me.jpg", mode="spatial").images[0]
    """

    def __init__(
        self,
        flux: Any,
        adapter: IdentityAdapter,  # PuLIDAdapter, or the W+ branch WPlusFluxAdapter
        encoder: IdentityEncoder,
        defaults: dict[str, Any] | None = None,
        spatial: SpatialMask | None = None,
    ) -> None:
        param = next(flux.transformer.parameters())
        self.flux, self.encoder = flux, encoder
        # The spatial mode's policy (its schedule comes from each call's preset): the authors' unless the
        # model says otherwise, as the demo world does for its small token grid.
        self.spatial = spatial or SpatialMask(TemporalSpatialScheduler.from_preset("v1"))
        # Sampling settings used when a call leaves them out; FLUX.1's unless the model says otherwise.
        self.defaults = {**FLUX_DEFAULTS, **(defaults or {})}
        self.adapter = adapter.to(param.device, param.dtype).eval()
        self.injector = FluxIdentityInjector(flux.transformer, self.adapter)

    @property
    def pixel_multiple(self) -> int:
        # latents are /vae_scale_factor and packed 2x2: one token per (2 * factor) pixels
        return int(self.flux.vae_scale_factor) * 2

    def encode_identity(self, id_image: PhotoInput) -> IdentityFeatures:
        return encode_photo(self.encoder, id_image)

    @torch.no_grad()
    def __call__(
        self, prompt: str | list[str], id_image: PhotoInput | None = None, *,
        id_features: IdentityFeatures | list[Any] | None = None, mode: str = SPATIAL,
        policy: MaskPolicy | None = None, preset: str = "v1",
        scheduler: TemporalSpatialScheduler | None = None, id_weight: float | list[float] = 1.0,
        start_step: int = 0, true_cfg_scale: float | None = None, negative_prompt: str | None = None,
        height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
        guidance_scale: float | None = None, seed: int | list[int] | None = 42,
        generator: torch.Generator | list[torch.Generator] | None = None,
        max_sequence_length: int | None = None, recorder: Recorder | None = None,
        true_cfg_start_step: int | None = None, id_images: list[Any] | None = None,
        boxes: list[Any] | None = None, masks: list[Any] | None = None,
        combine: PhotoCombination | None = None, **flux_kwargs: Any,
    ) -> IdentityPipelineOutput:  # fmt: skip
        """Generate. `policy` (a mask policy object) overrides `mode`; `scheduler` overrides `preset`.

        Sampling settings left as None come from `self.defaults`. A list of prompts is one batch: `seed` is
        then one seed or one per prompt, and `id_features` one photo's features or one row per prompt.
        With true CFG (true_cfg_scale > 1), steps before `true_cfg_start_step` use the conditional
        prediction alone, as PuLID-FLUX's sampler does (diffusers still runs their negative pass).
        Several people (`id_images`, `boxes`, `masks`, `combine`): `_call_several`, docs/multi-identity.md.
        """
        s = with_defaults(
            self.defaults, height=height, width=width, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, max_sequence_length=max_sequence_length,
            true_cfg_scale=true_cfg_scale, negative_prompt=negative_prompt,
            true_cfg_start_step=true_cfg_start_step,
        )  # fmt: skip
        check_generation_inputs(
            prompt, scalar_weight(id_weight), s["height"], s["width"], s["num_inference_steps"],
            self.pixel_multiple,
        )  # fmt: skip
        identities = self._identities(s, id_image, id_images, id_features, id_weight, boxes, masks)
        chosen = policy if policy is not None else mask_policy(mode, preset, scheduler, spatial=self.spatial)
        batch = batch_size(prompt)
        generator = generator if generator is not None else seed_generators(seed, batch)
        call = {**self._flux_call(prompt, s, generator), **flux_kwargs}
        if chosen is None:
            return IdentityPipelineOutput(images=self.flux(**call).images)
        if identities is not None:
            return self._call_several(identities, call, s, mode, chosen, batch, start_step, recorder, combine)
        features = resolve_features(self.encoder, mode, id_image, cast(Any, id_features), batch)
        run = self._injection_run(
            features, batch, call["true_cfg_scale"] > 1.0, id_weight=id_weight, start_step=start_step,
            policy=chosen, recorder=recorder, true_cfg_start_step=s["true_cfg_start_step"],
        )  # fmt: skip
        run.mark_steps_in(call)
        with self.injector.run(run):
            images = self.flux(**call).images
        return IdentityPipelineOutput(images=images, id_features=features)

    def _identities(self, s: dict[str, Any], *given: Any) -> Identities | None:
        """A several-people call's identities, checked (None for a call with one id_image / id_features).

        given: id_image, id_images, id_features, id_weight, boxes, masks."""
        id_image, id_images, id_features, id_weight, boxes, masks = given
        if not several_identities(id_images, id_features, id_weight, boxes, masks):
            return None
        grid = (s["height"] // self.pixel_multiple, s["width"] // self.pixel_multiple)
        return check_identities(id_image, id_images, id_features, id_weight, boxes, masks, grid)

    def _call_several(
        self, identities: Identities, call: dict[str, Any], s: dict[str, Any], mode: str, policy: MaskPolicy,
        batch: int, start_step: int, recorder: Recorder | None, combine: PhotoCombination | None,
    ) -> IdentityPipelineOutput:  # fmt: skip
        """Several people in one image (idgen.pipelines.multi): `id_images=[a, b]`, each entry a photo or a
        list of photos of that person (joined by `combine`, a PhotoCombination; default
        MeanAll), or `id_features=[fa, fb]`; optional `boxes` (left, top, right, bottom in
        [0, 1]) or `masks`, one per person; `id_weight` one float or one per person. In the spatial mode the
        people's masks compete for each token; in the uniform mode their residuals are summed."""
        run = competing_run(
            self, identities, mode, policy, batch, call["true_cfg_scale"] > 1.0, start_step=start_step,
            recorder=recorder, true_cfg_start_step=s["true_cfg_start_step"], combine=combine,
        )  # fmt: skip
        run.mark_steps_in(call)
        with self.injector.run(run):
            return IdentityPipelineOutput(images=self.flux(**call).images)

    def _flux_call(self, prompt: str | list[str], s: dict[str, Any], generator: Any) -> dict[str, Any]:
        """The FluxPipeline's arguments."""
        true_cfg = s["true_cfg_scale"] > 1.0
        negative = s["negative_prompt"]
        if true_cfg and negative is None:
            raise IdgenError("true_cfg_scale > 1 needs a negative_prompt")
        if true_cfg and not isinstance(prompt, str):
            negative = [negative] * len(prompt)
        return dict(
            prompt=prompt,
            height=s["height"],
            width=s["width"],
            num_inference_steps=s["num_inference_steps"],
            guidance_scale=s["guidance_scale"],
            generator=generator,
            max_sequence_length=s["max_sequence_length"],
            true_cfg_scale=s["true_cfg_scale"],
            negative_prompt=negative if true_cfg else None,
        )

    def _injection_run(
        self, features: IdentityFeatures, batch: int, true_cfg: bool, **settings: Any
    ) -> InjectionRun:
        """An InjectionRun with the identity tokens (and uncond ones for true CFG), one row per image."""
        id_tokens, uncond_tokens = encode_id_tokens(self.adapter, features, with_uncond=true_cfg)
        if id_tokens.shape[0] != batch:  # one photo for the whole batch
            id_tokens = id_tokens.expand(batch, -1, -1)
            uncond_tokens = None if uncond_tokens is None else uncond_tokens.expand(batch, -1, -1)
        return InjectionRun(id_tokens=id_tokens, uncond_id_tokens=uncond_tokens, **settings)


def load_flux(source: str | os.PathLike[str], device: str, dtype: torch.dtype) -> Any:
    """A diffusers FluxPipeline from a local folder or a hub id (offline: must be in the cache)."""
    from diffusers import FluxPipeline

    return from_pretrained(FluxPipeline, source, "a FLUX pipeline", torch_dtype=dtype).to(device)


def flux_pipeline(flux: Any, device: str, dtype: torch.dtype, seed: int) -> Any:
    """A FluxPipeline object as it is, or built from "tiny-random", a folder or a hub id."""
    if flux == TINY_RANDOM:
        return tiny_flux_pipeline(seed).to(device, dtype)
    if isinstance(flux, (str, os.PathLike)):
        return load_flux(flux, device, dtype)
    return flux


def identity_encoder(encoder: Any, device: str, seed: int, tiny: Any, **encoder_kwargs: Any) -> Any:
    """An IdentityEncoder as it is; "tiny-random" -> tiny(seed); "pulid" -> PuLID's (idgen[pulid])."""
    if not isinstance(encoder, str):
        return encoder
    if encoder == TINY_RANDOM:
        return tiny(seed, **encoder_kwargs)
    if encoder != "pulid":
        raise IdgenError(f"unknown identity encoder {encoder!r}; choose 'pulid' or '{TINY_RANDOM}'")
    from idgen.identity.pulid import PuLIDIdentityEncoder

    return PuLIDIdentityEncoder(device=device, **encoder_kwargs)


def load_flux_pulid(
    flux: Any,
    pulid: Any,
    encoder: Any,
    *,
    device: str,
    torch_dtype: torch.dtype,
    seed: int = 0,
    **encoder_kwargs: Any,
) -> IdentityFluxPipeline:
    """Backbone "flux-pulid". pulid: a PuLIDAdapter, an official pulid_flux_v0.9.x file, one of our folders,
    a hub id, or "tiny-random" (also what None means when another part is "tiny-random")."""
    from idgen.models.loading import load_pulid_adapter
    from idgen.models.pulid import PuLIDAdapter

    any_tiny = TINY_RANDOM in (flux, pulid, encoder)
    flux = flux_pipeline(flux, device, torch_dtype, seed)
    if pulid == TINY_RANDOM or (pulid is None and any_tiny):
        pulid = tiny_pulid_adapter(seed)
    if pulid is None:
        raise IdgenError("a PuLID checkpoint is needed (pulid=...)")
    if not isinstance(pulid, PuLIDAdapter):
        pulid = load_pulid_adapter(pulid, device=device, dtype=torch_dtype)
    encoder = identity_encoder(encoder, device, seed, tiny_identity_encoder, **encoder_kwargs)
    return IdentityFluxPipeline(flux, pulid, encoder)


def load_flux_wplus(
    flux: Any,
    branch: Any,
    encoder: Any,
    *,
    device: str,
    torch_dtype: torch.dtype,
    seed: int = 0,
    **encoder_kwargs: Any,
) -> IdentityFluxPipeline:
    """Backbone "flux-wplus": the W+ branch (a WPlusFluxAdapter, its folder, or "tiny-random") on FLUX.
    encoder: an IdentityEncoder giving W+ flattened (e.g. WPlusIdentityEncoder), or "tiny-random"."""
    from idgen.models.wplus_flux import WPlusFluxAdapter, load_wplus_flux_adapter
    from idgen.pipelines.tiny import tiny_wplus_encoder, tiny_wplus_flux_adapter

    if encoder == "pulid":
        raise IdgenError("the W+ branch needs a W+ identity encoder (e.g. WPlusIdentityEncoder), not 'pulid'")
    flux = flux_pipeline(flux, device, torch_dtype, seed)
    if branch == TINY_RANDOM:
        branch = tiny_wplus_flux_adapter(seed)
    elif not isinstance(branch, WPlusFluxAdapter):
        branch = load_wplus_flux_adapter(branch, device=device)
    encoder = identity_encoder(encoder, device, seed, tiny_wplus_encoder, **encoder_kwargs)
    return IdentityFluxPipeline(flux, branch, encoder)
