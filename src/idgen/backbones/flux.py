"""PuLID's identity residual on diffusers' FluxTransformer2DModel, through forward hooks.

PuLID-FLUX adds `image_tokens += id_weight * CA(id_tokens, image_tokens)` after double blocks
with index % 2 == 0 and after single blocks with index % 4 == 0 (20 points on FLUX.1). diffusers'
blocks both return (encoder_hidden_states, hidden_states) with the image tokens alone in
hidden_states, so a forward hook on each chosen block reproduces that arithmetic exactly without
touching the transformer's code. A pre-hook on the transformer reads the normalised time and the
token grid of each call (by argument name); a hook after it gives the negative pass of a step before
true CFG starts the conditional pass's output (see InjectionRun.true_cfg_start_step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import torch
from torch import Tensor, nn

from idgen.backbones.run import InjectionRun, Recorder, RunHost, call_arguments
from idgen.core.gate import MaskPolicy, gate
from idgen.core.masks import CAOutput
from idgen.errors import CheckpointError

__all__ = [
    "FluxIdentityInjector",
    "IdentityAdapter",
    "InjectionPoint",
    "InjectionRun",
    "MaskPolicy",
    "Recorder",
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


def token_grid(img_ids: Tensor) -> tuple[int, int]:
    # img_ids (N, 3) = (0, row, col) per packed image token
    ids = img_ids[0] if img_ids.ndim == 3 else img_ids
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
        self.transformer, self.adapter = transformer, adapter
        self._cond_output: Any = None
        self._handles = [
            transformer.register_forward_pre_hook(self._before_transformer, with_kwargs=True),
            transformer.register_forward_hook(self._after_transformer),
        ]
        for point in self.points:
            blocks = double_blocks if point.kind == "double" else single_blocks
            block = blocks[point.block_index]
            self._handles.append(block.register_forward_hook(self._after_block_hook(point)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _after_run(self) -> None:
        self._cond_output = None

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

    def _after_transformer(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        run = self._run
        if run is None:
            return None
        if run.reuses_cond_output:
            # The negative pass ran (diffusers' loop cannot skip it); its result is discarded.
            return self._cond_output
        self._cond_output = output if run.keeps_cond_output else None
        return None

    def _after_block_hook(self, point: InjectionPoint) -> Callable[..., Any]:
        ca = self.adapter.identity_attention(point.ca_index)

        def hook(module: nn.Module, args: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> Any:
            run, id_tokens = self._run, self._tokens
            if run is None or id_tokens is None:
                return output
            encoder_hidden_states, hidden_states = output
            return encoder_hidden_states, self._inject(ca, point, run, id_tokens, hidden_states)

        return hook

    def _inject(
        self, ca: nn.Module, point: InjectionPoint, run: InjectionRun, id_tokens: Tensor, hidden: Tensor
    ) -> Tensor:
        # hidden (B, N, dim) image tokens; id_tokens (1|B, K, kv_dim)
        if run.competition is not None:
            return self._inject_competing(ca, point, run, id_tokens, hidden)
        if id_tokens.shape[0] != hidden.shape[0]:
            id_tokens = id_tokens.expand(hidden.shape[0], -1, -1)
        heads_out, probs = ca.attend(id_tokens, hidden)  # type: ignore[operator]
        residual = ca.to_out(heads_out)  # type: ignore[operator]
        policy = run.policy
        output = CAOutput(heads_out, probs if policy.needs_attn_probs else None)
        mask = policy(output, run.t, run.grid)
        if run.recorder is not None:
            run.recorder.record(run.step, run.t, point.name, mask, heads_out, run.grid)
        return gate(hidden, residual, run.id_weight, mask)

    def _inject_competing(
        self, ca: nn.Module, point: InjectionPoint, run: InjectionRun, id_tokens: Tensor, hidden: Tensor
    ) -> Tensor:
        """Several identities: each one's CA on the same image tokens (batched), masks from the competition.

        hidden (B, N, dim); id_tokens (n * B, K, kv_dim), identity-major."""
        competition = cast(Any, run.competition)
        count, batch = competition.identities, hidden.shape[0]
        stacked = hidden if count == 1 else hidden.repeat(count, 1, 1)  # (n * B, N, dim)
        heads_out, probs = ca.attend(id_tokens, stacked)  # type: ignore[operator]
        residual = ca.to_out(heads_out)  # type: ignore[operator]
        keep_probs = competition.needs_attn_probs
        outputs = [
            CAOutput(
                heads_out[i * batch : (i + 1) * batch],
                probs[i * batch : (i + 1) * batch] if keep_probs else None,
            )
            for i in range(count)
        ]
        masks = competition(outputs, run.t, run.grid)  # n x (B, N, 1) | None
        if run.recorder is not None:
            record_identities(run.recorder, run, point.name, masks, outputs)
        for i, mask in enumerate(masks):
            hidden = gate(hidden, residual[i * batch : (i + 1) * batch], run.id_weights[i], mask)
        return hidden


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
