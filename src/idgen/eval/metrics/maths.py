"""The metric maths, on embeddings and pixels (plain torch; models live in `backends`).

The metrics themselves (which models they need, which rows they fill) are the registered objects in the
sibling modules; this one holds only arithmetic shared by them and by the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from idgen.eval.models import Face


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine of (B, D) embeddings (re-normalised, so unnormalised inputs are fine)."""
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)


def face_region(face: Face | None, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the face's mask if the model segments, else its box (rounded outwards); none -> empty."""
    w, h = size
    region = np.zeros((h, w), dtype=bool)
    if face is None:
        return region
    if face.mask is not None and face.mask.shape == (h, w):
        return face.mask.astype(bool)
    left, top, right, bottom = face.box
    region[
        max(0, math.floor(top)) : min(h, math.ceil(bottom)),
        max(0, math.floor(left)) : min(w, math.ceil(right)),
    ] = True
    return region


def background(faces: Sequence[Face | None], size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: pixels outside every given face region (typically the with-id and no-id images' faces)."""
    region = np.zeros((size[1], size[0]), dtype=bool)
    for face in faces:
        region |= face_region(face, size)
    return ~region


def pixel_contamination(generated: np.ndarray, base: np.ndarray, keep: np.ndarray) -> float:
    """Mean absolute change of the background from the no-id image, 0-255 units (mean over pixels and RGB).

    generated, base (H, W, 3) uint8; keep (H, W) bool background. NaN when there is no background."""
    if not keep.any():
        return math.nan
    diff = np.abs(generated.astype(np.float64) - base.astype(np.float64))[keep]
    return float(diff.mean())


def backdrop_shift(generated: Tensor, base: Tensor, keep: Tensor, backdrop: Tensor) -> float:
    """Mean move of background pixels from `base` to `generated` along the direction to `backdrop`.

    generated, base (3, H, W) in [0,1]; keep (H, W) bool background; backdrop (3,) in [0,1]: the reference
    photo's backdrop colour. In 0-255 units; positive means towards the reference's backdrop.
    """
    pixels = keep.flatten()
    if not bool(pixels.any()):
        return math.nan
    base_bg = base.flatten(1)[:, pixels]  # (3, n)
    direction = backdrop - base_bg.mean(dim=1)
    direction = direction / direction.norm().clamp_min(1e-6)
    moved = generated.flatten(1)[:, pixels] - base_bg
    return float((direction @ moved).mean() * 255)


def patch_background(
    keep: np.ndarray, view: tuple[float, float, float, float], grid: int, min_fraction: float = 1.0
) -> Tensor:
    """(grid*grid,) bool: patches of the model's preprocessed view lying (>= min_fraction) in the background.

    keep (H, W) bool in image pixels; view (left, top, right, bottom): what the model sees of the image."""
    left, top, right, bottom = view
    crop = torch.from_numpy(keep[round(top) : round(bottom), round(left) : round(right)])
    fraction = F.adaptive_avg_pool2d(crop[None, None].float(), grid)[0, 0]  # (grid, grid)
    return (fraction >= min_fraction - 1e-6).flatten()


def patch_contamination(generated: Tensor, base: Tensor, keep: Tensor) -> float:
    """Mean (1 - cos) between the with-id and no-id images' patch tokens over background patches.

    generated, base (N, C) patch tokens; keep (N,) bool. NaN when no patch is background."""
    if not bool(keep.any()):
        return math.nan
    return float((1 - cosine(generated[keep], base[keep])).mean())


def _clean(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with `dof` degrees of freedom (bisection on its exact CDF)."""
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")

    def cdf(t: float) -> float:
        # P(T <= t) = 1 - I_x(dof/2, 1/2) / 2 with x = dof / (dof + t^2), for t >= 0.
        x = dof / (dof + t * t)
        return 1.0 - 0.5 * _betainc(dof / 2, 0.5, x)

    low, high = 0.0, 1.0
    while cdf(high) < p:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by its continued fraction (Numerical Recipes' betacf)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
    f = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
            c = 1.0 + numerator / c
            c = c if abs(c) > 1e-300 else 1e-300
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f / a


def mean_ci(values: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, half-width of the 95% CI of the mean from Student's t, n), NaNs and Nones dropped.

    (nan, nan, 0) when empty; the half-width is nan for n = 1."""
    x = _clean(values)
    if len(x) == 0:
        return math.nan, math.nan, 0
    if len(x) == 1:
        return float(x[0]), math.nan, 1
    half = t_quantile(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half), len(x)


def mean_ci_normal(values: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, 1.96 * standard error, n): the normal approximation the demo world's gates have always used
    (kept so that their recorded numbers stay comparable; `mean_ci` is the correct small-sample interval)."""
    x = _clean(values)
    if len(x) == 0:
        return math.nan, math.nan, 0
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else math.nan
    return float(x.mean()), float(half), len(x)
