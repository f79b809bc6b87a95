"""PIDiff's identity preprocessing: find the face, align it FFHQ-style, optionally remove the background,
then invert it into W+ with e4e.

The alignment is e4e's (the FFHQ dataset's recipe at e4e's 256 px): an oriented square built from the
eye centres and the mouth corners of the 68 dlib landmarks; large faces shrunk with antialiasing, the
photo cropped, padded with a blurred reflection where the square runs off it, then resampled.
The W+ adapter also removes the background with a face parser before e4e; here that is a pluggable
`BackgroundRemover`, since no parser ships offline (`ParsingBackgroundRemover` wraps any label-map
parser, e.g. facexlib's BiSeNet).
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


def _ffhq_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, x, y) of the FFHQ crop: x and y are its half-width axes (e4e's arithmetic, in order)."""
    if landmarks.shape != (68, 2):
        raise IdgenError(f"FFHQ alignment needs 68 (x, y) landmarks, got shape {landmarks.shape}")
    eye_left, eye_right = np.mean(landmarks[36:42], axis=0), np.mean(landmarks[42:48], axis=0)
    eye_avg, eye_to_eye = (eye_left + eye_right) * 0.5, eye_right - eye_left
    mouth_avg = (landmarks[48] + landmarks[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    # x: the crop's horizontal axis, between the eye line and the perpendicular of the eye-mouth line
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x = x / np.hypot(*x)
    x = x * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    return eye_avg + eye_to_mouth * 0.1, x, y


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """(68, 2) dlib landmarks (x, y) -> (4, 2) corners of the FFHQ crop: top-left, bottom-left,
    bottom-right, top-right (the order PIL's QUAD transform takes)."""
    c, x, y = _ffhq_frame(landmarks)
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def gaussian_blur(image: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur of an (H, W, C) float32 image over H and W, as scipy.ndimage.gaussian_filter
    computes it with sigma (s, s, 0): a normalised kernel of radius int(truncate * s + 0.5), edges
    mirrored (scipy's "reflect": d c b a | a b c d), one axis after the other, float32 between passes."""
    radius = int(truncate * sigma + 0.5)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 / (sigma * sigma) * taps**2)
    weights = torch.from_numpy(kernel / kernel.sum()).view(1, 1, -1)
    out = image
    for axis in (0, 1):
        moved = np.moveaxis(out, axis, -1)  # (..., n): blur along the last axis
        padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(radius, radius)], mode="symmetric")
        rows = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float64)).reshape(
            -1, 1, padded.shape[-1]
        )
        blurred = torch.nn.functional.conv1d(rows, weights).reshape(moved.shape).numpy()
        out = np.moveaxis(blurred.astype(np.float32), -1, axis)
    return out


def _shrink(
    image: Image.Image, quad: np.ndarray, qsize: float, size: int
) -> tuple[Image.Image, np.ndarray, float]:
    """Large faces: shrink the photo by an integer factor first, with antialiasing (Lanczos)."""
    shrink = int(np.floor(qsize / size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(image.size[0]) / shrink)), int(np.rint(float(image.size[1]) / shrink)))
        image = image.resize(rsize, Image.Resampling.LANCZOS)
        quad, qsize = quad / shrink, qsize / shrink
    return image, quad, qsize


def _bounds(quad: np.ndarray) -> tuple[int, int, int, int]:
    """Integer bounding box (left, top, right, bottom) of a quad: floor of the minima, ceil of the maxima."""
    left, top = (int(np.floor(min(quad[:, i]))) for i in (0, 1))
    right, bottom = (int(np.ceil(max(quad[:, i]))) for i in (0, 1))
    return left, top, right, bottom


def _crop(image: Image.Image, quad: np.ndarray, border: int) -> tuple[Image.Image, np.ndarray]:
    """Crop to the quad's bounding box plus `border` (kept inside the photo)."""
    left, top, right, bottom = _bounds(quad)
    width, height = image.size
    crop = (
        max(left - border, 0),
        max(top - border, 0),
        min(right + border, width),
        min(bottom + border, height),
    )
    if crop[2] - crop[0] < image.size[0] or crop[3] - crop[1] < image.size[1]:
        image = image.crop(crop)
        quad = quad - crop[0:2]
    return image, quad


def _pad(image: Image.Image, quad: np.ndarray, qsize: float, border: int) -> tuple[Image.Image, np.ndarray]:
    """Where the quad runs off the photo: pad by reflection, fade the padding into a blurred copy and
    then into the median colour (FFHQ's / e4e's padding)."""
    left, top, right, bottom = _bounds(quad)
    width, height = image.size
    pad = (
        max(border - left, 0),
        max(border - top, 0),
        max(right - width + border, 0),
        max(bottom - height + border, 0),
    )
    if max(pad) <= border - 4:
        return image, quad
    p = np.maximum(pad, int(np.rint(qsize * 0.3)))
    img = np.pad(np.asarray(image, dtype=np.float32), ((p[1], p[3]), (p[0], p[2]), (0, 0)), "reflect")
    h, w, _ = img.shape
    y, x, _ = np.ogrid[:h, :w, :1]
    # 0 inside the photo, rising to 1 at the padded edge
    mask_x = 1.0 - np.minimum(np.float32(x) / p[0], np.float32(w - 1 - x) / p[2])
    mask = np.maximum(mask_x, 1.0 - np.minimum(np.float32(y) / p[1], np.float32(h - 1 - y) / p[3]))
    img += (gaussian_blur(img, qsize * 0.02) - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB"), quad + p[:2]


def align_face(image: Image.Image, landmarks: np.ndarray, size: int = 256) -> Image.Image:
    """The FFHQ-aligned size x size face crop, as e4e's align_face makes it (output = transform size).

    Shrink large faces (Lanczos), crop around the quad, pad with the blurred reflection where the quad
    runs off the photo, then one bilinear QUAD transform of the pixel-centred quad to size x size.
    """
    c, x, y = _ffhq_frame(landmarks)
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    qsize = float(np.hypot(*x) * 2)
    img, quad, qsize = _shrink(image.convert("RGB"), quad, qsize, size)
    border = max(int(np.rint(qsize * 0.1)), 3)
    img, quad = _crop(img, quad, border)
    img, quad = _pad(img, quad, qsize, border)
    data = tuple(float(v) for v in (quad + 0.5).flatten())
    return img.transform((size, size), Image.Transform.QUAD, data, Image.Resampling.BILINEAR)


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

            detector = DlibFaceDetector(upsample=1, landmarks=True, landmark_points=68)  # as e4e runs dlib
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
