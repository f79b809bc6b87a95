"""PuLID-FLUX with SpatialID on a stock diffusers FluxPipeline."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from idgen.backbones.flux import (
    FluxIdentityInjector,
    IdentityAdapter,
    InjectionRun,
    MaskPolicy,
    Recorder,
    encode_id_tokens,
)
from idgen.core.gate import SpatialMask, UniformMask
from idgen.core.masks import MaskExtractor
from idgen.core.schedule import TemporalSpatialScheduler
from idgen.errors import IdgenError
from idgen.identity.base import IdentityEncoder, IdentityFeatures
from idgen.io import load_image

Mode = Literal["spatial", "uniform", "none"]
MODES: tuple[str, ...] = ("spatial", "uniform", "none")


def mask_policy(
    mode: str,
    preset: str = "v1",
    scheduler: TemporalSpatialScheduler | None = None,
    extractor: MaskExtractor | None = None,
    spatial: SpatialMask | None = None,
) -> MaskPolicy | None:
    """The mask policy a mode name stands for; None for "none" (no identity at all).

    `spatial` is the SpatialMask to start from (default: the authors' extractor, refiner and centred
    prior); `scheduler` or else `preset` replaces its schedule. `extractor` replaces its extractor, e.g.
    AttentionEntropyExtractor() or FixedMaskExtractor(user_mask(...)) to inject only where the user says.
    """
    if mode == "spatial":
        scheduler = scheduler or TemporalSpatialScheduler.from_preset(preset)
        chosen = dataclasses.replace(spatial or SpatialMask(scheduler), scheduler=scheduler)
        return chosen if extractor is None else dataclasses.replace(chosen, extractor=extractor)
    if mode == "uniform":
        return UniformMask()
    if mode == "none":
        return None
    raise IdgenError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


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


FLUX_PIXEL_MULTIPLE = 16  # VAE /8, then 2x2 packing
FLUX_DEFAULTS: dict[str, Any] = dict(
    height=1024,
    width=1024,
    num_inference_steps=20,
    guidance_scale=4.0,
    max_sequence_length=128,
    true_cfg_scale=1.0,
    negative_prompt=None,
)


def check_generation_inputs(
    prompt: str | list[str],
    id_weight: float,
    height: int,
    width: int,
    steps: int,
    multiple: int = FLUX_PIXEL_MULTIPLE,
) -> None:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise IdgenError("prompt is empty")
    if id_weight < 0:
        raise IdgenError(f"id_weight must be >= 0, got {id_weight}")
    if height <= 0 or width <= 0 or height % multiple or width % multiple:
        raise IdgenError(f"width and height must be positive multiples of {multiple}, got {width}x{height}")
    if steps < 1:
        raise IdgenError(f"num_inference_steps must be >= 1, got {steps}")


def seed_generators(seed: int | list[int] | None, batch: int) -> torch.Generator | list[torch.Generator]:
    """One CPU generator (a single image), or one per image so each image depends on its own seed only."""
    if isinstance(seed, list):
        if len(seed) != batch:
            raise IdgenError(f"got {len(seed)} seeds for {batch} prompts")
        return [torch.Generator("cpu").manual_seed(s) for s in seed]
    base = 0 if seed is None else seed
    if batch == 1:
        return torch.Generator("cpu").manual_seed(base)
    return [torch.Generator("cpu").manual_seed(base + i) for i in range(batch)]


@dataclass
class IdentityPipelineOutput:
    images: list[Image.Image]
    id_features: IdentityFeatures | None = None
    settings: dict[str, Any] = field(default_factory=dict)


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

    def encode_identity(self, id_image: str | os.PathLike[str] | Image.Image) -> IdentityFeatures:
        if isinstance(id_image, Image.Image):
            return self.encoder(id_image, what="the id image")
        return self.encoder(load_image(id_image, what="id image"), what=str(id_image))

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        id_image: str | os.PathLike[str] | Image.Image | None = None,
        *,
        id_features: IdentityFeatures | None = None,
        mode: Mode | str = "spatial",
        policy: MaskPolicy | None = None,
        preset: str = "v1",
        scheduler: TemporalSpatialScheduler | None = None,
        id_weight: float = 1.0,
        start_step: int = 0,
        true_cfg_scale: float | None = None,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | list[int] | None = 42,
        generator: torch.Generator | list[torch.Generator] | None = None,
        max_sequence_length: int | None = None,
        recorder: Recorder | None = None,
        **flux_kwargs: Any,
    ) -> IdentityPipelineOutput:
        """Generate. `policy` (a mask policy object) overrides `mode`; `scheduler` overrides `preset`.

        Sampling settings left as None come from `self.defaults`. A list of prompts is one batch: `seed` is
        then one seed or one per prompt, and `id_features` one photo's features or one row per prompt.
        """
        d = self.defaults
        height = d["height"] if height is None else height
        width = d["width"] if width is None else width
        num_inference_steps = d["num_inference_steps"] if num_inference_steps is None else num_inference_steps
        guidance_scale = d["guidance_scale"] if guidance_scale is None else guidance_scale
        max_sequence_length = d["max_sequence_length"] if max_sequence_length is None else max_sequence_length
        true_cfg_scale = d["true_cfg_scale"] if true_cfg_scale is None else true_cfg_scale
        negative_prompt = d["negative_prompt"] if negative_prompt is None else negative_prompt
        check_generation_inputs(prompt, id_weight, height, width, num_inference_steps, self.pixel_multiple)
        chosen = policy if policy is not None else mask_policy(mode, preset, scheduler, spatial=self.spatial)
        true_cfg = true_cfg_scale > 1.0
        if true_cfg and negative_prompt is None:
            raise IdgenError("true_cfg_scale > 1 needs a negative_prompt")
        batch = 1 if isinstance(prompt, str) else len(prompt)
        if generator is None:
            generator = seed_generators(seed, batch)
        call = dict(
            prompt=prompt,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            max_sequence_length=max_sequence_length,
            true_cfg_scale=true_cfg_scale,
            negative_prompt=(negative_prompt if isinstance(prompt, str) else [negative_prompt] * batch)
            if true_cfg
            else None,
        )
        call.update(flux_kwargs)
        if chosen is None:
            return IdentityPipelineOutput(images=self.flux(**call).images)
        if id_features is None:
            if id_image is None:
                raise IdgenError(f"mode {mode!r} needs an id image")
            id_features = self.encode_identity(id_image)
        if id_features.batch_size not in (1, batch):
            raise IdgenError(f"id_features hold {id_features.batch_size} identities for {batch} prompts")
        id_tokens, uncond_tokens = encode_id_tokens(self.adapter, id_features, with_uncond=true_cfg)
        if id_tokens.shape[0] != batch:  # one photo for the whole batch
            id_tokens = id_tokens.expand(batch, -1, -1)
            uncond_tokens = None if uncond_tokens is None else uncond_tokens.expand(batch, -1, -1)
        run = InjectionRun(
            id_tokens=id_tokens,
            id_weight=id_weight,
            start_step=start_step,
            policy=chosen,
            uncond_id_tokens=uncond_tokens,
            recorder=recorder,
        )
        with self.injector.run(run):
            images = self.flux(**call).images
        return IdentityPipelineOutput(images=images, id_features=id_features)
