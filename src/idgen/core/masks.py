"""Spatial mask extractors: where in the image token grid the identity residual matters.

A mask lives as a (B, H, W) float tensor in [0, 1] over the image token grid (H, W)
(for FLUX: height/16 x width/16). Extractors turn one injection point's identity
cross-attention output into such a mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from idgen.errors import IdgenError

Grid = tuple[int, int]  # (rows, cols) = (H, W) of the image token grid
Box = tuple[float, float, float, float]  # (left, top, right, bottom) in [0, 1] image coordinates


@dataclass
class CAOutput:
    """What one identity cross-attention call exposes to a mask extractor.

    heads_out:  (B, N, heads*dim_head)  attention output BEFORE the output projection.
    attn_probs: (B, heads, N, K)        softmax over the K identity tokens, or None.
    """

    heads_out: Tensor
    attn_probs: Tensor | None = None


def box_token_span(box: Box, grid: Grid) -> tuple[slice, slice]:
    """The rows and columns of the tokens whose centre lies inside `box` (edges included).

    Token j of an n-token axis covers [j/n, (j+1)/n] and its centre is (j + 0.5)/n; a box that holds
    no centre on an axis gives an empty slice there."""

    def span(n: int, low: float, high: float) -> slice:
        centres = (torch.arange(n, dtype=torch.float32) + 0.5) / n  # (n,)
        inside = ((centres >= low) & (centres <= high)).nonzero().flatten()
        return slice(0, 0) if inside.numel() == 0 else slice(int(inside[0]), int(inside[-1]) + 1)

    left, top, right, bottom = box
    return span(grid[0], top, bottom), span(grid[1], left, right)


def crop_output(output: CAOutput, grid: Grid, rows: slice, cols: slice) -> CAOutput:
    """The CA output of the tokens in rows x cols of the (H, W) grid, as if they were the whole image."""
    heads = output.heads_out  # (B, N, D)
    batch, dim = heads.shape[0], heads.shape[-1]
    cropped = heads.reshape(batch, *grid, dim)[:, rows, cols].reshape(batch, -1, dim)  # (B, h * w, D)
    probs = output.attn_probs  # (B, heads, N, K) | None
    if probs is not None:
        count, keys = probs.shape[1], probs.shape[-1]
        probs = probs.reshape(batch, count, *grid, keys)[:, :, rows, cols].reshape(batch, count, -1, keys)
    return CAOutput(cropped, probs)


class MaskExtractor(Protocol):
    """Turns a CA output into a (B, H, W) mask in [0, 1]."""

    @property
    def needs_attn_probs(self) -> bool: ...

    def __call__(self, output: CAOutput, grid: Grid) -> Tensor: ...


def _check_norm_args(eps: float, min_spread: float) -> None:
    if not eps > 0:
        raise IdgenError(f"eps must be > 0, got {eps}")
    if not min_spread >= 0:
        raise IdgenError(f"min_spread must be >= 0, got {min_spread}")


def ca_output_norm(heads_out: Tensor) -> Tensor:
    """(B, N, D) -> (B, N) float32: per-token L2 norm, computed in float32 (bf16 sums of squares lose too
    much), or in float64 for a float64 input."""
    wide = torch.promote_types(heads_out.dtype, torch.float32)
    return torch.linalg.vector_norm(heads_out, ord=2, dim=-1, dtype=wide).float()


def _flat(spread: Tensor, vmax: Tensor, eps: float, min_spread: float) -> Tensor:
    # (B, 1) bool: the sample's spread is too small relative to its magnitude to mean anything.
    return spread < min_spread * vmax.abs().clamp_min(eps)


def minmax_normalize(values: Tensor, eps: float = 1e-6, min_spread: float = 0.0) -> Tensor:
    """(..., N) -> (..., N): per-sample (v - min) / max(max - min, eps).

    Constant input gives zeros. With min_spread > 0, a sample whose spread is below
    min_spread * max(|max|, eps) is treated as flat and also gives zeros, so that no token is
    forced to 1 when nothing stands out (e.g. no face in the image).
    """
    _check_norm_args(eps, min_spread)
    vmin = values.amin(dim=-1, keepdim=True)  # (..., 1)
    vmax = values.amax(dim=-1, keepdim=True)  # (..., 1)
    spread = vmax - vmin
    out = (values - vmin) / spread.clamp_min(eps)
    if min_spread > 0:
        out = out.masked_fill(_flat(spread, vmax, eps, min_spread), 0.0)
    return out


def grid_axis(n: int, device: torch.device | None = None) -> Tensor:
    """(n,) token coordinates on linspace(-1, 1), the axes of SpatialID's prior; a 1-token axis is [0]."""
    # linspace(-1, 1, 1) is [-1], which would put a 1-wide axis at the border.
    if n == 1:
        return torch.zeros(1, device=device)
    return torch.linspace(-1.0, 1.0, n, device=device)


def token_centroid(weights: Tensor) -> Tensor:
    """(B, H, W) non-negative -> (B, 2): weighted mean (x, y) on grid_axis coordinates; NaN if all zero."""
    w = weights.float()
    total = w.sum(dim=(1, 2))  # (B,)
    x = (w.sum(dim=1) * grid_axis(w.shape[2], w.device)).sum(dim=1)  # (B,)
    y = (w.sum(dim=2) * grid_axis(w.shape[1], w.device)).sum(dim=1)  # (B,)
    centroid = torch.stack([x, y], dim=1) / total[:, None]
    return centroid.masked_fill((total == 0)[:, None], float("nan"))


def tokens_to_grid(values: Tensor, grid: Grid) -> Tensor:
    """(B, N) -> (B, H, W), row-major (FLUX packs image tokens row by row)."""
    rows, cols = grid
    if values.shape[-1] != rows * cols:
        raise IdgenError(f"{values.shape[-1]} tokens do not fill a {rows}x{cols} grid ({rows * cols} tokens)")
    return values.reshape(values.shape[0], rows, cols)


def attention_entropy(probs: Tensor) -> Tensor:
    """(B, heads, N, K) softmax over K -> (B, N): entropy (nats) per token, averaged over heads.

    0 * log 0 is taken as 0 (xlogy), where the authors' code adds 1e-8 inside the log.
    """
    p = probs.float()
    return -torch.special.xlogy(p, p).sum(dim=-1).mean(dim=1)


@dataclass(frozen=True)
class CANormExtractor:
    """SpatialID's extractor: min-max normalised L2 norm of each token's CA output."""

    eps: float = 1e-6
    min_spread: float = 0.0
    needs_attn_probs = False

    def __post_init__(self) -> None:
        _check_norm_args(self.eps, self.min_spread)

    def __call__(self, output: CAOutput, grid: Grid) -> Tensor:
        norms = ca_output_norm(output.heads_out)  # (B, N)
        return tokens_to_grid(minmax_normalize(norms, self.eps, self.min_spread), grid)


@dataclass(frozen=True)
class AttentionEntropyExtractor:
    """Alternative extractor: tokens whose attention is focused on the identity tokens.

    1 - minmax(entropy): low entropy = high mask. A constant entropy map gives ones (as in the
    authors' code) unless min_spread > 0 marks it flat, which gives zeros.
    """

    eps: float = 1e-6
    min_spread: float = 0.0
    needs_attn_probs = True

    def __post_init__(self) -> None:
        _check_norm_args(self.eps, self.min_spread)

    def __call__(self, output: CAOutput, grid: Grid) -> Tensor:
        if output.attn_probs is None:
            raise IdgenError("AttentionEntropyExtractor needs attention probabilities, got attn_probs=None")
        entropy = attention_entropy(output.attn_probs)  # (B, N)
        mask = 1.0 - minmax_normalize(entropy, self.eps)
        if self.min_spread > 0:
            vmax = entropy.amax(dim=-1, keepdim=True)
            spread = vmax - entropy.amin(dim=-1, keepdim=True)
            mask = mask.masked_fill(_flat(spread, vmax, self.eps, self.min_spread), 0.0)
        return tokens_to_grid(mask, grid)


def resize_mask(mask: Tensor, grid: Grid) -> Tensor:
    """(h, w) | (B, h, w) -> (B, H, W) float32 in [0, 1].

    Each axis is treated on its own: an axis that shrinks is area-averaged first, then an
    axis that grows is bilinearly interpolated (align_corners=False). So pure shrinking is
    mode="area", pure enlarging is "bilinear", and a mixed case (one axis shrinks, the other
    grows) never interpolates before averaging. Same size is the identity.
    """
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3:
        raise IdgenError(f"a mask must be (h, w) or (B, h, w), got shape {tuple(mask.shape)}")
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise IdgenError(f"grid must be positive, got {grid}")
    x = mask.float().unsqueeze(1)  # (B, 1, h, w)
    h, w = x.shape[-2:]
    shrunk = (min(h, rows), min(w, cols))
    if shrunk != (h, w):
        x = F.interpolate(x, size=shrunk, mode="area")
    if shrunk != (rows, cols):
        x = F.interpolate(x, size=(rows, cols), mode="bilinear", align_corners=False)
    return x.squeeze(1).clamp(0.0, 1.0)


class FixedMaskExtractor:
    """A user-supplied mask, (h, w) | (1, h, w) | (B, h, w) in [0, 1], resized to each token grid."""

    needs_attn_probs = False

    def __init__(self, mask: Tensor) -> None:
        if mask.dim() not in (2, 3) or mask.shape[-1] < 1 or mask.shape[-2] < 1:
            raise IdgenError(f"a fixed mask must be (h, w) or (B, h, w), got shape {tuple(mask.shape)}")
        if mask.numel() and not bool(((mask >= 0) & (mask <= 1)).all()):
            raise IdgenError("a fixed mask must have values in [0, 1]")
        self.mask = mask.detach().float()
        # Resizing once per (grid, device) instead of at every injection point and step.
        self._cache: dict[tuple[Grid, torch.device], Tensor] = {}

    def __call__(self, output: CAOutput, grid: Grid) -> Tensor:
        batch = output.heads_out.shape[0]
        device = output.heads_out.device
        key = ((int(grid[0]), int(grid[1])), device)
        resized = self._cache.get(key)
        if resized is None:
            resized = resize_mask(self.mask, grid).to(device)  # (b, H, W)
            self._cache[key] = resized
        if resized.shape[0] == batch:
            return resized
        if resized.shape[0] == 1:
            return resized.expand(batch, -1, -1)
        raise IdgenError(f"fixed mask has batch {resized.shape[0]}, the generation has batch {batch}")
