"""PuLID's identity residual on diffusers' FluxTransformer2DModel, through hooks.

PuLID-FLUX adds `image_tokens += id_weight * CA(id_tokens, image_tokens)` after double blocks
with index % 2 == 0 and after single blocks with index % 4 == 0 (20 points on FLUX.1). diffusers'
blocks both return (encoder_hidden_states, hidden_states) with the image tokens alone in
hidden_states, so a hook after each chosen block reproduces that arithmetic exactly without
touching the transformer's code. A pre-hook on the transformer reads the normalised time and the
token grid of each call (by argument name); a hook after it gives the negative pass of a step before
true CFG starts the conditional pass's output (see InjectionRun.true_cfg_start_step).

The block hooks are diffusers ModelHooks, innermost on each block: a diffusers cache (FirstBlockCache,
MagCache, ...) that skips a block skips its identity residual with it, and the residual it reuses holds
the identity exactly once. The identity networks run in their own dtype (the transformer's compute
dtype, never an fp8 or quantised storage dtype): image tokens are cast in, the residual cast back.
Under torch.compile(fullgraph=True) the block hooks join the graph and the per-call bookkeeping stays
eager, so neither a step nor a new id_weight recompiles.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import Tensor, nn

from idgen.backbones.run import InjectionRun, Recorder, RunHost, call_arguments
from idgen.core.gate import MaskPolicy, gate
from idgen.core.masks import CAOutput
from idgen.errors import CheckpointError, IdgenError

__all__ = [
    "FluxIdentityInjector",
    "IdentityAdapter",
    "InjectionPoint",
    "InjectionRun",
    "MaskPolicy",
    "Recorder",
    "compute_dtype",
    "encode_id_tokens",
    "injection_points",
    "token_grid",
]

DOUBLE_INTERVAL = 2
SINGLE_INTERVAL = 4


@dataclass(frozen=True)
class InjectionPoint:
    kind: Literal["double", "single"]
    block_index: int
    ca_index: int

    @property
    def name(self) -> str:
        return f"{self.kind}.{self.block_index}"


def injection_points(
    num_double: int,
    num_single: int,
    double_interval: int = DOUBLE_INTERVAL,
    single_interval: int = SINGLE_INTERVAL,
) -> list[InjectionPoint]:
    """Where PuLID injects, in forward order; FLUX.1 (19, 38) gives 10 + 10 = 20 points."""
    blocks = [("double", i) for i in range(0, num_double, double_interval)]
    blocks += [("single", i) for i in range(0, num_single, single_interval)]
    return [InjectionPoint(kind, i, ca_index) for ca_index, (kind, i) in enumerate(blocks)]  # type: ignore[arg-type]


COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def compute_dtype(transformer: nn.Module) -> torch.dtype:
    """The dtype a transformer computes in, never a storage dtype (fp8 under layerwise casting, uint8 of
    GGUF or bitsandbytes weights): diffusers' `dtype` gives the compute dtype of layerwise casting."""
    dtype = getattr(transformer, "dtype", None)
    if dtype in COMPUTE_DTYPES:
        return cast(torch.dtype, dtype)
    for param in transformer.parameters():
        dtype = getattr(param, "compute_dtype", param.dtype)  # GGUF parameters carry theirs
        if dtype in COMPUTE_DTYPES:
            return cast(torch.dtype, dtype)
    return torch.float32


def token_grid(img_ids: Tensor) -> tuple[int, int]:
    # img_ids (N, 3) = (0, row, col) per packed image token; FLUX.1 Kontext appends its context image's
    # tokens after them with a 1 first, so the grid is the generated image's (the rows with 0).
    ids = img_ids[0] if img_ids.ndim == 3 else img_ids
    ids = ids[ids[:, 0] == 0]
    return int(ids[:, 1].max().item()) + 1, int(ids[:, 2].max().item()) + 1


class IdentityAdapter(Protocol):
    """What the injector needs from an identity adapter (PuLIDAdapter, WPlusFluxAdapter)."""

    config: Any

    def encode(self, id_embedding: Tensor, vit_hidden: list[Tensor]) -> Tensor: ...

    def identity_attention(self, index: int) -> nn.Module: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...


class FluxIdentityInjector(RunHost):
    """Attaches an identity adapter's cross-attentions to a FluxTransformer2DModel.

    The adapter (PuLIDAdapter, or the W+ branch WPlusFluxAdapter) gives `config.num_ca`, `config.ca_dim`,
    `encode(id_embedding, vit_hidden)` and `identity_attention(i)` with `attend` and `to_out`.

    Use `with injector.run(run):` around a pipeline call given `callback_on_step_end=run.step_end_callback`
    (it marks the step boundaries); outside a run the hooks return the blocks' outputs untouched, so the
    transformer behaves as stock.
    """

    denoiser = "transformer"

    def __init__(self, transformer: nn.Module, adapter: IdentityAdapter) -> None:
        super().__init__()
        double_blocks = cast(nn.ModuleList, transformer.transformer_blocks)
        single_blocks = cast(nn.ModuleList, transformer.single_transformer_blocks)
        self.points = injection_points(len(double_blocks), len(single_blocks))
        config = adapter.config
        if config.num_ca != len(self.points):
            raise CheckpointError(
                f"PuLID checkpoint has {config.num_ca} cross-attentions but this transformer has "
                f"{len(self.points)} injection points"
            )
        width = int(transformer.inner_dim)  # type: ignore[arg-type]
        if config.ca_dim != width:
            raise CheckpointError(
                f"PuLID checkpoint is for transformer width {config.ca_dim}, this transformer is {width} wide"
            )
        if getattr(transformer, "is_cache_enabled", False):
            # Its hooks would sit inside ours and the identity would be added to the blocks it skips.
            raise IdgenError(
                "a diffusers cache is already enabled on the transformer: wrap it first, then call "
                "transformer.enable_cache(...) (or transformer.disable_cache() before wrapping)"
            )
        self.transformer, self.adapter = transformer, adapter
        adapter.to(dtype=compute_dtype(transformer))
        self._cond_output: Any = None
        self._weight = torch.tensor(1.0)
        self._handles = [
            transformer.register_forward_pre_hook(self._before_transformer, with_kwargs=True),
            transformer.register_forward_hook(self._after_transformer),
        ]
        self._hook_name = f"idgen-identity-{id(self):x}"
        self._blocks: list[nn.Module] = []
        for point in self.points:
            block = (double_blocks if point.kind == "double" else single_blocks)[point.block_index]
            registry = HookRegistry.check_if_exists_or_initialize(block)
            registry.register_hook(IdentityBlockHook(self, point), self._hook_name)
            self._blocks.append(block)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for block in self._blocks:
            HookRegistry.check_if_exists_or_initialize(block).remove_hook(self._hook_name, recurse=False)
        self._blocks.clear()

    def _after_run(self) -> None:
        self._cond_output = None

    # The per-call bookkeeping stays in Python under torch.compile: compiled, it would be specialised on the
    # sampler's step and recompiled at every one. Only the block hooks' tensor work joins the graph.
    @torch.compiler.disable
    def _before_transformer(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        run = self._run
        if run is None:
            return
        inputs = call_arguments(module, args, kwargs)
        hidden = inputs["hidden_states"]
        run.advance(float(inputs["timestep"].flatten()[0].item()), token_grid(inputs["img_ids"]))
        tokens = run.tokens_for_call()
        if tokens is not None and tokens.device != hidden.device:
            # Model CPU offload moves the transformer at call time; the identity networks follow it.
            self.adapter.to(hidden.device)
            tokens = tokens.to(hidden.device)
        self._tokens = tokens
        # Under torch.compile the weight is a graph input, so a new id_weight does not recompile.
        self._weight = torch.tensor(run.id_weight, device=hidden.device)

    @torch.compiler.disable
    def _after_transformer(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        run = self._run
        if run is None:
            return None
        if run.reuses_cond_output:
            # The negative pass ran (diffusers' loop cannot skip it); its result is discarded.
            return self._cond_output
        self._cond_output = output if run.keeps_cond_output else None
        return None

    def after_block(self, point: InjectionPoint, output: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """A block's (encoder_hidden_states, hidden_states), with the identity residual while a run is on."""
        run, id_tokens = self._run, self._tokens
        if run is None or id_tokens is None:
            return output
        encoder_hidden_states, hidden_states = output
        ca = self.adapter.identity_attention(point.ca_index)
        generated = run.grid[0] * run.grid[1]
        if hidden_states.shape[1] > generated:  # Kontext's context-image tokens follow: left as they are
            injected = self._inject(ca, point, run, id_tokens, hidden_states[:, :generated])
            return encoder_hidden_states, torch.cat([injected, hidden_states[:, generated:]], dim=1)
        return encoder_hidden_states, self._inject(ca, point, run, id_tokens, hidden_states)

    def _inject(
        self, ca: nn.Module, point: InjectionPoint, run: InjectionRun, id_tokens: Tensor, hidden: Tensor
    ) -> Tensor:
        # hidden (B, N, dim) image tokens; id_tokens (1|B, K, kv_dim), in the identity networks' dtype
        if run.competition is not None:
            return self._inject_competing(ca, point, run, id_tokens, hidden)
        if id_tokens.shape[0] != hidden.shape[0]:
            id_tokens = id_tokens.expand(hidden.shape[0], -1, -1)
        heads_out, probs = ca.attend(id_tokens, hidden.to(id_tokens.dtype))  # type: ignore[operator]
        residual = ca.to_out(heads_out).to(hidden.dtype)  # type: ignore[operator]
        policy = run.policy
        output = CAOutput(heads_out, probs if policy.needs_attn_probs else None)
        mask = policy(in_float32(output), run.t, run.grid)
        if run.recorder is not None:
            run.recorder.record(run.step, run.t, point.name, mask, heads_out, run.grid)
        # Eager keeps PuLID's exact arithmetic with a Python float.
        weight = self._weight if torch.compiler.is_compiling() else run.id_weight
        return gate(hidden, residual, cast(float, weight), mask)

    def _inject_competing(
        self, ca: nn.Module, point: InjectionPoint, run: InjectionRun, id_tokens: Tensor, hidden: Tensor
    ) -> Tensor:
        """Several identities: each one's CA on the same image tokens (batched), masks from the competition.

        hidden (B, N, dim); id_tokens (n * B, K, kv_dim), identity-major."""
        competition = cast(Any, run.competition)
        count, batch = competition.identities, hidden.shape[0]
        own = hidden.to(id_tokens.dtype)
        stacked = own if count == 1 else own.repeat(count, 1, 1)  # (n * B, N, dim)
        heads_out, probs = ca.attend(id_tokens, stacked)  # type: ignore[operator]
        residual = ca.to_out(heads_out).to(hidden.dtype)  # type: ignore[operator]
        keep_probs = competition.needs_attn_probs
        outputs = [
            in_float32(
                CAOutput(
                    heads_out[i * batch : (i + 1) * batch],
                    probs[i * batch : (i + 1) * batch] if keep_probs else None,
                )
            )
            for i in range(count)
        ]
        masks = competition(outputs, run.t, run.grid)  # n x (B, N, 1) | None
        if run.recorder is not None:
            record_identities(run.recorder, run, point.name, masks, outputs)
        for i, mask in enumerate(masks):
            hidden = gate(hidden, residual[i * batch : (i + 1) * batch], run.id_weights[i], mask)
        return hidden


class IdentityBlockHook(ModelHook):
    """The identity residual after one block, as a diffusers hook: registered before any cache hook, it
    runs only when the block's own forward runs."""

    def __init__(self, injector: FluxIdentityInjector, point: InjectionPoint) -> None:
        super().__init__()
        self.injector, self.point = injector, point

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        return self.injector.after_block(self.point, output)


def in_float32(output: CAOutput) -> CAOutput:
    """The mask policies run in float32 whatever the identity networks' dtype (fp32 is left as it is)."""
    if output.heads_out.dtype == torch.float32:
        return output
    probs = None if output.attn_probs is None else output.attn_probs.float()
    return CAOutput(output.heads_out.float(), probs)


def record_identities(
    recorder: Any, run: InjectionRun, point: str, masks: list[Tensor | None], outputs: list[CAOutput]
) -> None:
    """Each identity's mask to an IdentityRecorder; a plain Recorder gets their sum."""
    if hasattr(recorder, "record_identity"):
        for i, (mask, output) in enumerate(zip(masks, outputs, strict=True)):
            recorder.record_identity(i, run.step, run.t, point, mask, output.heads_out, run.grid)
        return
    given = [m for m in masks if m is not None]
    total = None if not given else given[0] if len(masks) == 1 else torch.stack(given).sum(0)
    recorder.record(run.step, run.t, point, total, outputs[0].heads_out, run.grid)


@torch.no_grad()
def encode_id_tokens(
    adapter: IdentityAdapter, features: Any, with_uncond: bool
) -> tuple[Tensor, Tensor | None]:
    """IdentityFeatures -> (id tokens, uncond id tokens or None), in the adapter's dtype and device."""
    param = next(adapter.parameters())
    features = features.to(param.device, param.dtype)
    tokens = adapter.encode(features.id_embedding, features.vit_hidden)
    if not with_uncond:
        return tokens, None
    zeros = features.zeros_like()
    return tokens, adapter.encode(zeros.id_embedding, zeros.vit_hidden)
