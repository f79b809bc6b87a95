"""Masks a user draws: a picture where white means "the identity goes here", and its bounding box.
Backbone-independent, so single- and multi-identity pipelines and the CLI share them."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from idgen.io import load_image


def user_mask(image: str | os.PathLike[str] | Image.Image) -> torch.Tensor:
    """A mask picture (white = identity here) -> (h, w) float tensor in [0, 1]."""
    picture = image if isinstance(image, Image.Image) else load_image(image, what="mask image")
    return torch.from_numpy(np.asarray(picture.convert("L"), dtype=np.float32) / 255.0)


def mask_box(mask: torch.Tensor, threshold: float = 0.5) -> tuple[float, float, float, float] | None:
    """Bounding box (left, top, right, bottom) in [0, 1] of mask > threshold; None if empty."""
    rows = torch.nonzero((mask > threshold).any(dim=1)).flatten()
    cols = torch.nonzero((mask > threshold).any(dim=0)).flatten()
    if rows.numel() == 0:
        return None
    h, w = mask.shape
    return (cols[0].item() / w, rows[0].item() / h, (cols[-1].item() + 1) / w, (rows[-1].item() + 1) / h)
