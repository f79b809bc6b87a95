"""What an identity encoder gives PuLID: the inputs of IDFormer, computed from one photo."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from PIL import Image


@dataclass
class FaceBox:
    """A detected face in pixel coordinates of the input photo."""

    left: float
    top: float
    right: float
    bottom: float
    score: float = 1.0

    @property
    def area(self) -> float:
        return max(0.0, self.right - self.left) * max(0.0, self.bottom - self.top)


@dataclass
class IdentityFeatures:
    """IDFormer's two inputs for a batch of identity photos.

    id_embedding: (B, id_dim)            [ArcFace embedding ; L2-normalised CLIP class token]
                                         (512 + 768 = 1280 for antelopev2 + EVA02-CLIP-L).
    vit_hidden:   5 x (B, L, vit_dim)    intermediate CLIP vision features, shallow to deep.
    face_box:     the face the features came from, or None when no detector was used.
    """

    id_embedding: torch.Tensor
    vit_hidden: list[torch.Tensor]
    face_box: FaceBox | None = None

    def zeros_like(self) -> IdentityFeatures:
        """PuLID's "uncond" identity: the same network fed zeros (used by true CFG)."""
        return IdentityFeatures(
            id_embedding=torch.zeros_like(self.id_embedding),
            vit_hidden=[torch.zeros_like(h) for h in self.vit_hidden],
            face_box=None,
        )

    @property
    def batch_size(self) -> int:
        return int(self.id_embedding.shape[0])

    @staticmethod
    def cat(features: list[IdentityFeatures]) -> IdentityFeatures:
        """One batch from several photos' features, in order (face boxes dropped)."""
        return IdentityFeatures(
            id_embedding=torch.cat([f.id_embedding for f in features]),
            vit_hidden=[torch.cat(hs) for hs in zip(*(f.vit_hidden for f in features), strict=True)],
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> IdentityFeatures:
        return IdentityFeatures(
            id_embedding=self.id_embedding.to(device, dtype),
            vit_hidden=[h.to(device, dtype) for h in self.vit_hidden],
            face_box=self.face_box,
        )


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in an RGB photo; returns boxes, possibly none."""

    def __call__(self, image: Image.Image) -> list[FaceBox]: ...


@runtime_checkable
class IdentityEncoder(Protocol):
    """Turns one RGB photo into PuLID's inputs.

    Raises NoFaceError when it needs a face and finds none; `what` names the photo in that message.
    """

    id_dim: int
    vit_dim: int

    def __call__(self, image: Image.Image, *, what: str = "image") -> IdentityFeatures: ...


def largest_face(boxes: list[FaceBox]) -> FaceBox | None:
    """PuLID keeps the largest detected face (by box area)."""
    return max(boxes, key=lambda b: b.area) if boxes else None
