"""Offline face detection with dlib (extra `idgen[faces]`): no weights to download.

The HOG frontal detector is built into dlib. The optional landmark predictors are the .dat files
shipped in the `face_recognition_models` wheel; we locate them without importing that package
(it imports pkg_resources, which new setuptools no longer provides).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from idgen.errors import IdgenError
from idgen.identity.base import FaceBox

__all__ = ["DlibFaceDetector", "face_recognition_model_path"]

_FACES_EXTRA = "pip install 'idgen[faces]'"

LANDMARK_MODELS = {
    5: "shape_predictor_5_face_landmarks.dat",
    68: "shape_predictor_68_face_landmarks.dat",
}


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError as e:
        raise IdgenError(f"dlib is not installed: {_FACES_EXTRA}") from e
    return dlib


def face_recognition_model_path(filename: str) -> Path:
    """Path of a model file inside the installed `face_recognition_models` package (not imported)."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise IdgenError(f"face_recognition_models is not installed: {_FACES_EXTRA}")
    for location in locations:
        candidate = Path(location) / "models" / filename
        if candidate.is_file():
            return candidate
    raise IdgenError(f"{filename} not found in face_recognition_models ({locations[0]}); reinstall it")


def _as_uint8_rgb(image: Image.Image) -> np.ndarray:
    # dlib wants a C-contiguous uint8 HxWx3 array.
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


class DlibFaceDetector:
    """dlib's HOG frontal-face detector as a FaceDetector.

    upsample: how many times dlib doubles the image before detecting (finds smaller faces, slower).
    threshold: dlib's `adjust_threshold`; detections scoring below it are dropped (0 = dlib's default).
    landmarks: also load a shape predictor (5 or 68 points, `landmark_points`) for `detect_with_landmarks`.
    Boxes are clamped to the image; `score` is dlib's detection score (an SVM margin, not a probability).
    """

    def __init__(
        self,
        upsample: int = 0,
        *,
        threshold: float = 0.0,
        landmarks: bool = False,
        landmark_points: Literal[5, 68] = 68,
    ) -> None:
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        if landmark_points not in LANDMARK_MODELS:
            raise ValueError(f"landmark_points must be 5 or 68, got {landmark_points}")
        dlib = _import_dlib()
        self.upsample = upsample
        self.threshold = threshold
        self.landmark_points = landmark_points
        self._detector = dlib.get_frontal_face_detector()
        self._predictor: Any = None
        if landmarks:
            path = face_recognition_model_path(LANDMARK_MODELS[landmark_points])
            self._predictor = dlib.shape_predictor(str(path))

    def _detect(self, rgb: np.ndarray) -> list[tuple[FaceBox, Any]]:
        height, width = rgb.shape[:2]
        rects, scores, _ = self._detector.run(rgb, self.upsample, self.threshold)
        found = []
        for rect, score in zip(rects, scores, strict=True):
            box = FaceBox(
                left=float(min(max(rect.left(), 0), width)),
                top=float(min(max(rect.top(), 0), height)),
                # dlib's right/bottom are inclusive pixel indices; +1 makes them exclusive edges.
                right=float(min(max(rect.right() + 1, 0), width)),
                bottom=float(min(max(rect.bottom() + 1, 0), height)),
                score=float(score),
            )
            if box.area > 0:
                found.append((box, rect))
        found.sort(key=lambda item: item[0].score, reverse=True)
        return found

    def __call__(self, image: Image.Image) -> list[FaceBox]:
        """Faces in `image`, best score first; empty when there are none."""
        return [box for box, _ in self._detect(_as_uint8_rgb(image))]

    def detect_with_landmarks(self, image: Image.Image) -> list[tuple[FaceBox, np.ndarray]]:
        """Faces with their landmarks as a (landmark_points, 2) float array of (x, y) pixel positions."""
        if self._predictor is None:
            raise IdgenError("this DlibFaceDetector was created without landmarks=True")
        rgb = _as_uint8_rgb(image)
        out = []
        for box, rect in self._detect(rgb):
            shape = self._predictor(rgb, rect)
            points = np.array(
                [[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=float
            )
            out.append((box, points))
        return out

    def __repr__(self) -> str:
        return f"DlibFaceDetector(upsample={self.upsample}, threshold={self.threshold})"
