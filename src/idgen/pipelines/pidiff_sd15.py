"""PIDiff / W+ adapter generation on a stock diffusers StableDiffusionPipeline (SD1.5)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from idgen.backbones.run import Recorder
from idgen.backbones.sd15 import (
    DEFAULT_START_FRACTION,
    WPlusInjector,
    WPlusRun,
    cfg_id_tokens,
    delayed_start_step,
    install_wplus,
)
from idgen.core.gate import MaskPolicy, SpatialMask, UniformMask
from idgen.core.schedule import TemporalSpatialScheduler
from idgen.core.wplus_edit import check_w_plus
from idgen.errors import IdgenError
from idgen.identity.base import IdentityEncoder, IdentityFeatures
from idgen.models.wplus import WPlusAdapter
from idgen.pipelines.base import (
    SPATIAL,
    IdentityPipelineOutput,
    PhotoInput,
    authors_spatial,
    batch_size,
    check_generation_inputs,
    encode_photo,
    from_pretrained,
    mask_policy,
    resolve_features,
    seed_generators,
    with_defaults,
)
from idgen.pipelines.pulid_flux import FLUX_HUB_REPO
from idgen.pipelines.tiny import TINY_RANDOM, tiny_sd_pipeline, tiny_wplus_adapter, tiny_wplus_encoder

SD_PIXEL_MULTIPLE = 8  # what diffusers' StableDiffusionPipeline accepts
SD15_SIZE = 512  # SD1.5's own image side: its UNet's 64 latents, 8 pixels each
# The W+ adapter's inference settings (Euler sampler).
SD15_DEFAULTS: dict[str, Any] = dict(num_inference_steps=30, guidance_scale=7.5)


@torch.no_grad()
def identity_tokens_for_batch(
    injector: WPlusInjector, w_plus: Tensor, batch: int, classifier_free_guidance: bool
) -> Tensor:
    """W+ (L, D) | (1 | batch, L, D) -> tokens for the UNet batch; uncond rows are F_w(zeros)."""
    adapter = injector.adapter
    c = adapter.config
    w_plus = check_w_plus(w_plus, c.num_layers, c.w_dim)  # (b, L, D)
    if w_plus.shape[0] not in (1, batch):
        raise IdgenError(f"W+ code has batch {w_plus.shape[0]}, the generation has batch {batch}")
    weight = next(adapter.parameters())
    w_plus = w_plus.to(weight.device, weight.dtype)
    cond = adapter.encode(w_plus)
    uncond = adapter.encode(torch.zeros_like(w_plus)) if classifier_free_guidance else None
    return cfg_id_tokens(cond, uncond, batch)


# FLUX pipelines' keywords that SD1.5's pipeline would swallow and ignore: true CFG, T5's length, and the
# several-people arguments (the competing masks run on FLUX's token grid).
FLUX_ONLY_ARGUMENTS = (
    "true_cfg_scale", "true_cfg_start_step", "max_sequence_length",
    "id_images", "boxes", "masks", "combine", "negative_identity", "bound_attention",
)  # fmt: skip


def flux_only_arguments(given: dict[str, Any]) -> list[str]:
    """The FLUX-only keywords among `given` that carry a value (None, and true CFG off, do not)."""
    names = [name for name in FLUX_ONLY_ARGUMENTS if given.get(name) is not None]
    true_cfg_off = (given.get("true_cfg_scale") or 1.0) <= 1.0  # as SD1.5 has it
    return [name for name in names if not (name == "true_cfg_scale" and true_cfg_off)]


def check_sd15_arguments(given: dict[str, Any]) -> None:
    flux_only = flux_only_arguments(given)
    if flux_only:
        raise IdgenError(flux_only_refusal(flux_only, "the SD1.5 backbone"))


def flux_only_refusal(names: list[str], backbone: str) -> str:
    what = "a FLUX option" if len(names) == 1 else "FLUX options"
    return f"{', '.join(names)}: {what}, which {backbone} does not take"


@torch.no_grad()
def generate(
    pipe: Any,
    injector: WPlusInjector,
    w_plus: Tensor | None,
    prompt: str | list[str],
    *,
    id_weight: float = 1.0,
    start_fraction: float = DEFAULT_START_FRACTION,
    policy: MaskPolicy | None = None,
    num_inference_steps: int = SD15_DEFAULTS["num_inference_steps"],
    guidance_scale: float = SD15_DEFAULTS["guidance_scale"],
    num_images_per_prompt: int = 1,
    recorder: Recorder | None = None,
    start_step: int | None = None,
    **pipe_kwargs: Any,
) -> Any:
    """Call `pipe` (a StableDiffusionPipeline whose UNet carries `injector`) with a W+ identity.

    w_plus=None generates plain SD. policy: UniformMask() when None; SpatialMask(...) gates the
    identity spatially (idgen.pipelines.base.mask_policy("spatial") builds one by name).
    `start_step`, when given, replaces the delayed start from `start_fraction`. Extra keyword arguments
    go to the pipeline unchanged.
    """
    call = dict(
        prompt=prompt,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        num_images_per_prompt=num_images_per_prompt,
        **pipe_kwargs,
    )
    if w_plus is None:
        return pipe(**call)
    batch = batch_size(prompt) * num_images_per_prompt
    use_cfg = guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
    run = WPlusRun(
        identity_tokens_for_batch(injector, w_plus, batch, use_cfg),
        id_weight=id_weight,
        start_step=delayed_start_step(num_inference_steps, start_fraction)
        if start_step is None
        else start_step,
        policy=policy or UniformMask(),
        num_train_timesteps=int(pipe.scheduler.config.num_train_timesteps),
        recorder=recorder,
        recorded_rows=batch,
    )
    run.mark_steps_in(call)
    with injector.run(run):
        return pipe(**call)


class WPlusSD15Pipeline:
    """The W+ adapter on a StableDiffusionPipeline the user already has, behind the identity-pipeline
    interface. The encoder gives W+ flattened in IdentityFeatures.id_embedding (WPlusIdentityEncoder).

    `start_step=None` (the default) is the W+ adapter's delayed start: round(0.2 * steps).
    """

    def __init__(
        self,
        sd: Any,
        adapter: WPlusAdapter,
        encoder: IdentityEncoder,
        defaults: dict[str, Any] | None = None,
        spatial: SpatialMask | None = None,
    ) -> None:
        param = next(sd.unet.parameters())
        self.sd, self.encoder = sd, encoder
        self.adapter = adapter.to(param.device, param.dtype).eval()
        self.injector = install_wplus(sd.unet, self.adapter)
        self.spatial = spatial or authors_spatial()
        size = int(sd.unet.config.sample_size) * int(sd.vae_scale_factor)
        self.defaults = {
            **SD15_DEFAULTS,
            "height": size,
            "width": size,
            "negative_prompt": None,
            **(defaults or {}),
        }

    @property
    def pixel_multiple(self) -> int:
        return SD_PIXEL_MULTIPLE

    def encode_identity(self, id_image: PhotoInput) -> IdentityFeatures:
        return encode_photo(self.encoder, id_image)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        id_image: PhotoInput | None = None,
        *,
        id_features: IdentityFeatures | None = None,
        mode: str = SPATIAL,
        policy: MaskPolicy | None = None,
        preset: str | None = None,
        scheduler: TemporalSpatialScheduler | None = None,
        id_weight: float = 1.0,
        start_step: int | None = None,
        seed: int | list[int] | None = None,
        recorder: Recorder | None = None,
        **sampling: Any,
    ) -> IdentityPipelineOutput:
        """Generate; sampling settings left out (or None) come from `self.defaults`; `seed` None draws fresh
        noise (diffusers' behaviour). Other keyword arguments go to the StableDiffusionPipeline; None ones
        (FLUX's settings left unset) are dropped."""
        sampling = {name: value for name, value in sampling.items() if value is not None}
        check_sd15_arguments(sampling)
        names = ("height", "width", "num_inference_steps", "guidance_scale", "negative_prompt")
        s = with_defaults(self.defaults, **{name: sampling.pop(name, None) for name in names})
        check_generation_inputs(
            prompt, id_weight, s["height"], s["width"], s["num_inference_steps"], self.pixel_multiple
        )
        chosen = policy if policy is not None else mask_policy(mode, preset, scheduler, spatial=self.spatial)
        batch = batch_size(prompt)
        sampling.setdefault("generator", seed_generators(seed, batch))
        w_plus = None
        features = None
        if chosen is not None:
            features = resolve_features(self.encoder, mode, id_image, id_features, batch)
            w_plus = self._w_plus(features)
        out = generate(
            self.sd, self.injector, w_plus, prompt, id_weight=id_weight, start_step=start_step,
            policy=chosen, recorder=recorder, **s, **sampling,
        )  # fmt: skip
        return IdentityPipelineOutput(images=out.images, id_features=features)

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """The SD1.5 pipeline's step bar (DiffusionPipeline.set_progress_bar_config)."""
        self.sd.set_progress_bar_config(**kwargs)

    def _w_plus(self, features: IdentityFeatures) -> Tensor:
        c = self.adapter.config
        return features.id_embedding.reshape(-1, c.num_layers, c.w_dim)


def sd_pipeline(sd: Any, device: str, dtype: torch.dtype, seed: int) -> Any:
    """A StableDiffusionPipeline object as it is, or built from "tiny-random", a folder or a hub id."""
    if sd == TINY_RANDOM:
        return tiny_sd_pipeline(seed).to(device, dtype)
    if not isinstance(sd, (str, os.PathLike)):
        return sd
    from diffusers import StableDiffusionPipeline

    pipe = from_pretrained(
        StableDiffusionPipeline, sd, "an SD1.5 pipeline", torch_dtype=dtype, safety_checker=None
    )
    return pipe.to(device)


def load_sd15_wplus(
    sd: Any,
    adapter: Any,
    encoder: Any,
    *,
    device: str,
    torch_dtype: torch.dtype,
    seed: int = 0,
    **encoder_kwargs: Any,
) -> WPlusSD15Pipeline:
    """Backbone "sd15-wplus". sd: a StableDiffusionPipeline, folder, hub id or "tiny-random"; adapter: a
    WPlusAdapter, an official wplus_adapter.bin, a folder, or "tiny-random"; encoder: an IdentityEncoder
    giving W+ flattened (e.g. WPlusIdentityEncoder), or "tiny-random"."""
    from idgen.models.wplus import load_wplus_adapter

    if sd == FLUX_HUB_REPO or encoder == "pulid":  # idgen.load's FLUX defaults
        raise IdgenError(
            "backbone 'sd15-wplus' needs its own parts: idgen.load(<SD1.5 pipeline>, <W+ adapter>, "
            "<W+ identity encoder>, backbone='sd15-wplus')"
        )
    sd = sd_pipeline(sd, device, torch_dtype, seed)
    if adapter == TINY_RANDOM:
        adapter = tiny_wplus_adapter(sd.unet, seed)
    elif not isinstance(adapter, WPlusAdapter):
        adapter = load_wplus_adapter(adapter, device=device, dtype=torch_dtype)
    if encoder == TINY_RANDOM:
        encoder = tiny_wplus_encoder(seed, **encoder_kwargs)
    return WPlusSD15Pipeline(sd, adapter, encoder)
