"""A tiny, deterministic stand-in for the PuLID identity encoder (tests, demos without weights).

It has the real encoder's interface and output shapes but no knowledge of faces: the features are
fixed random projections of the grey (optionally face-cropped) photo. Same photo -> bit-identical
features in every process; different photos -> different features.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from idgen.errors import NoFaceError
from idgen.identity.base import FaceBox, FaceDetector, IdentityFeatures, largest_face

__all__ = ["RandomIdentityEncoder", "crop_to_box"]


def crop_to_box(image: Image.Image, box: FaceBox) -> Image.Image:
    """Crop `image` to `box`, clamped to the image; at least one pixel wide and high."""
    w, h = image.size
    left = min(max(math.floor(box.left), 0), w - 1)
    top = min(max(math.floor(box.top), 0), h - 1)
    right = max(min(math.ceil(box.right), w), left + 1)
    bottom = max(min(math.ceil(box.bottom), h), top + 1)
    return image.crop((left, top, right, bottom))


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


class RandomIdentityEncoder:
    """Stand-in IdentityEncoder: grey photo -> low-rank random code -> PuLID-shaped features.

    id_embedding = [L2-normalised "arcface" part (arcface_dim) ; L2-normalised "clip" part (clip_dim)],
    vit_hidden = num_vit_features tensors of shape (1, num_vit_tokens, vit_dim).
    All projections go through a `rank`-dim code, so the weights stay small even at the real sizes.
    """

    def __init__(
        self,
        *,
        arcface_dim: int = 512,
        clip_dim: int = 768,
        vit_dim: int = 1024,
        num_vit_tokens: int = 577,
        num_vit_features: int = 5,
        image_size: int = 32,
        seed: int = 0,
        detector: FaceDetector | None = None,
        require_face: bool = True,
        rank: int = 16,
    ) -> None:
        _check_sizes(
            arcface_dim=arcface_dim,
            clip_dim=clip_dim,
            vit_dim=vit_dim,
            num_vit_tokens=num_vit_tokens,
            num_vit_features=num_vit_features,
            image_size=image_size,
            rank=rank,
        )
        self.arcface_dim = arcface_dim
        self.clip_dim = clip_dim
        self.id_dim = arcface_dim + clip_dim
        self.vit_dim = vit_dim
        self.num_vit_tokens = num_vit_tokens
        self.num_vit_features = num_vit_features
        self.image_size = image_size
        self.seed = seed
        self.detector = detector
        self.require_face = require_face
        self.rank = rank
        self._init_projections()

    def _init_projections(self) -> None:
        # A seeded CPU generator gives the same weights on every machine and in every process.
        g = torch.Generator().manual_seed(self.seed)
        rank, n_pix = self.rank, self.image_size * self.image_size
        self._to_code = torch.randn(n_pix, rank, generator=g) / math.sqrt(n_pix)
        # The bias keeps the code away from zero (a uniform grey photo would otherwise give a zero
        # vector, which cannot be L2-normalised).
        self._code_bias = torch.randn(rank, generator=g)
        self._to_arcface = torch.randn(rank, self.arcface_dim, generator=g)
        self._to_clip = torch.randn(rank, self.clip_dim, generator=g)
        # Hidden feature k = tokens_k @ diag(mix_k(code)) @ channels_k: rank-`rank` (L, D) matrices.
        k, tokens, dim = self.num_vit_features, self.num_vit_tokens, self.vit_dim
        self._mix = torch.randn(k, rank, rank, generator=g) / math.sqrt(rank)
        self._tokens = torch.randn(k, tokens, rank, generator=g)
        self._channels = torch.randn(k, rank, dim, generator=g) / math.sqrt(rank)

    def _face_region(self, image: Image.Image, what: str) -> tuple[Image.Image, FaceBox | None]:
        if self.detector is None:
            return image, None
        box = largest_face(self.detector(image))
        if box is None:
            if self.require_face:
                raise NoFaceError(f"no face found in {what}")
            return image, None
        return crop_to_box(image, box), box

    def pixels(self, image: Image.Image, *, what: str = "image") -> tuple[torch.Tensor, FaceBox | None]:
        """The encoder's input: grey face crop resized to image_size, flattened, in [-0.5, 0.5]."""
        region, box = self._face_region(image.convert("RGB"), what)
        # Grey like PuLID does before its CLIP encoder (ITU-R 601 luma, as in PuLID's to_gray).
        small = region.convert("L").resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        arr = np.asarray(small, dtype=np.float32) / 255.0 - 0.5
        return torch.from_numpy(arr.reshape(1, -1).copy()), box

    @torch.no_grad()
    def __call__(self, image: Image.Image, *, what: str = "image") -> IdentityFeatures:
        x, box = self.pixels(image, what=what)
        code = x @ self._to_code * 8.0 + self._code_bias  # (1, rank); scaled so the photo dominates
        arcface = torch.nn.functional.normalize(code @ self._to_arcface, dim=-1)
        clip = torch.nn.functional.normalize(code @ self._to_clip, dim=-1)
        hidden = []
        for k in range(self.num_vit_features):
            weights = code @ self._mix[k]  # (1, rank)
            hidden.append((self._tokens[k] * weights) @ self._channels[k])  # (1, L, D) via broadcasting
        return IdentityFeatures(
            id_embedding=torch.cat([arcface, clip], dim=-1),
            vit_hidden=[h.reshape(1, self.num_vit_tokens, self.vit_dim) for h in hidden],
            face_box=box,
        )

    def __repr__(self) -> str:
        return (
            f"RandomIdentityEncoder(id_dim={self.id_dim}, vit_dim={self.vit_dim}, "
            f"num_vit_tokens={self.num_vit_tokens}, seed={self.seed})"
        )
