"""The demo world's generator-side identity encoder: small stand-ins for antelopev2 and EVA02-CLIP.

PuLID encodes a reference photo with antelopev2 (face detector + ArcFace) and EVA02-CLIP (class token and
intermediate hidden states of the face crop). The demo world has the same interface with three tiny models,
each a plain nn.Module saved as `config.json` + `model.safetensors` in its own folder:

- `WorldFaceDetector`: a small CNN on the 64x64 image (+ 2 coordinate channels) -> one face box
  (normalised l, t, r, b) and a face-present logit. Implements `idgen.identity.base.FaceDetector` when
  called with a PIL image.
- `WorldFaceRecognizer`: a plain (non-residual) CNN on the square face crop (box + 10% margin, 32x32)
  -> 64-d L2-normalised embedding, trained with an ArcFace margin loss over the 1,000 training identities.
- `WorldFaceTower`: a tiny ViT (conv stem to 4x4 patches: 64 tokens + class token, width 64, 10 blocks) on
  the face crop *with its surroundings* (box expanded 1.8x) -> L2-normalised class embedding (64) and the
  hidden states entering blocks 2, 4, 6, 8, 10 (5 x (B, 65, 64)). Trained to classify the identity
  attributes; colour and background information is deliberately left in, as in EVA-CLIP.

`WorldIdentityEncoder` combines them into an `IdentityEncoder`: id_embedding = [recogniser 64 ; tower 64]
(id_dim 128), vit_hidden = the tower's 5 hidden states (vit_dim 64, 65 tokens). `encode_batch` is the
detection-free, vectorised path for adapter training (crops built with affine grids, no PIL).

`train_identity_models` trains all three with the resumable `idgen.training.Trainer` and writes the assets;
`idgen world train --stage identity` runs it.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar, overload

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from idgen.errors import CheckpointError, NoFaceError
from idgen.identity.base import FaceBox, IdentityFeatures
from idgen.io import atomic_output, atomic_write_bytes, atomic_write_text
from idgen.models.checkpoint import load_strict, read_config, read_state_dict
from idgen.training import Stopwatch, TrainConfig, Trainer

__all__ = [
    "DEFAULT_ASSETS",
    "DEFAULT_FACE_BOX",
    "IMAGE_SIZE",
    "RECOGNIZER_EXPAND",
    "TOWER_EXPAND",
    "WorldFaceDetector",
    "WorldFaceRecognizer",
    "WorldFaceTower",
    "WorldIdentityEncoder",
    "augment_photometric",
    "crop_faces",
    "face_free_image",
    "pil_to_tensor",
    "train_identity_models",
]

DEFAULT_ASSETS = Path(__file__).resolve().parent / "assets" / "identity"
IMAGE_SIZE = 64  # the demo world's image side
CROP_SIZE = 32  # recogniser and tower input side
RECOGNIZER_EXPAND = 1.2  # face box + 10% margin on each side
TOWER_EXPAND = 1.8  # the face with hair, clothes and background around it (as PuLID's CLIP crop)
# Where a close-up centred face sits (mean reference-photo box): used when no face is found and
# require_face is off.
DEFAULT_FACE_BOX = (18.0, 15.0, 46.0, 44.0)

M = TypeVar("M", bound="_Saveable")


# ---------------------------------------------------------------------------------------------------------
# Crops and augmentation (pure torch, batched).
# ---------------------------------------------------------------------------------------------------------
def pil_to_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image -> (1, 3, 64, 64) float in [0, 1]; other sizes are resized (bicubic) first."""
    image = image.convert("RGB")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()).unsqueeze(0)


def crop_faces(images: Tensor, boxes: Tensor, expand: float, size: int = CROP_SIZE) -> Tensor:
    """Square crops around each box, `expand` times its longer side, resized to size x size.

    images (B, 3, H, W), boxes (B, 4) pixel (l, t, r, b) with right/bottom as edges. Square because face
    shape (round vs long) is identity: stretching a tight box to a square would erase it. Outside the image
    is black. Sampled at 2x and average-pooled, so shrinking a ~55 px crop to 32 does not alias.
    """
    b, _, h, w = images.shape
    boxes = boxes.to(images)
    left, top, right, bottom = boxes.unbind(-1)
    side = torch.clamp(torch.maximum(right - left, bottom - top), min=1.0) * expand
    theta = images.new_zeros(b, 2, 3)
    theta[:, 0, 0] = side / w
    theta[:, 0, 2] = (left + right) / w - 1.0
    theta[:, 1, 1] = side / h
    theta[:, 1, 2] = (top + bottom) / h - 1.0
    grid = F.affine_grid(theta, [b, 3, 2 * size, 2 * size], align_corners=False)
    crops = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.avg_pool2d(crops, 2)


def _uniform(g: torch.Generator, *shape: int, low: float = -1.0, high: float = 1.0) -> Tensor:
    return low + (high - low) * torch.rand(*shape, generator=g)


def _gaussian_blur(x: Tensor, sigma: Tensor, radius: int = 3) -> Tensor:
    """Per-sample separable Gaussian blur; sigma (B,), 0 leaves the sample unchanged."""
    b, c, h, w = x.shape
    d = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(d[None] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, 2r+1)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def augment_photometric(x: Tensor, g: torch.Generator) -> Tensor:
    """Make renders look like the small diffusion model's outputs: colour jitter, blur, noise.

    Colour jitter is mild: skin, hair and eye colours are identity attributes.
    """
    b = x.shape[0]
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * (1 + 0.2 * _uniform(g, b, 1, 1, 1))  # saturation
    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + (x - mean) * (1 + 0.15 * _uniform(g, b, 1, 1, 1))  # contrast
    x = x * (1 + 0.12 * _uniform(g, b, 1, 1, 1)) * (1 + 0.05 * _uniform(g, b, 3, 1, 1))  # light, tint
    sigma = torch.rand(b, generator=g) * 1.4 * (torch.rand(b, generator=g) < 0.7)
    x = _gaussian_blur(x, sigma)
    x = x + torch.randn(x.shape, generator=g) * 0.04 * torch.rand(b, 1, 1, 1, generator=g)
    return x.clamp(0.0, 1.0)


def _augment_geometric(x: Tensor, boxes: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random flip, scale (+-12%) and shift (+-3 px) of whole images, with the boxes moved along."""
    b, _, h, w = x.shape
    scale = 1 + 0.12 * _uniform(g, b)
    shift = 3.0 * _uniform(g, b, 2)
    flip = torch.rand(b, generator=g) < 0.5
    sign = torch.where(flip, -1.0, 1.0)
    # Output pixel p comes from input (p - c - shift) / scale + c (flipped about the centre for x).
    theta = x.new_zeros(b, 2, 3)
    theta[:, 0, 0] = sign / scale
    theta[:, 0, 2] = -sign * (2 * shift[:, 0] / w) / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, 1, 2] = -(2 * shift[:, 1] / h) / scale
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    left, top, right, bottom = boxes.unbind(-1)
    left, right = torch.where(flip, w - right, left), torch.where(flip, w - left, right)
    cx, cy = w / 2, h / 2
    out = torch.stack(
        [
            (left - cx) * scale + cx + shift[:, 0],
            (top - cy) * scale + cy + shift[:, 1],
            (right - cx) * scale + cx + shift[:, 0],
            (bottom - cy) * scale + cy + shift[:, 1],
        ],
        dim=-1,
    )
    return x, out


def _jitter_boxes(boxes: Tensor, g: torch.Generator) -> Tensor:
    """Detector imprecision: move the box centre +-2 px and scale it +-8%."""
    b = boxes.shape[0]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + 2.0 * _uniform(g, b, 2)
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * (1 + 0.08 * _uniform(g, b, 1))
    return torch.cat([centre - half, centre + half], dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Models.
# ---------------------------------------------------------------------------------------------------------
class _Saveable(nn.Module):
    """config.json + model.safetensors per folder; strict loading with errors that name the key."""

    kind: ClassVar[str]

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save

        folder = Path(folder)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(folder / "model.safetensors", save(state))
        config = {"model_type": self.kind, **self.config()}
        atomic_write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls: type[M], folder: str | Path) -> M:
        folder = Path(folder)
        config = read_config(folder)
        kind = config.pop("model_type", None)
        if kind != cls.kind:
            raise CheckpointError(f"{folder / 'config.json'}: model_type is {kind!r}, expected {cls.kind!r}")
        try:
            model = cls(**config)
        except TypeError as e:
            raise CheckpointError(f"{folder / 'config.json'} does not fit {cls.__name__}: {e}") from None
        path = folder / "model.safetensors"
        load_strict(model, read_state_dict(path), str(path), cls.__name__)
        return model.eval()


class WorldFaceDetector(_Saveable):
    """Tiny CNN: 64x64 RGB in [0, 1] -> (box (B, 4) normalised l, t, r, b; face-present logit (B,)).
    Four stride-2 conv stages (64 -> 4 px) on RGB + (x, y) coordinates, then an MLP on the flattened map.

    Called with a PIL image it is a `FaceDetector`: a list with at most one FaceBox (the world has one
    person per image), empty when the logit says no face.
    """

    kind = "world-face-detector"

    def __init__(self, channels: tuple[int, ...] | list[int] = (16, 32, 32, 32), hidden: int = 64) -> None:
        super().__init__()
        self.channels, self.hidden = tuple(channels), hidden
        layers: list[nn.Module] = []
        c_in = 5  # RGB + (x, y) coordinate channels: position-aware features make box regression precise
        for c in self.channels:  # each stage halves the resolution: 64 -> 4 after four
            layers += [nn.Conv2d(c_in, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = IMAGE_SIZE >> len(self.channels)
        # Flatten, not pool: a box regressor needs to know *where* the features fired.
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, 5)

    def config(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "hidden": self.hidden}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r = torch.linspace(-1.0, 1.0, x.shape[-1], device=x.device, dtype=x.dtype)
        coords = torch.stack(torch.meshgrid(r, r, indexing="xy")).expand(x.shape[0], -1, -1, -1)
        out = self.out(self.head(self.features(torch.cat([x * 2 - 1, coords], dim=1))))
        return torch.sigmoid(out[:, :4]), out[:, 4]

    @torch.no_grad()
    def detect(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Batched detection on 64x64 images: (boxes (B, 4) in pixels, face probabilities (B,))."""
        boxes, logit = self(x.to(self.out.weight))
        return boxes * IMAGE_SIZE, torch.sigmoid(logit)

    @overload
    def __call__(self, x: Image.Image) -> list[FaceBox]: ...
    @overload
    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]: ...
    def __call__(self, x: Image.Image | Tensor) -> list[FaceBox] | tuple[Tensor, Tensor]:
        if not isinstance(x, Image.Image):
            return super().__call__(x)
        w, h = x.size
        boxes, probs = self.detect(pil_to_tensor(x))
        if probs[0] < 0.5:
            return []
        left, top, right, bottom = boxes[0].tolist()
        sx, sy = w / IMAGE_SIZE, h / IMAGE_SIZE  # back to the input photo's pixels
        return [FaceBox(left * sx, top * sy, right * sx, bottom * sy, float(probs[0]))]


class WorldFaceRecognizer(_Saveable):
    """Plain VGG-style CNN (no residuals): 32x32 face crop in [0, 1] -> 64-d L2-normalised embedding."""

    kind = "world-face-recognizer"

    def __init__(self, channels: tuple[int, ...] | list[int] = (16, 32, 64), dim: int = 64) -> None:
        super().__init__()
        self.channels, self.dim = tuple(channels), dim
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(self.channels):  # conv-conv-pool per stage; the last stage has one conv
            for _ in range(2 if i < len(self.channels) - 1 else 1):
                layers += [nn.Conv2d(c_in, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
                c_in = c
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = CROP_SIZE >> len(self.channels)
        # ArcFace's "BN-FC-BN" output: the embedding keeps the spatial layout (eye spacing is identity).
        self.embed = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * side * side, dim, bias=False), nn.BatchNorm1d(dim)
        )

    def config(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "dim": self.dim}

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.embed(self.features(x * 2 - 1)), dim=-1)


class _Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, mlp), nn.Linear(mlp, dim)
        nn.init.zeros_(self.proj.weight)  # residual branches start at zero (see WorldFaceTower)
        nn.init.zeros_(self.fc2.weight)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def _sincos_2d(grid: int, dim: int) -> Tensor:
    """(grid * grid, dim) fixed 2-D sine-cosine position code, row-major like the patch tokens."""
    yy, xx = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    omega = 1.0 / 100.0 ** (torch.arange(dim // 4) / max(1, dim // 4 - 1))
    x, y = xx.flatten()[:, None] * omega, yy.flatten()[:, None] * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)


class WorldFaceTower(_Saveable):
    """Tiny ViT: 32x32 face-and-surroundings crop in [0, 1] -> (class embedding (B, dim) L2-normalised,
    hidden states entering blocks `taps` (1-based) as len(taps) x (B, 1 + (32/patch)^2, dim))."""

    kind = "world-face-tower"

    def __init__(
        self,
        dim: int = 64,
        depth: int = 10,
        heads: int = 4,
        mlp: int = 128,
        patch: int = 4,
        taps: tuple[int, ...] | list[int] = (2, 4, 6, 8, 10),
    ) -> None:
        super().__init__()
        self.dim, self.depth, self.heads, self.mlp, self.patch = dim, depth, heads, mlp, patch
        self.taps = tuple(taps)
        if not all(1 <= t <= depth for t in self.taps):
            raise ValueError(f"taps must lie in [1, {depth}], got {self.taps}")
        self.num_tokens = 1 + (CROP_SIZE // patch) ** 2
        # Patch embedding as a small conv stem (log2(patch) stride-2 convs) instead of one linear patchify.
        steps = int(math.log2(patch))
        if patch < 2 or 2**steps != patch:
            raise ValueError(f"patch must be a power of two >= 2, got {patch}")
        stem: list[nn.Module] = []
        for k in range(steps - 1):
            stem += [nn.Conv2d(3 if k == 0 else dim // 2, dim // 2, 3, 2, 1), nn.GELU()]
        stem.append(nn.Conv2d(3 if steps == 1 else dim // 2, dim, 3, 2, 1))
        self.patch_embed = nn.Sequential(*stem)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, mlp) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        # A tiny ViT on a 1-core budget learns several times faster with 2-D sin-cos position embeddings
        # (learnable from there) and residual branches that start at zero (each block starts as identity,
        # see _Block).
        with torch.no_grad():
            self.pos_embed[0, 1:] = _sincos_2d(CROP_SIZE // patch, dim)

    def config(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "depth": self.depth,
            "heads": self.heads,
            "mlp": self.mlp,
            "patch": self.patch,
            "taps": list(self.taps),
        }

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = self.patch_embed((x - 0.5) / 0.25).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        hidden = []
        for i, block in enumerate(self.blocks, start=1):
            if i in self.taps:  # the tokens *entering* block i, as PuLID takes EVA-CLIP's
                hidden.append(x)
            x = block(x)
        return F.normalize(self.norm(x[:, 0]), dim=-1), hidden


# ---------------------------------------------------------------------------------------------------------
# The identity encoder.
# ---------------------------------------------------------------------------------------------------------
class WorldIdentityEncoder:
    """`IdentityEncoder` of the demo world: detector + recogniser + tower.

    id_embedding = [recogniser (64) ; tower class embedding (64)], both L2-normalised -> (B, 128);
    vit_hidden = 5 x (B, 65, 64); face_box in the input photo's pixels (`__call__` only).
    """

    def __init__(
        self,
        detector: WorldFaceDetector,
        recognizer: WorldFaceRecognizer,
        tower: WorldFaceTower,
        *,
        require_face: bool = True,
    ) -> None:
        self.detector, self.recognizer, self.tower = detector.eval(), recognizer.eval(), tower.eval()
        self.require_face = require_face
        self.id_dim = recognizer.dim + tower.dim
        self.vit_dim = tower.dim
        self.num_vit_tokens = tower.num_tokens
        self.num_vit_features = len(tower.taps)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path = DEFAULT_ASSETS, *, require_face: bool = True
    ) -> WorldIdentityEncoder:
        folder = Path(folder)
        return cls(
            WorldFaceDetector.from_pretrained(folder / "detector"),
            WorldFaceRecognizer.from_pretrained(folder / "recognizer"),
            WorldFaceTower.from_pretrained(folder / "tower"),
            require_face=require_face,
        )

    @property
    def device(self) -> torch.device:
        return self.tower.cls_token.device

    def to(self, device: torch.device | str) -> WorldIdentityEncoder:
        for m in (self.detector, self.recognizer, self.tower):
            m.to(device)
        return self

    @torch.no_grad()
    def encode_batch(self, images: Tensor, boxes: Tensor) -> IdentityFeatures:
        """Features of (B, 3, 64, 64) images in [0, 1] at given (B, 4) pixel boxes; no detection, no grad.

        Returns tensors on the encoder's device (face_box None: one box per sample does not fit the field).
        """
        images = images.to(self.device, torch.float32)
        boxes = boxes.to(self.device, torch.float32)
        arcface = self.recognizer(crop_faces(images, boxes, RECOGNIZER_EXPAND))
        clip, hidden = self.tower(crop_faces(images, boxes, TOWER_EXPAND))
        return IdentityFeatures(id_embedding=torch.cat([arcface, clip], dim=-1), vit_hidden=hidden)

    def __call__(self, image: Image.Image, *, what: str = "image") -> IdentityFeatures:
        w, h = image.size
        x = pil_to_tensor(image).to(self.device)
        boxes, probs = self.detector.detect(x)
        if probs[0] >= 0.5:
            box = boxes
        elif self.require_face:
            raise NoFaceError(f"no face found in {what}")
        else:
            warnings.warn(f"no face found in {what}; using a centred default face box", stacklevel=2)
            box = torch.tensor([DEFAULT_FACE_BOX], device=self.device)
        features = self.encode_batch(x, box)
        left, top, right, bottom = box[0].tolist()
        sx, sy = w / IMAGE_SIZE, h / IMAGE_SIZE
        features.face_box = FaceBox(left * sx, top * sy, right * sx, bottom * sy, float(probs[0]))
        return features

    def __repr__(self) -> str:
        return (
            f"WorldIdentityEncoder(id_dim={self.id_dim}, vit_dim={self.vit_dim}, "
            f"num_vit_tokens={self.num_vit_tokens}, require_face={self.require_face})"
        )


# ---------------------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IdentityTrainPlan:
    renders_per_identity: int  # scene renders per training identity (plus one reference photo each)
    num_identities: int  # training identities rendered (all 1,000 in the full run)
    negatives: int  # face-free images for the detector
    val_identities: int  # held-out identities used for validation
    detector: TrainConfig
    recognizer: TrainConfig
    tower: TrainConfig
    data_seed: int = 71_000  # renders (training, validation at data_seed + 1) and face-free images

    def reseeded(self, k: int) -> IdentityTrainPlan:
        """The same plan with its k-th other seeds (data + k, each model's training + 10 k); k = 0 is this
        one."""
        return replace(
            self,
            detector=self.detector.reseeded(k),
            recognizer=self.recognizer.reseeded(k),
            tower=self.tower.reseeded(k),
            data_seed=self.data_seed + k,
        )


# Seeds: distinct from each other and from the evaluator models (which use their own, and ResNets).
DETECTOR_SEED, RECOGNIZER_SEED, TOWER_SEED = 71_101, 71_202, 71_303
FULL_PLAN = IdentityTrainPlan(
    renders_per_identity=5,
    num_identities=1000,
    negatives=1500,
    val_identities=100,
    detector=TrainConfig(
        steps=1200, lr=3e-3, batch_size=64, warmup=30, weight_decay=1e-4, seed=DETECTOR_SEED
    ),
    recognizer=TrainConfig(
        steps=700, lr=3e-3, batch_size=64, warmup=30, weight_decay=5e-4, seed=RECOGNIZER_SEED
    ),
    tower=TrainConfig(steps=1400, lr=2e-3, batch_size=32, warmup=40, weight_decay=0.05, seed=TOWER_SEED),
)
QUICK_PLAN = IdentityTrainPlan(
    renders_per_identity=1,
    num_identities=16,
    negatives=16,
    val_identities=4,
    detector=replace(FULL_PLAN.detector, steps=4, batch_size=16, warmup=0, checkpoint_every=2),
    recognizer=replace(FULL_PLAN.recognizer, steps=4, batch_size=16, warmup=0, checkpoint_every=2),
    tower=replace(FULL_PLAN.tower, steps=4, batch_size=16, warmup=0, checkpoint_every=2),
)
# ArcFace head: a scale of 20 saturates softmax over 1,000 classes; a margin a little under the usual 0.5
# because 700 steps is a short run and large margins converge slowly.
ARCFACE_SCALE, ARCFACE_MARGIN = 20.0, 0.25


def _downsample(planar: np.ndarray) -> np.ndarray:
    """(3, 256, 256) supersampled canvas -> (3, 64, 64) float32 (box filter, as the renderer does)."""
    c, hi, _ = planar.shape
    ss = hi // IMAGE_SIZE
    return planar.reshape(c, IMAGE_SIZE, ss, IMAGE_SIZE, ss).mean(axis=(2, 4), dtype=np.float32)


def face_free_image(rng: np.random.Generator) -> np.ndarray:
    """A (3, 64, 64) uint8 image with no person: a scene under a random light, a studio backdrop or a
    random smooth colour field."""
    from idgen.world import backgrounds as bg
    from idgen.world.render import LIGHTING_NAMES, LIGHTINGS

    kind = rng.integers(3)
    img: np.ndarray
    if kind == 0:
        planar, _ = bg.scene_crop(int(rng.integers(len(bg.SCENES))), rng)
        tint = np.asarray(LIGHTINGS[LIGHTING_NAMES[int(rng.integers(len(LIGHTING_NAMES)))]], np.float32)
        img = _downsample(planar) * tint[:, None, None]
    elif kind == 1:
        planar, _ = bg.backdrop(int(rng.integers(len(bg.BACKDROP_NAMES))))
        img = _downsample(planar) * rng.uniform(0.8, 1.1)
    else:
        corners = rng.uniform(0, 255, size=(3, 2, 2)).astype(np.float32)
        t = np.linspace(0, 1, IMAGE_SIZE, dtype=np.float32)
        top = corners[:, 0, :1] * (1 - t) + corners[:, 0, 1:] * t
        bottom = corners[:, 1, :1] * (1 - t) + corners[:, 1, 1:] * t
        img = top[:, None, :] * (1 - t)[None, :, None] + bottom[:, None, :] * t[None, :, None]
        img = img + rng.normal(0, rng.uniform(0, 25), size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _render_set(identities: list[Any], per_identity: int, seed: int, train_scenes: bool) -> dict[str, Tensor]:
    """Scene renders (+ one reference photo) of each identity: uint8 images, pixel boxes, labels."""
    from idgen.world import ATTRIBUTES, Scene, random_train_scene, render, render_reference

    rng = np.random.default_rng([seed, len(identities), per_identity])
    images, boxes, ids, attrs = [], [], [], []
    for i, ident in enumerate(identities):
        shots = [
            render(
                ident,
                random_train_scene(rng) if train_scenes else Scene.random(rng),
                int(rng.integers(2**31)),
            )
            for _ in range(per_identity)
        ]
        shots.append(render_reference(ident, int(rng.integers(2**31))))
        for r in shots:
            images.append(r.image.transpose(2, 0, 1))
            boxes.append(r.face_box)
            ids.append(i)
            attrs.append(ident.as_tuple())
    assert len(attrs[0]) == len(ATTRIBUTES)
    return {
        "images": torch.from_numpy(np.stack(images)),
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "ids": torch.tensor(ids),
        "attrs": torch.tensor(attrs),
    }


def _dataset(work_dir: Path, plan: IdentityTrainPlan) -> dict[str, dict[str, Tensor]]:
    """Training and validation images, rendered once and cached in work_dir (rendering is ~10 ms/image)."""
    from idgen.world import test_identities, train_identities

    path = work_dir / "data.pt"
    seed = plan.data_seed
    key = json.dumps(
        [plan.renders_per_identity, plan.num_identities, plan.negatives, plan.val_identities, seed]
    )
    if path.exists():
        data = torch.load(path, weights_only=True)
        if data.get("key") == key:
            return data["sets"]
    rng = np.random.default_rng([seed, 1])
    sets = {
        "train": _render_set(
            train_identities()[: plan.num_identities], plan.renders_per_identity, seed, True
        ),
        # Held-out identities in *any* scene (held-out scene pairs included) and their reference photos.
        "val": _render_set(test_identities()[: plan.val_identities], 2, seed + 1, False),
        "negatives": {
            "images": torch.from_numpy(np.stack([face_free_image(rng) for _ in range(plan.negatives)]))
        },
        "val_negatives": {
            "images": torch.from_numpy(
                np.stack([face_free_image(rng) for _ in range(max(plan.val_identities, 8))])
            )
        },
    }
    with atomic_output(path) as tmp:
        torch.save({"key": key, "sets": sets}, tmp)
    return sets


def _as_float(images: Tensor) -> Tensor:
    return images.float() / 255.0


def _box_iou(a: Tensor, b: Tensor) -> Tensor:
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1) + (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area - inter).clamp(min=1e-6)


def _train_detector(
    data: dict[str, dict[str, Tensor]], config: TrainConfig, folder: Path, progress: bool
) -> WorldFaceDetector:
    pos, neg = data["train"], data["negatives"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = WorldFaceDetector()

    def step(_: int, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        n_pos = config.batch_size * 3 // 4
        i = torch.randint(len(pos["images"]), (n_pos,), generator=g)
        j = torch.randint(len(neg["images"]), (config.batch_size - n_pos,), generator=g)
        x = _as_float(torch.cat([pos["images"][i], neg["images"][j]]))
        boxes = torch.cat([pos["boxes"][i], torch.zeros(len(j), 4)])
        x, boxes = _augment_geometric(x, boxes, g)
        pred, logit = model(augment_photometric(x, g))
        present = (torch.arange(len(x)) < n_pos).float()
        cls_loss = F.binary_cross_entropy_with_logits(logit, present)
        box_loss = F.smooth_l1_loss(pred[:n_pos] * IMAGE_SIZE, boxes[:n_pos])  # in pixels
        return cls_loss + box_loss, {
            "cls": float(cls_loss.detach()),
            "box_px": float(box_loss.detach()),
        }

    Trainer("detector", {"detector": model}, model.parameters(), config, folder).fit(step, progress)
    return model.eval()


class _ArcFace(nn.Module):
    """Additive angular margin head: s * cos(theta + m) for the true class, s * cos(theta) otherwise."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)

    def forward(self, emb: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        cos = F.linear(emb, F.normalize(self.weight, dim=-1)).clamp(-1 + 1e-6, 1 - 1e-6)
        target = torch.cos(torch.acos(cos.gather(1, labels[:, None])) + ARCFACE_MARGIN)
        logits = cos.scatter(1, labels[:, None], target) * ARCFACE_SCALE
        return F.cross_entropy(logits, labels), (cos.argmax(1) == labels).float().mean()


def _train_recognizer(
    data: dict[str, dict[str, Tensor]], config: TrainConfig, folder: Path, progress: bool
) -> WorldFaceRecognizer:
    train = data["train"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = WorldFaceRecognizer()
        head = _ArcFace(model.dim, 1000)

    def step(_: int, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        i = torch.randint(len(train["images"]), (config.batch_size,), generator=g)
        x = augment_photometric(_as_float(train["images"][i]), g)
        crops = crop_faces(x, _jitter_boxes(train["boxes"][i], g), RECOGNIZER_EXPAND)
        loss, acc = head(model(crops), train["ids"][i])
        return loss, {"acc": float(acc)}

    params = [*model.parameters(), *head.parameters()]
    Trainer("recognizer", {"recognizer": model, "arcface": head}, params, config, folder).fit(step, progress)
    return model.eval()


def _attribute_sizes() -> list[int]:
    from idgen.world import ATTRIBUTES

    return [len(v) for v in ATTRIBUTES.values()]


class _AttributeHeads(nn.Linear):
    """Linear heads on the *normalised* class embedding (rescaled to LayerNorm size), so the shipped
    embedding itself carries the attributes."""

    def forward(self, emb: Tensor) -> Tensor:
        return super().forward(emb * math.sqrt(self.in_features))


def _train_tower(
    data: dict[str, dict[str, Tensor]], config: TrainConfig, folder: Path, progress: bool
) -> tuple[WorldFaceTower, _AttributeHeads]:
    train = data["train"]
    sizes = _attribute_sizes()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = WorldFaceTower()
        heads = _AttributeHeads(model.dim, sum(sizes))

    def step(_: int, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        i = torch.randint(len(train["images"]), (config.batch_size,), generator=g)
        x = augment_photometric(_as_float(train["images"][i]), g)
        emb, _ = model(crop_faces(x, _jitter_boxes(train["boxes"][i], g), TOWER_EXPAND))
        logits = heads(emb)
        losses, correct = [], []
        for k, part in enumerate(logits.split(sizes, dim=-1)):
            target = train["attrs"][i, k]
            losses.append(F.cross_entropy(part, target))
            correct.append((part.argmax(-1) == target).float().mean())
        return torch.stack(losses).mean(), {"acc": float(torch.stack(correct).mean())}

    params = [*model.parameters(), *heads.parameters()]
    Trainer("tower", {"tower": model, "heads": heads}, params, config, folder).fit(step, progress)
    return model.eval(), heads.eval()


@torch.no_grad()
def _embed_all(fn: Any, images: Tensor, boxes: Tensor, batch: int = 256) -> Tensor:
    return torch.cat([fn(images[k : k + batch], boxes[k : k + batch]) for k in range(0, len(images), batch)])


def _detector_scores(
    encoder: WorldIdentityEncoder, variants: dict[str, Tensor], boxes: Tensor, negatives: Tensor
) -> dict[str, float]:
    """Box IoU on the face images and face/no-face accuracy on them and the face-free `negatives`."""
    detector: dict[str, float] = {}
    for name, images in variants.items():
        found, probs = encoder.detector.detect(images)
        neg_probs = encoder.detector.detect(negatives)[1]
        iou = _box_iou(found, boxes)
        detector[f"mean_iou_{name}"] = float(iou.mean())
        detector[f"min_iou_{name}"] = float(iou.min())
        correct = int((probs >= 0.5).sum()) + int((neg_probs < 0.5).sum())
        detector[f"face_accuracy_{name}"] = correct / (len(probs) + len(neg_probs))
    return detector


def _verification_scores(
    fn: Any, variants: dict[str, Tensor], boxes: Tensor, ids: Tensor
) -> dict[str, float]:
    """Cosines of same- and different-identity pairs of `fn`'s embeddings, verification AUC and rank-1."""
    same = ids[:, None] == ids[None, :]
    off_diag = ~torch.eye(len(ids), dtype=torch.bool)
    out: dict[str, float] = {}
    for variant, images in variants.items():
        emb = _embed_all(fn, images, boxes)
        cos = emb @ emb.T
        pos, negv = cos[same & off_diag], cos[~same]
        out[f"same_cos_{variant}"] = float(pos.mean())
        out[f"diff_cos_{variant}"] = float(negv.mean())
        # Verification AUC: P(same-identity pair scores above a different-identity pair).
        out[f"auc_{variant}"] = float((pos[:, None] > negv[None, :]).float().mean())
        # Rank-1 identification: each image's nearest other image has its identity.
        nearest = cos.masked_fill(~off_diag, -2).argmax(1)
        out[f"rank1_{variant}"] = float((ids[nearest] == ids).float().mean())
    return out


def _attribute_scores(
    tower: Any, heads: nn.Module, variants: dict[str, Tensor], val: dict[str, Tensor]
) -> dict[str, Any]:
    """Held-out attribute accuracy of the tower's training heads (on the shipped class embedding)."""
    from idgen.world import ATTRIBUTES

    out: dict[str, Any] = {}
    for variant, images in variants.items():
        logits = heads(_embed_all(tower, images, val["boxes"]))
        accs = {
            name: float((part.argmax(-1) == val["attrs"][:, k]).float().mean())
            for k, (name, part) in enumerate(
                zip(ATTRIBUTES, logits.split(_attribute_sizes(), -1), strict=True)
            )
        }
        out[f"attribute_accuracy_{variant}"] = sum(accs.values()) / len(accs)
        if variant == "clean":
            out["attribute_accuracy_per_attribute"] = accs
    return out


@torch.no_grad()
def _validate(
    data: dict[str, dict[str, Tensor]], encoder: WorldIdentityEncoder, heads: nn.Module, blur_seed: int = 5
) -> dict[str, Any]:
    val = data["val"]
    x = _as_float(val["images"])
    # The same held-out images made to look generated (fixed augmentation draw).
    variants = {"clean": x, "augmented": augment_photometric(x, torch.Generator().manual_seed(blur_seed))}

    def recog(images: Tensor, boxes: Tensor) -> Tensor:
        return encoder.recognizer(crop_faces(images, boxes, RECOGNIZER_EXPAND))

    def tower(images: Tensor, boxes: Tensor) -> Tensor:
        return encoder.tower(crop_faces(images, boxes, TOWER_EXPAND))[0]

    negatives = _as_float(data["val_negatives"]["images"])
    results: dict[str, Any] = {"detector": _detector_scores(encoder, variants, val["boxes"], negatives)}
    for name, fn in (("recognizer", recog), ("tower", tower)):
        results[name] = _verification_scores(fn, variants, val["boxes"], val["ids"])
    results["tower"].update(_attribute_scores(tower, heads, variants, val))
    return results


def train_identity_models(
    work_dir: str | Path,
    assets_dir: str | Path = DEFAULT_ASSETS,
    quick: bool = False,
    progress: bool = True,
    plan: IdentityTrainPlan | None = None,
) -> dict[str, Any]:
    """Train detector, recogniser and tower (resumable: checkpoints under work_dir), write the three asset
    folders atomically under assets_dir, and return validation numbers on held-out identities. `plan`
    (default: `QUICK_PLAN` or `FULL_PLAN`) is, e.g., a plan's `reseeded(k)`."""
    work_dir, assets_dir = Path(work_dir), Path(assets_dir)
    plan = plan or (QUICK_PLAN if quick else FULL_PLAN)
    work_dir.mkdir(parents=True, exist_ok=True)
    timed = Stopwatch()
    data = timed("data", _dataset, work_dir, plan)
    detector = timed("detector", _train_detector, data, plan.detector, work_dir / "detector", progress)
    recognizer = timed(
        "recognizer", _train_recognizer, data, plan.recognizer, work_dir / "recognizer", progress
    )
    tower, heads = timed("tower", _train_tower, data, plan.tower, work_dir / "tower", progress)
    for name, model in (("detector", detector), ("recognizer", recognizer), ("tower", tower)):
        model.save_pretrained(assets_dir / name)
    encoder = WorldIdentityEncoder.from_pretrained(assets_dir)  # validate what was written
    results = timed("validation", _validate, data, encoder, heads)
    results["timings"] = timed.seconds
    results["plan"] = asdict(plan)
    atomic_write_text(work_dir / "validation.json", json.dumps(results, indent=2) + "\n")
    return results
