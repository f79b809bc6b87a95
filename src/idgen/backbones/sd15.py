"""The W+ adapter's residual identity cross-attention on a stock diffusers UNet2DConditionModel.

In every cross-attention layer the identity attends next to the text, reading the text
attention's output f' (before the output projection) as its query:

    f'  = TextAttention(f)
    f'' = f' + lambda * mask (.) softmax((f' Wq+)(F_w Wk+)^T / sqrt(d)) (F_w Wv+)
    out = to_out(f'')

`WPlusAttnProcessor` does this as a diffusers attention processor; `WPlusInjector` installs one
on each cross-attention (self-attentions keep their stock processor), restores the originals on
`remove()`, and reads each UNet call's timestep and latent size from a forward pre-hook. Identity tokens
and settings travel in an InjectionRun (`WPlusRun`: SD's timestep range), shared with the FLUX backbone;
outside a run, or while the identity branch is off, each processor computes exactly what the stock
AttnProcessor2_0 does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idgen.backbones.run import InjectionRun, RunHost, call_arguments
from idgen.core.gate import gate
from idgen.core.masks import CAOutput, Grid
from idgen.errors import CheckpointError, IdgenError
from idgen.models.wplus import WPlusAdapter, WPlusConfig, WPlusProjections

DEFAULT_START_FRACTION = 0.2  # W+ adapter: identity off for the first 20% of the steps
PROCESSOR_SUFFIX = ".processor"


def delayed_start_step(num_steps: int, start_fraction: float = DEFAULT_START_FRACTION) -> int:
    """First denoising step with the identity on: round(start_fraction * num_steps).

    30 steps at 0.2 -> steps 0-5 run without identity, 6-29 with it.
    """
    if num_steps < 1:
        raise IdgenError(f"number of steps must be >= 1, got {num_steps}")
    if not 0.0 <= start_fraction <= 1.0:
        raise IdgenError(f"identity start fraction must be in [0, 1], got {start_fraction}")
    return round(start_fraction * num_steps)


def latent_token_grid(latent_hw: tuple[int, int], tokens: int) -> Grid:
    """The (rows, cols) grid of one UNet level: the latent halved (rounding up, as SD's stride-2
    convolutions do) until it holds `tokens` tokens. Tokens are row-major, as diffusers'
    Transformer2DModel flattens them."""
    rows, cols = latent_hw
    if rows < 1 or cols < 1:
        raise IdgenError(f"latent size must be positive, got {latent_hw}")
    while rows * cols > tokens:
        if rows == 1 and cols == 1:
            break
        rows, cols = math.ceil(rows / 2), math.ceil(cols / 2)
    if rows * cols != tokens:
        raise IdgenError(f"{tokens} attention tokens do not fit a {latent_hw[0]}x{latent_hw[1]} latent")
    return rows, cols


@dataclass
class WPlusRun(InjectionRun):
    """An InjectionRun on SD's timesteps (0..1000). With classifier-free guidance the UNet batch is
    [uncond; cond], so pass `cfg_id_tokens(cond, uncond, batch)` as id_tokens."""

    num_train_timesteps: int = 1000


def cfg_id_tokens(cond: Tensor, uncond: Tensor | None, batch: int) -> Tensor:
    """Identity tokens for a UNet batch: [uncond x batch; cond x batch] with CFG, cond x batch without.

    cond, uncond: (1 | batch, K, dim). The W+ adapter's uncond tokens are F_w(zeros).
    """

    def rows(tokens: Tensor) -> Tensor:
        if tokens.shape[0] not in (1, batch):
            raise IdgenError(
                f"identity tokens have batch {tokens.shape[0]}, the generation has batch {batch}"
            )
        return tokens.expand(batch, -1, -1)

    return rows(cond) if uncond is None else torch.cat([rows(uncond), rows(cond)])


def cross_attention_dim(unet: nn.Module) -> int:
    return int(cast(Any, unet).config.cross_attention_dim)


def attention_layers(unet: nn.Module) -> tuple[tuple[int, int], ...]:
    """(slot, width) of each cross-attention: slot = its position in unet.attn_processors."""
    layers = []
    for slot, name in enumerate(cast(dict[str, Any], unet.attn_processors)):
        attn: Any = unet.get_submodule(name.removesuffix(PROCESSOR_SUFFIX))
        if attn.is_cross_attention:
            layers.append((slot, int(attn.inner_dim)))
    return tuple(layers)


def wplus_config_for_unet(unet: nn.Module, **sizes: Any) -> WPlusConfig:
    """A W+ adapter config whose layers and token width fit this UNet (other sizes from `sizes`)."""
    return WPlusConfig(token_dim=cross_attention_dim(unet), attention_layers=attention_layers(unet), **sizes)


@torch.no_grad()
def init_projections_from_unet(adapter: WPlusAdapter, unet: nn.Module) -> None:
    """Wq+, Wk+, Wv+ <- each layer's own to_q, to_k, to_v (the W+ adapter's initialisation)."""
    check_fits(adapter, unet)
    names = list(cast(dict[str, Any], unet.attn_processors))
    for slot, _ in adapter.config.attention_layers:
        attn: Any = unet.get_submodule(names[slot].removesuffix(PROCESSOR_SUFFIX))
        projections = adapter.projections(slot)
        if attn.to_q.weight.shape != projections.to_q_wplus.weight.shape:
            raise IdgenError(
                f"{names[slot]}: to_q is {tuple(attn.to_q.weight.shape)}, Wq+ needs a square "
                f"{tuple(projections.to_q_wplus.weight.shape)} map to initialise from it"
            )
        projections.to_q_wplus.weight.copy_(attn.to_q.weight)
        projections.to_k_wplus.weight.copy_(attn.to_k.weight)
        projections.to_v_wplus.weight.copy_(attn.to_v.weight)


def check_fits(adapter: WPlusAdapter, unet: nn.Module) -> None:
    """CheckpointError unless the adapter's layers and token width are this UNet's."""
    config = adapter.config
    token_dim = cross_attention_dim(unet)
    if config.token_dim != token_dim:
        raise CheckpointError(
            f"W+ adapter makes {config.token_dim}-wide tokens, "
            f"this UNet's cross-attention is {token_dim} wide"
        )
    ours = attention_layers(unet)
    if tuple(config.attention_layers) != ours:
        theirs = dict(config.attention_layers)
        here = dict(ours)
        for slot in sorted(set(theirs) | set(here)):
            if theirs.get(slot) != here.get(slot):
                raise CheckpointError(
                    f"W+ adapter does not fit this UNet: attention slot {slot} is "
                    f"{_describe(theirs.get(slot))} in the adapter and "
                    f"{_describe(here.get(slot))} in the UNet"
                )


def _describe(width: int | None) -> str:
    return "absent" if width is None else f"{width} wide"


def text_attention(
    attn: Any, hidden_states: Tensor, encoder_hidden_states: Tensor | None, attention_mask: Tensor | None
) -> Tensor:
    """AttnProcessor2_0's attention up to its output projection: (B, N, C) -> f' (B, N, width)."""
    batch, sequence_length, _ = (
        hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
    )
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch)
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, N, d)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, L, d)
    value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
    )
    return out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)


class WPlusAttnProcessor:
    """Stock scaled-dot-product attention plus the W+ identity residual before the output projection.

    The text path runs the same operations, in the same order, as diffusers' AttnProcessor2_0, so
    with the identity branch off the layer's output is bit-identical to the stock one.
    """

    def __init__(self, projections: WPlusProjections, injector: WPlusInjector, name: str) -> None:
        self.projections, self.injector, self.name = projections, injector, name

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        shape = hidden_states.shape
        if len(shape) == 4:  # (B, C, H, W) -> (B, HW, C)
            hidden_states = hidden_states.view(shape[0], shape[1], shape[2] * shape[3]).transpose(1, 2)
        text_out = text_attention(attn, hidden_states, encoder_hidden_states, attention_mask)  # f'
        text_out = self._add_identity(attn.heads, text_out)  # f''
        out = attn.to_out[1](attn.to_out[0](text_out))  # projection, dropout
        if len(shape) == 4:
            out = out.transpose(-1, -2).reshape(shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _add_identity(self, heads: int, text_out: Tensor) -> Tensor:
        # text_out (B, N, width) = f'
        run, id_tokens = self.injector.active()
        if run is None or id_tokens is None:
            return text_out
        batch, tokens = text_out.shape[:2]
        if id_tokens.shape[0] != batch:
            if id_tokens.shape[0] != 1:
                raise IdgenError(
                    f"identity tokens have batch {id_tokens.shape[0]}, the UNet runs batch {batch} "
                    f"(with CFG pass cfg_id_tokens(cond, uncond, batch))"
                )
            id_tokens = id_tokens.expand(batch, -1, -1)
        id_out, probs = self.projections.attend(text_out, id_tokens, heads)  # (B, N, width), (B, h, N, K)
        policy = run.policy
        grid = latent_token_grid(run.grid, tokens)
        mask = policy(CAOutput(id_out, probs if policy.needs_attn_probs else None), run.t, grid)
        if run.recorder is not None and grid == run.grid:  # the latent's own resolution only
            rows = run.recorded_rows or batch  # with CFG, the cond half
            kept = None if mask is None else mask[-rows:]
            run.recorder.record(run.step, run.t, self.name, kept, id_out[-rows:], grid)
        return gate(text_out, id_out, run.id_weight, mask)


class WPlusInjector(RunHost):
    """Installs W+ processors on a UNet2DConditionModel's cross-attentions.

    Use `with injector.run(WPlusRun(...)):` around a training forward, or around a pipeline call given
    `callback_on_step_end=run.step_end_callback` (it marks the step boundaries); outside
    a run the UNet computes exactly what it did before. `remove()` restores the original processors.
    """

    denoiser = "UNet"

    def __init__(self, unet: nn.Module, adapter: WPlusAdapter) -> None:
        super().__init__()
        check_fits(adapter, unet)
        self.unet, self.adapter = unet, adapter
        self.original_processors = dict(cast(dict[str, Any], unet.attn_processors))
        if any(isinstance(p, WPlusAttnProcessor) for p in self.original_processors.values()):
            raise IdgenError("a W+ adapter is already installed on this UNet; remove() it first")
        names = list(self.original_processors)
        processors = dict(self.original_processors)
        for slot, _ in adapter.config.attention_layers:
            name = names[slot]
            processors[name] = WPlusAttnProcessor(adapter.projections(slot), self, name)
        unet.set_attn_processor(processors)  # type: ignore[operator]
        self._handle: Any = unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)

    def remove(self) -> None:
        if self._handle is None:
            return
        self._handle.remove()
        self._handle = None
        # set_attn_processor pops from the dict it is given: hand it a copy.
        self.unet.set_attn_processor(dict(self.original_processors))  # type: ignore[operator]

    def _check_run(self, run: InjectionRun) -> None:
        if self._handle is None:
            raise IdgenError("this W+ injector was removed from its UNet")
        token_dim = self.adapter.config.token_dim
        if run.id_tokens.shape[-1] != token_dim:
            raise IdgenError(
                f"identity tokens are {run.id_tokens.shape[-1]} wide, the adapter expects {token_dim}"
            )

    def _before_unet(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        run = self._run
        if run is None:
            return
        inputs = call_arguments(module, args, kwargs)
        sample, timestep = inputs["sample"], inputs["timestep"]  # sample (B, C, H, W) latents
        run.advance(
            float(torch.as_tensor(timestep).flatten()[0].item()), (sample.shape[-2], sample.shape[-1])
        )
        tokens = run.tokens_for_call()
        if tokens is None:
            self._tokens = None
            return
        weight = next(self.adapter.parameters())
        if weight.device != sample.device:
            # Model CPU offload moves the UNet at call time; the identity weights follow it.
            self.adapter.to(sample.device)
            weight = next(self.adapter.parameters())
        unet_dtype = cast(torch.dtype, getattr(module, "dtype", weight.dtype))
        if weight.dtype != unet_dtype:
            raise IdgenError(
                f"the W+ adapter is {weight.dtype} but the UNet is {unet_dtype}; move it with .to()"
            )
        self._tokens = tokens.to(weight.device, weight.dtype)


def install_wplus(unet: nn.Module, adapter: WPlusAdapter) -> WPlusInjector:
    """Put W+ processors on the UNet's cross-attentions; `.remove()` on the result undoes it."""
    return WPlusInjector(unet, adapter)
