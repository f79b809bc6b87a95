"""Pictures of the identity mask over the sampling steps, laid over the generated image."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from idgen.io import atomic_output

HEAT = np.array([255, 40, 0], dtype=np.float32)  # mask colour
# One colour per identity (the first is HEAT, so one identity looks as it always did).
IDENTITY_COLOURS = np.array(
    [[255, 40, 0], [0, 110, 255], [0, 190, 60], [240, 200, 0], [200, 0, 200], [0, 200, 200], [255, 140, 0],
     [120, 60, 220]],
    dtype=np.float32,
)  # fmt: skip


def overlay_mask(image: Image.Image, mask: Tensor, alpha: float = 0.6) -> Image.Image:
    """Blend a (H, W) mask in [0,1] over the image; the token grid is upsampled bilinearly."""
    grid = mask.float()[None, None]
    up = torch.nn.functional.interpolate(grid, size=(image.height, image.width), mode="bilinear")
    weight = (alpha * up[0, 0].clamp(0, 1)).numpy()[..., None]
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray((rgb * (1 - weight) + HEAT * weight).round().astype(np.uint8))


def overlay_identity_masks(image: Image.Image, masks: Tensor, alpha: float = 0.6) -> Image.Image:
    """Blend (n, H, W) masks in [0, 1] over the image, identity i in IDENTITY_COLOURS[i]; where their sum
    passes 1 (masks averaged over injection points can), they are scaled to sum to 1."""
    if masks.shape[0] > len(IDENTITY_COLOURS):
        raise ValueError(f"at most {len(IDENTITY_COLOURS)} identities can be coloured, got {masks.shape[0]}")
    up = torch.nn.functional.interpolate(
        masks.float()[None], size=(image.height, image.width), mode="bilinear"
    )
    weights = up[0].clamp(0, 1)  # (n, h, w)
    weights = weights / weights.sum(0, keepdim=True).clamp_min(1.0)
    colour = torch.einsum("nhw,nc->hwc", weights, torch.from_numpy(IDENTITY_COLOURS[: masks.shape[0]]))
    total = (alpha * weights.sum(0)).numpy()[..., None]  # (h, w, 1)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray((rgb * (1 - total) + alpha * colour.numpy()).round().clip(0, 255).astype(np.uint8))


def labelled(image: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (image.width, image.height + 12), "white")
    out.paste(image, (0, 12))
    ImageDraw.Draw(out).text((2, 0), text, fill="black")
    return out


def mask_frames(
    image: Image.Image, per_step: list[tuple[int, float, Tensor]], min_size: int = 96
) -> list[Image.Image]:
    """One labelled overlay per step; small images are enlarged so the label fits."""
    image = _enlarged(image, min_size)
    return [labelled(overlay_mask(image, mask), f"step {step} t={t:.2f}") for step, t, mask in per_step]


def _enlarged(image: Image.Image, min_size: int) -> Image.Image:
    if image.width >= min_size:
        return image
    scale = -(-min_size // image.width)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def identity_mask_frames(
    image: Image.Image, per_step: list[tuple[int, float, Tensor]], min_size: int = 96
) -> list[Image.Image]:
    """One labelled colour-coded overlay per step of (step, t, (n, H, W) masks): identity i in colour i."""
    image = _enlarged(image, min_size)
    return [labelled(overlay_identity_masks(image, m), f"step {step} t={t:.2f}") for step, t, m in per_step]


def identity_mask_strip(image: Image.Image, per_step: list[tuple[int, float, Tensor]]) -> Image.Image:
    """The steps' colour-coded overlays in a row (identity i in IDENTITY_COLOURS[i])."""
    return _row(identity_mask_frames(image, per_step))


def save_identity_mask_gif(
    image: Image.Image, per_step: list[tuple[int, float, Tensor]], path: str | os.PathLike[str], ms: int = 300
) -> None:
    _save_gif(identity_mask_frames(image, per_step), path, ms)


def mask_strip(image: Image.Image, per_step: list[tuple[int, float, Tensor]]) -> Image.Image:
    return _row(mask_frames(image, per_step))


def _row(frames: list[Image.Image]) -> Image.Image:
    if not frames:
        raise ValueError("no masks were recorded")
    strip = Image.new("RGB", (sum(f.width for f in frames), frames[0].height), "white")
    for i, frame in enumerate(frames):
        strip.paste(frame, (i * frames[0].width, 0))
    return strip


def save_mask_gif(
    image: Image.Image, per_step: list[tuple[int, float, Tensor]], path: str | os.PathLike[str], ms: int = 300
) -> None:
    _save_gif(mask_frames(image, per_step), path, ms)


def _save_gif(frames: list[Image.Image], path: str | os.PathLike[str], ms: int) -> None:
    if not frames:
        raise ValueError("no masks were recorded")
    with atomic_output(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=ms, loop=0)


def side_by_side(panels: dict[str, Image.Image], size: tuple[int, int], min_size: int = 128) -> Image.Image:
    """Labelled panels in a row, each resized to `size` (enlarged with nearest-neighbour when tiny)."""
    width, height = size
    if width < min_size:
        scale = -(-min_size // width)
        width, height = width * scale, height * scale
    tiles = [
        labelled(im.convert("RGB").resize((width, height), Image.Resampling.NEAREST), name)
        for name, im in panels.items()
    ]
    row = Image.new("RGB", (sum(t.width for t in tiles), tiles[0].height), "white")
    for i, tile in enumerate(tiles):
        row.paste(tile, (i * tiles[0].width, 0))
    return row
