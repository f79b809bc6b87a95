"""The metric maths, on embeddings and pixels (plain torch; models live in `backends`).

IBench's definitions (see docs/eval.md): CLIP-T = cos(text, image); CLIP-I = cos(image with id, image
without id) for the same prompt and seed; FaceSim = cos(face(reference), face(generated)); AntiFaceSim =
cos(face(without id), face(generated)). Ours on top: CLIP-I-ref = cos(image(reference), image(generated)),
and background contamination outside the face region, in pixels and in CLIP patch space.
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


def mean_ci(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, half-width of the normal 95% CI of the mean, n), NaNs dropped; (nan, nan, 0) when empty."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan, 0
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else math.nan
    return float(x.mean()), float(half), len(x)
