"""PIDiff's identity preprocessing: find the face, align it FFHQ-style, optionally remove the background,
then invert it into W+ with e4e.

The alignment is the FFHQ dataset's: an oriented square built from the eye centres and the mouth
corners of the 68 dlib landmarks, resampled to the encoder's input size. The W+ adapter also removes
the background with a face parser before e4e; here that is a pluggable `BackgroundRemover`, since no
parser ships offline (`ParsingBackgroundRemover` wraps any label-map parser, e.g. facexlib's BiSeNet).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from idgen.errors import IdgenError, NoFaceError
from idgen.identity.base import FaceBox, IdentityFeatures


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """(68, 2) dlib landmarks (x, y) -> (4, 2) corners of the FFHQ crop: top-left, bottom-left,
    bottom-right, top-right (the order PIL's QUAD transform takes)."""
    if landmarks.shape != (68, 2):
        raise IdgenError(f"FFHQ alignment needs 68 (x, y) landmarks, got shape {landmarks.shape}")
    eye_left, eye_right = landmarks[36:42].mean(0), landmarks[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_left + eye_right) / 2, eye_right - eye_left
    mouth_avg = (landmarks[48] + landmarks[54]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    # x: the crop's horizontal axis, between the eye line and the perpendicular of the eye-mouth line
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x = x / np.hypot(*x) * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    centre = eye_avg + eye_to_mouth * 0.1
    return np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y])


def align_face(image: Image.Image, landmarks: np.ndarray, size: int = 256) -> Image.Image:
    """The FFHQ-aligned size x size face crop (outside the photo is black)."""
    quad = ffhq_quad(landmarks)
    data = tuple(float(v) for v in quad.flatten())
    return image.convert("RGB").transform((size, size), Image.Transform.QUAD, data, Image.Resampling.BICUBIC)


class BackgroundRemover(Protocol):
    def __call__(self, face: Image.Image) -> Image.Image: ...


class ParsingBackgroundRemover:
    """Paints every pixel a face parser labels as background (or any of `labels`) white.

    parse: (1, 3, H, W) in [0, 1] -> (1, 1, H, W) integer labels (e.g. facexlib's BiSeNet, argmax-ed)."""

    def __init__(self, parse: Callable[[Tensor], Tensor], labels: Sequence[int] = (0,)) -> None:
        self.parse, self.labels = parse, tuple(labels)

    @torch.no_grad()
    def __call__(self, face: Image.Image) -> Image.Image:
        x = torch.from_numpy(np.asarray(face.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
        labels = self.parse(x)
        background = torch.zeros_like(labels, dtype=torch.bool)
        for label in self.labels:
            background |= labels == label
        out = torch.where(background, torch.ones_like(x), x)[0]
        return Image.fromarray((out.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


class WPlusIdentityEncoder:
    """IdentityEncoder for PIDiff on real photos: dlib face + 68 landmarks -> FFHQ alignment -> optional
    background removal -> e4e W+ (18 x 512), carried flattened in IdentityFeatures.id_embedding."""

    def __init__(self, e4e: Any, detector: Any = None, background: BackgroundRemover | None = None) -> None:
        if detector is None:
            from idgen.identity.faces import DlibFaceDetector

            detector = DlibFaceDetector(landmarks=True, landmark_points=68)
        self.e4e, self.detector, self.background = e4e.eval(), detector, background
        c = e4e.config
        self.id_dim, self.vit_dim = c.num_styles * c.w_dim, 0

    def aligned_face(self, image: Image.Image, what: str = "image") -> tuple[Image.Image, FaceBox]:
        """The largest face, aligned (and with its background removed when a remover is set)."""
        found = self.detector.detect_with_landmarks(image)
        if not found:
            raise NoFaceError(f"no face found in {what}")
        box, landmarks = max(found, key=lambda item: item[0].area)
        face = align_face(image, landmarks, self.e4e.config.input_size)
        return (self.background(face) if self.background is not None else face), box

    @torch.no_grad()
    def encode_wplus(self, face: Image.Image) -> Tensor:
        """An aligned face -> W+ (1, num_styles, w_dim)."""
        x = torch.from_numpy(np.asarray(face.convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
        param = next(self.e4e.parameters())
        return self.e4e(x[None].to(param.device, param.dtype)).float().cpu()

    def __call__(self, image: Image.Image, *, what: str = "image") -> IdentityFeatures:
        face, box = self.aligned_face(image, what)
        w_plus = self.encode_wplus(face)
        return IdentityFeatures(id_embedding=w_plus.flatten(1), vit_hidden=[], face_box=box)
