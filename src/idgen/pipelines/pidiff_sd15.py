"""PIDiff / W+ adapter generation on a stock diffusers StableDiffusionPipeline (SD1.5)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from idgen.backbones.sd15 import (
    DEFAULT_START_FRACTION,
    WPlusInjector,
    WPlusRun,
    cfg_id_tokens,
    delayed_start_step,
)
from idgen.core.gate import MaskPolicy, UniformMask
from idgen.core.wplus_edit import check_w_plus
from idgen.errors import IdgenError

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
    **pipe_kwargs: Any,
) -> Any:
    """Call `pipe` (a StableDiffusionPipeline whose UNet carries `injector`) with a W+ identity.

    w_plus=None generates plain SD. policy: UniformMask() when None; SpatialMask(...) gates the
    identity spatially (idgen.pipelines.pulid_flux.mask_policy("spatial") builds one by name).
    Extra keyword arguments go to the pipeline unchanged.
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
    prompts = 1 if isinstance(prompt, str) else len(prompt)
    batch = prompts * num_images_per_prompt
    use_cfg = guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
    run = WPlusRun(
        identity_tokens_for_batch(injector, w_plus, batch, use_cfg),
        id_weight=id_weight,
        start_step=delayed_start_step(num_inference_steps, start_fraction),
        policy=policy or UniformMask(),
        num_train_timesteps=int(pipe.scheduler.config.num_train_timesteps),
    )
    with injector.run(run):
        return pipe(**call)
