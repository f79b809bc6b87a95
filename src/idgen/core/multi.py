"""Several identities in one image: each identity's mask at one injection point, then a rule for who wins.

Each identity i has its own cross-attention output and its own mask policy (e.g. a SpatialMask whose early
prior is centred on that identity's box), and optionally a region (a box or a mask picture) it may not leave.
An assignment rule then turns the n masks into the ones that gate the n residuals:

    hidden <- hidden + sum_i w_i * M_i (.) CA_i(id_tokens_i, hidden)

ArgmaxAssignment keeps, at each token, only the identity with the largest mask (so a token takes at most
one identity's residual); SummedResiduals keeps every mask as it is (the naive baseline, which blends faces).
A layout (each identity's early prior) can decide who wins instead, while the winner keeps its own mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from idgen.core.gate import MaskPolicy
from idgen.core.masks import Box, CAOutput, Grid, box_token_span, resize_mask
from idgen.core.schedule import TemporalSpatialScheduler
from idgen.errors import IdgenError


def separated_boxes(count: int) -> list[Box]:
    """`count` equal vertical strips, left to right: where identities without a box are expected.

    Centring each identity's prior on its strip gives `count` separated peaks along the image's width."""
    if count < 1:
        raise IdgenError(f"need at least one identity, got {count}")
    return [(i / count, 0.0, (i + 1) / count, 1.0) for i in range(count)]


class Region(Protocol):
    """A map of one identity on the token grid, (H, W) float in [0, 1]: where it may inject (a region), or
    where it is expected (a layout)."""

    def __call__(self, grid: Grid, device: torch.device) -> Tensor: ...


@dataclass(frozen=True)
class BoxRegion:
    """1 on the tokens whose centre lies inside the box (edges included), 0 elsewhere."""

    box: Box

    def __call__(self, grid: Grid, device: torch.device) -> Tensor:
        rows, cols = box_token_span(self.box, grid)
        inside = torch.zeros(grid, device=device)  # (H, W)
        inside[rows, cols] = 1.0
        return inside


@dataclass(frozen=True, eq=False)
class MaskRegion:
    """A user mask (h, w) in [0, 1], resized to each token grid as FixedMaskExtractor does."""

    mask: Tensor

    def __call__(self, grid: Grid, device: torch.device) -> Tensor:
        return resize_mask(self.mask, grid)[0].to(device)  # (H, W)


@dataclass(frozen=True)
class PriorLayout:
    """Where an identity is expected: its scheduler's early prior (the Gaussian on its prior_box), (H, W)."""

    scheduler: TemporalSpatialScheduler

    def __call__(self, grid: Grid, device: torch.device) -> Tensor:
        return self.scheduler.prior(grid, device=device)  # (H, W), max 1


def bounded_attention(
    regions: Sequence[Region], grid: Grid, text_tokens: int, device: torch.device
) -> Tensor:
    """(1, 1, T + N, T + N) bool, True where a query token may attend to a key token: an image token in one
    person's region does not attend to the tokens of another person's region, so no face copies from the
    other (the self-attention half of Bounded Attention, Dahary et al. 2024). Text tokens, and image tokens
    in no region or in several, attend and are attended as before. FLUX's joint attention orders the T text
    tokens before the N = H * W image tokens."""
    owned = torch.stack([region(grid, device).flatten() > 0 for region in regions])  # (n, N)
    alone = owned & (owned.sum(dim=0, keepdim=True) == 1)  # tokens of exactly one region
    owner = torch.full((text_tokens + owned.shape[1],), -1, dtype=torch.long, device=device)  # (T + N,)
    owner[text_tokens:] = torch.where(alone.any(dim=0), alone.to(torch.long).argmax(dim=0), -1)
    query, key = owner[:, None], owner[None, :]
    crossing = (query >= 0) & (key >= 0) & (query != key)  # (T + N, T + N)
    return ~crossing[None, None]


class AssignmentRule(Protocol):
    """(n, B, N) masks of the n identities -> the (n, B, N) masks that gate their residuals."""

    def __call__(self, masks: Tensor) -> Tensor: ...


class ArgmaxAssignment:
    """Each token keeps the mask of the identity whose mask is largest there, the others get 0.

    Ties go to the identity listed first, so at most one identity is nonzero per token. With one identity
    the mask is returned as it is (bit for bit)."""

    def __call__(self, masks: Tensor) -> Tensor:
        if masks.shape[0] == 1:
            return masks
        winner = masks.argmax(dim=0, keepdim=True)  # (1, B, N): first maximum on ties
        ids = torch.arange(masks.shape[0], device=masks.device).view(-1, 1, 1)  # (n, 1, 1)
        return torch.where(ids == winner, masks, torch.zeros_like(masks))


class SummedResiduals:
    """Every identity's mask as it is: all residuals are added (PuLID run once per identity)."""

    def __call__(self, masks: Tensor) -> Tensor:
        return masks


def _policies_need_probs(policies: Sequence[MaskPolicy]) -> bool:
    return any(p.needs_attn_probs for p in policies)


@dataclass(frozen=True)
class CompetingMasks:
    """n identities' masks at one injection point: each policy on its own CA output, limited to its region,
    then the assignment rule.

    policies: one MaskPolicy per identity (None from a policy means uniform: a mask of ones).
    regions:  one Region or None per identity, or () for none at all.
    layout:   one Region per identity, or () for none: the rule then sees each mask times its identity's
              layout and the winners keep their own masks. Without boxes, attention finds the faces but
              not whose they are (each identity's attention can land on either face); the early priors
              set who stands where, and the layout keeps it so.
    """

    policies: tuple[MaskPolicy, ...]
    rule: AssignmentRule = field(default_factory=ArgmaxAssignment)
    regions: tuple[Region | None, ...] = ()
    layout: tuple[Region, ...] = ()
    # The layout's (n, N) maps depend only on (grid, device, dtype): built once, not per point and step.
    _layout_maps: dict[tuple[Grid, torch.device, torch.dtype], Tensor] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self.policies:
            raise IdgenError("CompetingMasks needs at least one identity's policy")
        if self.regions and len(self.regions) != len(self.policies):
            raise IdgenError(f"{len(self.regions)} regions for {len(self.policies)} identities")
        if self.layout and len(self.layout) != len(self.policies):
            raise IdgenError(f"{len(self.layout)} layout maps for {len(self.policies)} identities")

    @property
    def identities(self) -> int:
        return len(self.policies)

    @property
    def needs_attn_probs(self) -> bool:
        return _policies_need_probs(self.policies)

    def __call__(self, outputs: Sequence[CAOutput], t: float, grid: Grid) -> list[Tensor | None]:
        """outputs: n CA outputs, heads_out (B, N, D) each -> n masks (B, N, 1), or None where uniform."""
        if len(outputs) != self.identities:
            raise IdgenError(f"{len(outputs)} CA outputs for {self.identities} identities")
        masks = [self._limited(i, output, t, grid) for i, output in enumerate(outputs)]
        if all(m is None for m in masks) and isinstance(self.rule, SummedResiduals):
            return list(masks)  # uniform and summed: PuLID's arithmetic for each identity
        heads = outputs[0].heads_out  # (B, N, D)
        ones = torch.ones((*heads.shape[:2], 1), dtype=heads.dtype, device=heads.device)
        stacked = torch.stack([ones if m is None else m for m in masks]).squeeze(-1)  # (n, B, N)
        if self.layout:
            chosen = self.rule(stacked * self._layout_on(grid, heads.device, stacked.dtype))  # (n, B, N)
            assigned = torch.where(chosen > 0, stacked, torch.zeros_like(stacked))
        else:
            assigned = self.rule(stacked)
        return list(assigned.unsqueeze(-1).unbind(0))

    def _layout_on(self, grid: Grid, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The layout's maps on this grid, (n, 1, N)."""
        key = ((int(grid[0]), int(grid[1])), device, dtype)
        maps = self._layout_maps.get(key)
        if maps is None:
            maps = torch.stack([r(grid, device).flatten() for r in self.layout])[:, None, :].to(dtype)
            self._layout_maps[key] = maps
        return maps

    def _limited(self, index: int, output: CAOutput, t: float, grid: Grid) -> Tensor | None:
        """Identity `index`'s own mask (B, N, 1), times its region where it has one."""
        mask = self.policies[index](output, t, grid)
        region = self.regions[index] if self.regions else None
        if region is None:
            return mask
        heads = output.heads_out
        inside = region(grid, heads.device).reshape(1, -1, 1).to(heads.dtype)  # (1, N, 1)
        return inside.expand(heads.shape[0], -1, -1) if mask is None else mask * inside
