"""The identity gate and the policies that decide its per-token mask at one injection point."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from idgen.core.masks import (
    Box,
    CANormExtractor,
    CAOutput,
    FixedMaskExtractor,
    Grid,
    MaskExtractor,
    box_token_span,
    crop_output,
    token_centroid,
)
from idgen.core.refine import GridScaledRefiner, MaskRefiner, threshold_mask
from idgen.core.schedule import Stage, TemporalSpatialScheduler
from idgen.errors import IdgenError


def gate(hidden: Tensor, residual: Tensor, id_weight: float, mask: Tensor | None = None) -> Tensor:
    """hidden (B, N, D) + id_weight * [mask (B, N, 1) *] residual (B, N, D).

    mask=None is PuLID's exact arithmetic; a mask of ones gives bit-identical output because
    1 * residual == residual. The mask is cast to the residual's dtype so the sum keeps it.
    """
    if mask is None:
        return hidden + id_weight * residual
    return hidden + id_weight * (mask.to(residual.dtype) * residual)


class MaskPolicy(Protocol):
    """Decides the (B, N, 1) row-major mask at one injection point; None means uniform."""

    @property
    def needs_attn_probs(self) -> bool: ...

    def __call__(self, output: CAOutput, t: float, grid: Grid) -> Tensor | None: ...


class Refiner(Protocol):
    def __call__(self, masks: Tensor) -> Tensor: ...


class PriorAnchor(Protocol):
    """Where the early prior is centred: (B, 2) centres (x, y) on the prior's axes; NaN keeps the default."""

    @property
    def needs_attn_probs(self) -> bool: ...

    def __call__(self, output: CAOutput, grid: Grid) -> Tensor: ...


@dataclass(frozen=True)
class AttentionAnchor:
    """Centres the early prior on the tokens that stand out in this point's own CA output.

    The centred prior misses off-centre faces. Early attention is too noisy for its shape to be used, but
    where it peaks is often right: the centroid of its hard mask (> mean + k * std, as the refiner's) moves
    the prior there. A flat output keeps the default centre.
    """

    extractor: MaskExtractor = field(default_factory=CANormExtractor)
    k: float = 0.5

    @property
    def needs_attn_probs(self) -> bool:
        return self.extractor.needs_attn_probs

    def __call__(self, output: CAOutput, grid: Grid) -> Tensor:
        return token_centroid(threshold_mask(self.extractor(output, grid), self.k))  # (B, 2)


def _check_tokens(output: CAOutput, grid: Grid) -> tuple[int, int]:
    batch, tokens = output.heads_out.shape[:2]
    if tokens != grid[0] * grid[1]:
        raise IdgenError(f"{tokens} image tokens do not fill a {grid[0]}x{grid[1]} grid")
    return batch, tokens


class UniformMask:
    """PuLID: the same weight on every token."""

    needs_attn_probs = False

    def __call__(self, output: CAOutput, t: float, grid: Grid) -> Tensor | None:
        return None


@dataclass(frozen=True)
class ConstantMask:
    """A mask full of one value (1 reproduces PuLID through the masked path, 0 disables identity)."""

    value: float
    needs_attn_probs = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.value <= 1.0:
            raise IdgenError(f"constant mask value must be in [0, 1], got {self.value}")

    def __call__(self, output: CAOutput, t: float, grid: Grid) -> Tensor | None:
        heads_out = output.heads_out
        batch, tokens = heads_out.shape[:2]
        return torch.full((batch, tokens, 1), self.value, dtype=heads_out.dtype, device=heads_out.device)


@dataclass(frozen=True)
class SpatialMask:
    """SpatialID: prior early, refined attention mask mid, relaxed mask late, global floor always.

    anchor=None centres the prior on the image (or the scheduler's prior_box), as the authors do.
    attention_box: the mid and late masks come from the tokens inside this box alone, as if the box were
    the image (normalised and thresholded over them), and are 0 outside it. None: the whole image, as the
    authors do. A person given a box among several gets it: over the whole image, the other person's face
    draws this person's attention too and sets the scale of their mask.
    """

    scheduler: TemporalSpatialScheduler
    extractor: MaskExtractor = field(default_factory=CANormExtractor)
    refiner: Refiner = field(default_factory=MaskRefiner)
    anchor: PriorAnchor | None = None
    attention_box: Box | None = None
    # The early mask depends only on (grid, device, dtype): build it once, not per point and step.
    _early: dict[tuple[Grid, torch.device, torch.dtype], Tensor] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.attention_box is not None and isinstance(self.extractor, FixedMaskExtractor):
            raise IdgenError("a fixed mask reads no attention: it takes no attention_box")

    @property
    def needs_attn_probs(self) -> bool:
        return self.extractor.needs_attn_probs or (self.anchor is not None and self.anchor.needs_attn_probs)

    def __call__(self, output: CAOutput, t: float, grid: Grid) -> Tensor | None:
        heads_out = output.heads_out
        batch, tokens = _check_tokens(output, grid)
        stage = self.scheduler.stage(t)
        if stage is Stage.EARLY and self.anchor is not None:
            prior = self.scheduler.combine(stage, None, grid, centers=self.anchor(output, grid))  # (B, H, W)
            return prior.reshape(batch, tokens, 1).to(heads_out.dtype)
        if stage is Stage.EARLY:
            # The attention mask is unused early, so the extractor is not even called.
            key = ((int(grid[0]), int(grid[1])), heads_out.device, heads_out.dtype)
            early = self._early.get(key)
            if early is None:
                prior = self.scheduler.combine(Stage.EARLY, None, grid, device=heads_out.device)
                early = prior.reshape(1, tokens, 1).to(heads_out.dtype)  # (1, N, 1)
                self._early[key] = early
            return early.expand(batch, -1, -1)
        if self.attention_box is not None:
            mask = self._inside_box(self.attention_box, output, stage, grid)  # (B, H, W)
        else:
            mask = self.scheduler.combine(stage, self.refiner(self.extractor(output, grid)), grid)
        return mask.reshape(batch, tokens, 1).to(heads_out.dtype)

    def _inside_box(self, box: Box, output: CAOutput, stage: Stage, grid: Grid) -> Tensor:
        """(B, H, W): the stage's mask computed on the box's tokens alone, 0 elsewhere."""
        rows, cols = box_token_span(box, grid)
        inside = (rows.stop - rows.start, cols.stop - cols.start)
        mask = torch.zeros((output.heads_out.shape[0], *grid), device=output.heads_out.device)
        if inside[0] * inside[1] == 0:
            return mask
        # The blur and dilation keep the whole grid's size in tokens: the box crops the image, not the scale.
        refiner = self.refiner.for_grid(grid) if isinstance(self.refiner, GridScaledRefiner) else self.refiner
        refined = refiner(self.extractor(crop_output(output, grid, rows, cols), inside))  # (B, h, w)
        mask[:, rows, cols] = self.scheduler.combine(stage, refined, inside)
        return mask
