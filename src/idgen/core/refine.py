"""Mask refinement: smooth the raw mask, add a dilated hard core, blend (SpatialID step 3-5)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from idgen.errors import IdgenError


def _check_odd(name: str, kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise IdgenError(f"{name} must be a positive odd integer, got {kernel_size}")


def gaussian_kernel1d(
    kernel_size: int,
    sigma: float,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(kernel_size,) Gaussian taps at integer offsets from the centre, summing to 1."""
    _check_odd("kernel_size", kernel_size)
    if not sigma > 0:
        raise IdgenError(f"sigma must be > 0, got {sigma}")
    offsets = torch.arange(kernel_size, device=device, dtype=dtype) - kernel_size // 2
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def _pad_mode(side: int, pad: int) -> str:
    # Reflect padding needs pad < side (it mirrors without repeating the edge); on grids that
    # thin (e.g. a 1xN grid) replicate is the closest edge rule that still works.
    return "reflect" if side > pad else "replicate"


@functools.lru_cache(maxsize=32)
def _cached_kernel(kernel_size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    # The blur runs at every injection point and step; its taps never change.
    return gaussian_kernel1d(kernel_size, sigma, device=device, dtype=dtype)


def gaussian_blur(masks: Tensor, kernel_size: int = 5, sigma: float = 1.5) -> Tensor:
    """(B, H, W) -> (B, H, W): separable Gaussian blur, rows then columns, reflect padding."""
    kernel = _cached_kernel(kernel_size, float(sigma), masks.device, masks.dtype)
    pad = kernel_size // 2
    x = masks.unsqueeze(1)  # (B, 1, H, W)
    rows, cols = x.shape[-2:]
    x = F.pad(x, (0, 0, pad, pad), mode=_pad_mode(rows, pad))  # (B, 1, H + 2p, W)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))  # (B, 1, H, W)
    x = F.pad(x, (pad, pad, 0, 0), mode=_pad_mode(cols, pad))  # (B, 1, H, W + 2p)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))  # (B, 1, H, W)
    return x.squeeze(1)


def threshold_mask(masks: Tensor, k: float = 0.5) -> Tensor:
    """(B, H, W) -> (B, H, W) float in {0, 1}: m > mean + k * std, per sample.

    std is the unbiased (N - 1) one, as torch.std in the authors' code; a 1-token grid uses 0.
    A perfectly flat sample gives all zeros: there its mean can round to either side of the
    value, so the comparison would be noise.
    """
    flat = masks.flatten(1)  # (B, N)
    n = flat.shape[1]
    std, mean = torch.std_mean(flat, dim=1, keepdim=True, correction=1 if n > 1 else 0)  # (B, 1) each
    hard = (flat > mean + k * std) & (std > 0)  # std == 0 exactly when the sample is flat
    return hard.to(masks.dtype).view_as(masks)


def dilate(binary: Tensor, kernel_size: int = 3) -> Tensor:
    """(B, H, W) -> (B, H, W): max over a kernel_size x kernel_size window, stride 1."""
    _check_odd("dilation kernel_size", kernel_size)
    pad = kernel_size // 2
    # max_pool2d pads with -inf, so the border never invents ones.
    return F.max_pool2d(binary.unsqueeze(1), kernel_size, stride=1, padding=pad).squeeze(1)


@dataclass(frozen=True)
class MaskRefiner:
    """M = clamp(w * blur(m) + (1 - w) * dilate(threshold(blur(m))), 0, 1), in float32."""

    kernel_size: int = 5
    sigma: float = 1.5
    k: float = 0.5
    dilation: int = 3
    soft_weight: float = 0.7

    def __post_init__(self) -> None:
        _check_odd("kernel_size", self.kernel_size)
        _check_odd("dilation", self.dilation)
        if not self.sigma > 0:
            raise IdgenError(f"sigma must be > 0, got {self.sigma}")
        if not 0.0 <= self.soft_weight <= 1.0:
            raise IdgenError(f"soft_weight must be in [0, 1], got {self.soft_weight}")

    def __call__(self, masks: Tensor) -> Tensor:
        soft = gaussian_blur(masks.float(), self.kernel_size, self.sigma)  # (B, H, W)
        hard = dilate(threshold_mask(soft, self.k), self.dilation)  # (B, H, W)
        return (self.soft_weight * soft + (1.0 - self.soft_weight) * hard).clamp(0.0, 1.0)


def nearest_odd(x: float) -> int:
    """The odd integer nearest to x (ties go up), at least 1: 5 -> 5, 4.96 -> 5, 2.5 -> 3, 0.6 -> 1."""
    return max(1, 2 * math.floor(x / 2) + 1)


@dataclass(frozen=True)
class GridScaledRefiner:
    """MaskRefiner whose blur and dilation scale with the token grid, relative to `reference_grid`.

    SpatialID's constants (kernel 5, sigma 1.5, 3x3 dilation) are in tokens of FLUX at 1024 px, a 64x64
    grid. On a grid with s times as many tokens per side (s = sqrt(H*W / reference tokens)) they cover the
    same fraction of the image as sigma * s, kernel and dilation nearest_odd(size * s). At the reference
    grid this is MaskRefiner itself; on an 8x8 grid both become 1 (no blur, no dilation), where the
    unscaled blur would spread a face of 2x2 tokens over most of the image.
    """

    base: MaskRefiner = MaskRefiner()
    reference_grid: tuple[int, int] = (64, 64)

    def __post_init__(self) -> None:
        if min(self.reference_grid) < 1:
            raise IdgenError(f"reference_grid must be positive, got {self.reference_grid}")

    def for_grid(self, grid: tuple[int, int]) -> MaskRefiner:
        scale = math.sqrt(grid[0] * grid[1] / (self.reference_grid[0] * self.reference_grid[1]))
        if scale == 1.0:
            return self.base
        return replace(
            self.base,
            kernel_size=nearest_odd(self.base.kernel_size * scale),
            sigma=self.base.sigma * scale,
            dilation=nearest_odd(self.base.dilation * scale),
        )

    def __call__(self, masks: Tensor) -> Tensor:
        # masks (B, H, W)
        return self.for_grid((int(masks.shape[-2]), int(masks.shape[-1])))(masks)
