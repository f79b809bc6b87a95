"""The interfaces metric models implement. Real models (CLIP ViT-L/14, antelopev2, dlib, LAION aesthetic,
MUSIQ) and the demo world's evaluators both implement them, so the harness is the same for both.

Images are PIL RGB images of any size; each model does its own preprocessing, as its reference
implementation does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image
from torch import Tensor


@runtime_checkable
class ImageTextModel(Protocol):
    """A CLIP-like dual encoder: CLIP-T, CLIP-I, CLIP-I-ref and patch-space contamination."""

    name: str

    def image_embeds(self, images: Sequence[Image.Image]) -> Tensor: ...  # (B, D), unit norm

    def text_embeds(self, texts: Sequence[str]) -> Tensor: ...  # (B, D), unit norm

    # (B, g*g, C) patch tokens of the last hidden layer on a g x g grid over the (preprocessed) image,
    # and the mapping from image pixels to that grid is the model's own preprocessing (resize + crop).
    def patch_embeds(self, images: Sequence[Image.Image]) -> tuple[Tensor, int]: ...

    # Where patch (row, col) of the g x g grid looks in an image of size (w, h): (left, top, right, bottom)
    # of the preprocessed view in image pixels, so face regions can be mapped onto patches.
    def view_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]: ...


@dataclass
class Face:
    """One detected face: box in image pixels (left, top, right, bottom), detector score, unit embedding."""

    box: tuple[float, float, float, float]
    score: float
    embedding: Tensor  # (D,)
    mask: np.ndarray | None = None  # (H, W) bool face region when the model segments; else the box is used

    @property
    def area(self) -> float:
        left, top, right, bottom = self.box
        return max(0.0, right - left) * max(0.0, bottom - top)


@runtime_checkable
class FaceModel(Protocol):
    """Face detector + recogniser: FaceSim, AntiFaceSim and the face region for contamination."""

    name: str
    # False where cosines are not on ArcFace's scale (dlib's 128-d descriptor): reports label it.
    arcface_comparable: bool

    def faces(self, images: Sequence[Image.Image]) -> list[list[Face]]: ...  # every face, per image


@runtime_checkable
class ImageScorer(Protocol):
    """A no-reference image score on the reported scale (LAION aesthetic / 10, MUSIQ / 100)."""

    name: str

    def score(self, images: Sequence[Image.Image]) -> Tensor: ...  # (B,)


def largest_face(faces: Sequence[Face]) -> Face | None:
    """The harness scores the largest face (IBench takes the first detection; we say which we use)."""
    return max(faces, key=lambda f: f.area, default=None)
