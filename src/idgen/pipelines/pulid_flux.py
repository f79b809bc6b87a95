"""PuLID-FLUX with SpatialID on a stock diffusers FluxPipeline."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any, cast

import torch

from idgen.backbones.flux import FluxIdentityInjector, IdentityAdapter, encode_id_tokens
from idgen.backbones.run import InjectionRun, Recorder
from idgen.core.gate import MaskPolicy, SpatialMask
from idgen.core.schedule import TemporalSpatialScheduler
from idgen.errors import IdgenError
from idgen.identity.base import IdentityEncoder, IdentityFeatures
from idgen.models.pulid import PuLIDAdapter
from idgen.pipelines.base import (
    MODES,
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
from idgen.pipelines.multi import (
    Identities,
    PhotoCombination,
    bounded_attention_kwargs,
    check_bound_attention,
    check_identities,
    check_negative_identity,
    competing_run,
    scalar_weight,
    several_identities,
)
from idgen.pipelines.tiny import (
    TINY_RANDOM,
    tiny_flux_pipeline,
    tiny_identity_encoder,
    tiny_pulid_adapter,
    tiny_wplus_encoder,
)
from idgen.pipelines.user_masks import mask_box, user_mask

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

    It follows diffusers' conventions: `from_pretrained` / `save_pretrained` (see idgen.pipelines.folders),
    `from_pipe` (Img2Img, Inpaint, Kontext), `.to()`, `device`, `dtype`, the offload methods, `return_dict`,
    `output_type`, `num_images_per_prompt`, `prompt_embeds`, and fresh noise unless given a seed or generator.
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
        # The spatial mode's policy, schedule included (a call's preset replaces the schedule): the
        # authors' unless the model says otherwise, as the demo world does for its small token grid.
        self.spatial = spatial or authors_spatial()
        # Sampling settings used when a call leaves them out; FLUX.1's unless the model says otherwise.
        self.defaults = {**FLUX_DEFAULTS, **(defaults or {})}
        self.adapter = adapter.to(resident_device(param)).eval()  # its dtype: the injector's compute_dtype
        self.injector = FluxIdentityInjector(flux.transformer, self.adapter)

    @property
    def pixel_multiple(self) -> int:
        # latents are /vae_scale_factor and packed 2x2: one token per (2 * factor) pixels
        return int(self.flux.vae_scale_factor) * 2

    def encode_identity(self, id_image: PhotoInput) -> IdentityFeatures:
        return encode_photo(self.encoder, id_image)

    @torch.no_grad()
    def __call__(
        self, prompt: str | list[str] | None = None, id_image: PhotoInput | None = None, *,
        id_features: IdentityFeatures | list[Any] | None = None, mode: str = SPATIAL,
        policy: MaskPolicy | None = None, preset: str | None = None,
        scheduler: TemporalSpatialScheduler | None = None, id_weight: float | list[float] = 1.0,
        start_step: int = 0, true_cfg_scale: float | None = None, negative_prompt: str | None = None,
        height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
        guidance_scale: float | None = None, seed: int | list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        max_sequence_length: int | None = None, recorder: Recorder | None = None,
        true_cfg_start_step: int | None = None, num_images_per_prompt: int = 1, return_dict: bool = True,
        id_images: list[Any] | None = None, boxes: list[Any] | None = None, masks: list[Any] | None = None,
        combine: PhotoCombination | None = None, negative_identity: str | None = None,
        bound_attention: bool | None = None, **flux_kwargs: Any,
    ) -> Any:  # fmt: skip
        """Generate. `policy` (a mask policy object) overrides `mode`; `scheduler` overrides `preset`, and
        with neither the spatial mode keeps `self.spatial`'s schedule (the model's; v1 for FLUX).

        Sampling settings left as None come from `self.defaults`. A list of prompts (or prompt_embeds rows)
        is one batch of prompts x num_images_per_prompt images, image i of prompt p at row
        p * num_images_per_prompt + i. `seed`: None draws fresh noise (diffusers' behaviour), an int gives
        image k the seed seed + k, a list one seed per image. `id_features`: one photo's features, or one row
        per prompt. With true CFG (true_cfg_scale > 1), steps before `true_cfg_start_step` use the
        conditional prediction alone, as PuLID-FLUX's sampler does (diffusers still runs their negative
        pass). Other keywords (output_type, image, strength, prompt_embeds, ...) go to the wrapped FLUX
        pipeline. Returns an IdentityPipelineOutput (its to_tuple() if not return_dict). Several people:
        id_images, boxes, masks, combine, negative_identity, bound_attention (`_identities`)."""
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
        identities = self._identities(
            s, (negative_identity, bound_attention), id_image, id_images, id_features, id_weight, boxes, masks
        )
        prompts, per_prompt = batch_size(prompt, flux_kwargs.get("prompt_embeds")), num_images_per_prompt
        chosen = policy if policy is not None else mask_policy(mode, preset, scheduler, spatial=self.spatial)
        generator = generator if generator is not None else seed_generators(seed, prompts * per_prompt)
        call = {**self._flux_call(prompt, prompts, s, generator, flux_kwargs), **flux_kwargs}
        images_per_prompt(call, per_prompt)
        given = (id_image, id_features, id_weight, combine, start_step, recorder)
        features, run = self._identity_run(call, s, chosen, mode, identities, given, (prompts, per_prompt))
        output = IdentityPipelineOutput(images=self._sample(call, run), id_features=features)
        return output if return_dict else output.to_tuple()

    def _identities(
        self, s: dict[str, Any], rules: tuple[str | None, bool | None], *given: Any
    ) -> Identities | None:
        """A several-people call's identities, checked (None for a call with one id_image / id_features).

        Several people (docs/multi-identity.md): `id_images=[a, b]`, each entry a photo or a list of photos
        of that person (joined by `combine`, a PhotoCombination; default MeanAll), or `id_features=[fa, fb]`;
        optional `boxes` (left, top, right, bottom in [0, 1]) or `masks`, one per person; `id_weight` one
        float or one per person. In the spatial mode the people's masks compete for each token; in the
        uniform mode their residuals are summed. With true CFG, `negative_identity` says what each person's
        negative pass takes: PuLID's uncond id tokens ("uncond") or the other people's ("others"); by default
        "others" where the masks compete (spatial mode), "uncond" in uniform mode (`negative_identity_rule`).
        `bound_attention=True`: each person's image tokens are kept from attending to another person's box
        or mask (off by default: on the demo world it costs scene adherence; docs/multi-identity.md).

        rules: negative_identity, bound_attention; given: id_image, id_images, id_features, id_weight, boxes,
        masks."""
        negative_identity, bound_attention = rules
        id_image, id_images, id_features, id_weight, boxes, masks = given
        identities = None
        if several_identities(id_images, id_features, id_weight, boxes, masks):
            grid = (s["height"] // self.pixel_multiple, s["width"] // self.pixel_multiple)
            identities = check_identities(id_image, id_images, id_features, id_weight, boxes, masks, grid)
        if negative_identity is not None:
            people = 1 if identities is None else identities.count
            check_negative_identity(negative_identity, people, (s["true_cfg_scale"] or 1.0) > 1.0)
            if identities is not None:
                identities = dataclasses.replace(identities, negative=negative_identity)
        if bound_attention is not None:
            check_bound_attention(bound_attention, identities)
            if identities is not None:
                identities = dataclasses.replace(identities, bounded=bound_attention)
        return identities

    def _identity_run(
        self, call: dict[str, Any], s: dict[str, Any], policy: MaskPolicy | None, mode: str,
        identities: Identities | None, given: tuple[Any, ...], batch: tuple[int, int],
    ) -> tuple[IdentityFeatures | None, InjectionRun | None]:  # fmt: skip
        """The call's InjectionRun (and one person's features); no policy (mode "none"): no run.
        given: id_image, id_features, id_weight, combine, start_step, recorder; batch: (prompts, images per
        prompt)."""
        if policy is None:
            return None, None
        id_image, id_features, id_weight, combine, start_step, recorder = given
        settings = dict(
            start_step=start_step, recorder=recorder, true_cfg_start_step=s["true_cfg_start_step"]
        )
        (prompts, per_prompt), true_cfg = batch, call["true_cfg_scale"] > 1.0
        if identities is not None:
            self._bound_attention(call, s, identities)
            run = competing_run(
                self, identities, mode, policy, prompts * per_prompt, true_cfg, combine=combine, **settings
            )
            return None, run
        features = resolve_features(self.encoder, mode, id_image, cast(Any, id_features), prompts)
        run = self._injection_run(
            features,
            per_prompt,
            prompts * per_prompt,
            true_cfg,
            id_weight=id_weight,
            policy=policy,
            **settings,
        )
        return features, run

    def _bound_attention(self, call: dict[str, Any], s: dict[str, Any], identities: Identities) -> None:
        """With bound_attention, FLUX's joint attention keeps each person's image tokens from attending to
        another person's region (beside the user's own joint_attention_kwargs)."""
        if not identities.bounded:
            return
        if "Kontext" in type(self.flux).__name__:  # its reference image's tokens change the sequence
            raise IdgenError(
                "bound_attention does not run on a Kontext pipeline (its reference image's tokens)"
            )
        grid = (s["height"] // self.pixel_multiple, s["width"] // self.pixel_multiple)
        embeds = call.get("prompt_embeds")
        text_tokens = int(embeds.shape[1]) if embeds is not None else int(s["max_sequence_length"])
        bounds = bounded_attention_kwargs(identities.regions, grid, text_tokens, self.flux._execution_device)
        call["joint_attention_kwargs"] = {**(call.get("joint_attention_kwargs") or {}), **bounds}

    def _sample(self, call: dict[str, Any], run: InjectionRun | None) -> Any:
        """The wrapped pipeline's images, with the identity run active (None: stock FLUX)."""
        call = {**call, "return_dict": True}
        try:
            if run is None:
                return self.flux(**call).images
            run.mark_steps_in(call)
            with self.injector.run(run):
                return self.flux(**call).images
        finally:  # an offload hook took the transformer back: the identity networks go with it
            self.adapter.to(resident_device(next(self.flux.transformer.parameters())))

    def _flux_call(
        self, prompt: Any, prompts: int, s: dict[str, Any], generator: Any, given: dict[str, Any]
    ) -> dict[str, Any]:
        """The FLUX pipeline's arguments."""
        true_cfg = s["true_cfg_scale"] > 1.0
        negative = s["negative_prompt"]
        if true_cfg and negative is None and given.get("negative_prompt_embeds") is None:
            raise IdgenError("true_cfg_scale > 1 needs a negative_prompt")
        if true_cfg and negative is not None and (prompts > 1 or isinstance(prompt, list)):
            negative = [negative] * prompts
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
        self, features: IdentityFeatures, per_prompt: int, images: int, true_cfg: bool, **settings: Any
    ) -> InjectionRun:
        """An InjectionRun with the identity tokens (and uncond ones for true CFG), one row per image."""
        id_tokens, uncond_tokens = encode_id_tokens(self.adapter, features, with_uncond=true_cfg)
        uncond = None if uncond_tokens is None else rows_per_image(uncond_tokens, per_prompt, images)
        return InjectionRun(
            id_tokens=rows_per_image(id_tokens, per_prompt, images), uncond_id_tokens=uncond, **settings
        )

    # diffusers' pipeline conventions, passed to the wrapped FLUX pipeline

    @classmethod
    def from_pretrained(
        cls, flux: str | os.PathLike[str], adapter: Any = None, encoder: Any = "pulid", *,
        torch_dtype: torch.dtype | None = None, flux_class: Any = None, encoder_device: str | None = None,
        seed: int = 0, **flux_kwargs: Any,
    ) -> IdentityFluxPipeline:  # fmt: skip
        """An identity pipeline from a folder that save_pretrained wrote (FLUX and adapter in one), or a FLUX
        folder / hub id with `adapter` (an adapter folder or file, a hub id, or "tiny-random").

        Loaded on the CPU in `torch_dtype` (default float32), as diffusers does; move it with `.to()` or
        an offload method. `flux_class` picks the FLUX pipeline class (FluxImg2ImgPipeline, ...);
        `encoder` is an IdentityEncoder, "pulid" (built on `encoder_device`, default cuda if present)
        or "tiny-random". The saved sampling defaults come back; a custom spatial policy does not.
        """
        from idgen.pipelines.folders import saved_defaults

        dtype = torch_dtype or torch.float32
        identity = pretrained_adapter(flux, adapter, dtype, seed)  # the small part first: errors come early
        flux_pipe = pretrained_flux(flux, flux_class, dtype, seed, **flux_kwargs)
        tiny = tiny_identity_encoder if isinstance(identity, PuLIDAdapter) else tiny_wplus_encoder
        device = encoder_device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(flux_pipe, identity, identity_encoder(encoder, device, seed, tiny), saved_defaults(flux))

    def save_pretrained(
        self, folder: str | os.PathLike[str], *, save_flux: bool = True, overwrite: bool = False
    ) -> Path:
        """Write the identity adapter (config.json + model.safetensors under identity_adapter/), the sampling
        defaults, and unless `save_flux` is False the FLUX pipeline in diffusers' layout, all in `folder`.
        Existing parts are refused unless `overwrite`."""
        from idgen.pipelines.folders import save_identity_folder

        flux = self.flux if save_flux else None
        return save_identity_folder(folder, self.adapter, self.defaults, flux, overwrite=overwrite)

    @classmethod
    def from_pipe(cls, pipe: IdentityFluxPipeline, flux_class: Any = None, **flux_kwargs: Any) -> Any:
        """The same identity pipeline on another FLUX pipeline class sharing the same parts, e.g.
        `IdentityFluxPipeline.from_pipe(pipe, FluxKontextPipeline)` (diffusers' from_pipe underneath)."""
        twin = copy.copy(pipe)
        twin.defaults = dict(pipe.defaults)
        twin.flux = (flux_class or type(pipe.flux)).from_pipe(pipe.flux, **flux_kwargs)
        if twin.flux.transformer is not pipe.flux.transformer:  # a transformer given in flux_kwargs
            twin.injector = FluxIdentityInjector(twin.flux.transformer, twin.adapter)
        return twin

    @property
    def device(self) -> torch.device:
        return self.flux.device

    @property
    def dtype(self) -> torch.dtype:
        return self.flux.dtype

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """The FLUX pipeline's step bar (DiffusionPipeline.set_progress_bar_config)."""
        self.flux.set_progress_bar_config(**kwargs)

    def to(self, *args: Any, **kwargs: Any) -> IdentityFluxPipeline:
        """Move/cast the FLUX pipeline (DiffusionPipeline.to's arguments) and the identity adapter with it."""
        self.flux.to(*args, **kwargs)
        kwargs.pop("silence_dtype_warnings", None)
        self.adapter.to(*args, **kwargs)
        return self

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: Any = None) -> None:
        """diffusers' model offload; the adapter joins the transformer on the accelerator at each call."""
        self.flux.enable_model_cpu_offload(gpu_id=gpu_id, device=device)
        self.adapter.to("cpu")

    def enable_sequential_cpu_offload(self, gpu_id: int | None = None, device: Any = None) -> None:
        """diffusers' sequential offload; the adapter moves whole to the accelerator at each call."""
        self.flux.enable_sequential_cpu_offload(gpu_id=gpu_id, device=device)
        self.adapter.to("cpu")

    def enable_group_offload(self, onload_device: Any, offload_device: Any = "cpu", **kwargs: Any) -> None:
        """diffusers' group offload (its keywords: offload_type, num_blocks_per_group, use_stream, ...)."""
        self.flux.enable_group_offload(torch.device(onload_device), torch.device(offload_device), **kwargs)
        self.adapter.to(offload_device)


def resident_device(param: torch.Tensor) -> torch.device:
    """Where the identity networks wait beside a transformer weight: its device, or the CPU for a weight that
    sequential offload keeps on the meta device between calls (they move to the GPU with each call)."""
    return param.device if param.device.type != "meta" else torch.device("cpu")


GIVEN_EMBEDS = (
    "prompt_embeds",
    "pooled_prompt_embeds",
    "negative_prompt_embeds",
    "negative_pooled_prompt_embeds",
)


def images_per_prompt(call: dict[str, Any], per_prompt: int) -> None:
    """Set num_images_per_prompt. diffusers repeats the text embeddings it encodes for each image, but not
    given prompt_embeds; those are repeated here the same way (each row per_prompt times, in place)."""
    if per_prompt < 1:
        raise IdgenError(f"num_images_per_prompt must be >= 1, got {per_prompt}")
    if call.get("prompt_embeds") is None or per_prompt == 1:
        call["num_images_per_prompt"] = per_prompt
        return
    for name in GIVEN_EMBEDS:
        if call.get(name) is not None:
            call[name] = call[name].repeat_interleave(per_prompt, dim=0)
    negative = call.get("negative_prompt")
    if negative is not None:  # one negative prompt per image too
        rows = call["prompt_embeds"].shape[0] // per_prompt
        negative = [negative] * rows if isinstance(negative, str) else negative
        call["negative_prompt"] = [text for text in negative for _ in range(per_prompt)]
    call["num_images_per_prompt"] = 1


def rows_per_image(tokens: torch.Tensor, per_prompt: int, images: int) -> torch.Tensor:
    """Identity tokens (1 | prompts, K, dim) -> one row per image, in diffusers' order (the images of a
    prompt are consecutive rows)."""
    if tokens.shape[0] == 1:
        return tokens.expand(images, -1, -1)
    return tokens if per_prompt == 1 else tokens.repeat_interleave(per_prompt, dim=0)


def pretrained_flux(flux: Any, flux_class: Any, dtype: torch.dtype, seed: int, **kwargs: Any) -> Any:
    """A FLUX pipeline of `flux_class` (default FluxPipeline) from a folder, a hub id or "tiny-random"."""
    from diffusers import FluxPipeline

    if flux == TINY_RANDOM:
        tiny = tiny_flux_pipeline(seed).to(dtype=dtype)
        return tiny if flux_class in (None, FluxPipeline) else flux_class.from_pipe(tiny)
    what = "a FLUX pipeline"
    return from_pretrained(flux_class or FluxPipeline, flux, what, torch_dtype=dtype, **kwargs)


def pretrained_adapter(flux: Any, adapter: Any, dtype: torch.dtype, seed: int) -> Any:
    """The identity adapter: an object as it is, "tiny-random", or loaded from `adapter` (or else from the
    identity_adapter folder inside `flux`)."""
    from idgen.pipelines.folders import adapter_folder, load_identity_adapter

    if adapter == TINY_RANDOM:
        return tiny_pulid_adapter(seed).to(dtype=dtype)
    if adapter is not None and not isinstance(adapter, (str, os.PathLike)):
        return adapter
    source = adapter if adapter is not None else adapter_folder(flux) if flux != TINY_RANDOM else None
    if source is None:
        raise IdgenError(f"{flux} holds no identity_adapter folder; pass adapter=...")
    return load_identity_adapter(source, dtype)


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
