"""Face models for FaceSim: insightface antelopev2 (IBench's), and dlib's offline 128-d descriptor.

Both return every face, best detection first (IBench scores faces[0]; the harness picks the largest),
with boxes clamped to the image and L2-normalised embeddings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from idgen.errors import IdgenError
from idgen.eval.models import Face

__all__ = ["DLIB_MAX_SIDE", "DlibFaceModel", "InsightFaceModel"]

DLIB_MAX_SIDE = 1024  # larger images are downscaled before dlib (HOG cost grows with area); boxes map back
DLIB_UPSAMPLE = 1  # face_recognition's default: doubles the image once, finds faces down to ~40 px


def _clamped(box: Sequence[float], size: tuple[int, int]) -> tuple[float, float, float, float]:
    w, h = size
    left, top, right, bottom = (float(v) for v in box)
    return max(0.0, left), max(0.0, top), min(float(w), right), min(float(h), bottom)


def _unit(vector: Any) -> torch.Tensor:
    return F.normalize(torch.from_numpy(np.asarray(vector, dtype=np.float32).reshape(-1)), dim=0)  # (D,)


def _onnx_providers(device: str) -> list[Any]:
    """onnxruntime providers for a torch-style device string ("cpu", "cuda", "cuda:1")."""
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match is None:
        return ["CPUExecutionProvider"]
    return [("CUDAExecutionProvider", {"device_id": int(match.group(1) or 0)}), "CPUExecutionProvider"]


def insightface_model_name(root: Path, name: str) -> str:
    """The model folder under root/models holding the .onnx files, as a name FaceAnalysis accepts.

    antelopev2.zip unpacks to models/antelopev2/antelopev2/*.onnx, which FaceAnalysis cannot use as is
    (it asserts on a missing detector); we accept that layout too. Without the files we raise instead of
    letting insightface download them at run time.
    """
    for candidate in (name, f"{name}/{name}"):
        if any((root / "models" / candidate).glob("*.onnx")):
            return candidate
    raise IdgenError(
        f"metric facesim: no {name} .onnx files in {root / 'models' / name}; "
        f"unzip {name}.zip there (or pass its root)"
    )


class InsightFaceModel:
    """antelopev2 (SCRFD-10G detector at det_size 640 + glintr100 ArcFace) through insightface's
    FaceAnalysis, as IBench runs it. root: the folder holding models/<name> (insightface's ~/.insightface)."""

    arcface_comparable = True

    def __init__(
        self,
        name: str = "antelopev2",
        root: str | None = None,
        device: str = "cpu",
        providers: list[Any] | None = None,
        det_size: int = 640,
    ) -> None:
        try:
            from insightface.app import FaceAnalysis
        except ImportError as e:
            raise IdgenError(
                f"metric facesim needs insightface and onnxruntime: pip install 'idgen[facesim]' ({e})"
            ) from None
        root_path = Path(root or "~/.insightface").expanduser()
        model_name = insightface_model_name(root_path, name)
        self.name = name
        providers = providers or _onnx_providers(device)
        # Only detection + recognition: antelopev2's landmark/gender models do not change the embedding.
        self.app = FaceAnalysis(
            name=model_name,
            root=str(root_path),
            providers=providers,
            allowed_modules=["detection", "recognition"],
        )
        on_gpu = any("CUDA" in (p[0] if isinstance(p, tuple) else p) for p in providers)
        self.app.prepare(ctx_id=0 if on_gpu else -1, det_size=(det_size, det_size))  # -1: CPU sessions

    def faces(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        out = []
        for image in images:
            # insightface expects OpenCV's BGR uint8 (IBench reads with cv2.imread).
            bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8)[:, :, ::-1])
            found = self.app.get(bgr)  # SCRFD order: best score first
            out.append(
                [Face(_clamped(f.bbox, image.size), float(f.det_score), _unit(f.embedding)) for f in found]
            )
        return out


class DlibFaceModel:
    """dlib's HOG detector + 68-point shape predictor + 128-d ResNet descriptor, all shipped in wheels.

    Its cosines are not on ArcFace's scale: between different people they are still ~0.85-0.96 (dlib
    separates identities by Euclidean distance 0.6), so reports label the metric and never compare it.
    Images larger than DLIB_MAX_SIDE are downscaled first; boxes are mapped back to the original pixels.
    """

    name = "dlib-128d (not comparable to ArcFace)"
    arcface_comparable = False

    def __init__(self, upsample: int = DLIB_UPSAMPLE, max_side: int = DLIB_MAX_SIDE) -> None:
        from idgen.identity.faces import _import_dlib, face_recognition_model_path

        dlib = _import_dlib()
        self.upsample, self.max_side = upsample, max_side
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(
            str(face_recognition_model_path("shape_predictor_68_face_landmarks.dat"))
        )
        self.encoder = dlib.face_recognition_model_v1(
            str(face_recognition_model_path("dlib_face_recognition_resnet_model_v1.dat"))
        )

    def faces(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        return [self._faces(image.convert("RGB")) for image in images]

    def _faces(self, image: Image.Image) -> list[Face]:
        scale = min(1.0, self.max_side / max(image.size))
        small = image
        if scale < 1.0:
            small = image.resize(
                (round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC
            )
        rgb = np.ascontiguousarray(np.asarray(small, dtype=np.uint8))  # dlib wants C-contiguous HxWx3
        rects, scores, _ = self.detector.run(rgb, self.upsample, 0.0)
        found = []
        for rect, score in zip(rects, scores, strict=True):
            descriptor = self.encoder.compute_face_descriptor(rgb, self.shape(rgb, rect))  # 128 floats
            # dlib's right/bottom are inclusive pixel indices; +1 makes them edges.
            box = [rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1]
            box_in_image = _clamped([v / scale for v in box], image.size)
            found.append(Face(box=box_in_image, score=float(score), embedding=_unit(descriptor)))
        return sorted(found, key=lambda f: f.score, reverse=True)
