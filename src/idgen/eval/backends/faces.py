"""Face models for FaceSim: insightface antelopev2 (IBench's), and dlib's offline 128-d descriptor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from idgen.errors import IdgenError
from idgen.eval.models import Face

DLIB_MAX_SIDE = 1024  # larger photos are downscaled before dlib's HOG detector (its cost grows with area)


class InsightFaceModel:
    """antelopev2 (SCRFD detector at det_size 640 + glintr100 ArcFace) through insightface's FaceAnalysis."""

    arcface_comparable = True

    def __init__(self, name: str = "antelopev2", root: str | None = None, providers: list[str] | None = None):
        try:
            from insightface.app import FaceAnalysis
        except ImportError:
            raise IdgenError(
                "metric facesim needs insightface: pip install insightface onnxruntime"
            ) from None
        self.name = name
        kwargs: dict[str, Any] = {"name": name, "providers": providers or ["CPUExecutionProvider"]}
        if root:
            kwargs["root"] = root
        self.app = FaceAnalysis(**kwargs)
        self.app.prepare(ctx_id=0, det_size=(640, 640))

    def faces(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        out = []
        for image in images:
            bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
            found = self.app.get(bgr)
            faces = []
            for f in found:
                left, top, right, bottom = (float(v) for v in f.bbox)
                embedding = F.normalize(torch.from_numpy(np.asarray(f.embedding, dtype=np.float32)), dim=0)
                faces.append(
                    Face(box=(left, top, right, bottom), score=float(f.det_score), embedding=embedding)
                )
            out.append(faces)
        return out


class DlibFaceModel:
    """dlib's HOG detector + 68-point shape predictor + 128-d ResNet descriptor, shipped in wheels (offline).
    Its cosines are not on ArcFace's scale: reports label them, and they must not be compared."""

    name = "dlib-128d (not comparable to ArcFace)"
    arcface_comparable = False

    def __init__(self) -> None:
        from idgen.identity.faces import _import_dlib, face_recognition_model_path

        dlib = _import_dlib()
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(
            str(face_recognition_model_path("shape_predictor_68_face_landmarks.dat"))
        )
        self.encoder = dlib.face_recognition_model_v1(
            str(face_recognition_model_path("dlib_face_recognition_resnet_model_v1.dat"))
        )

    def faces(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        out = []
        for image in images:
            image = image.convert("RGB")
            scale = min(1.0, DLIB_MAX_SIDE / max(image.size))
            if scale < 1.0:
                image = image.resize(
                    (round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC
                )
            rgb = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
            found = []
            for rect in self.detector(rgb, 1):
                landmarks = self.shape(rgb, rect)
                descriptor = np.asarray(
                    self.encoder.compute_face_descriptor(rgb, landmarks), dtype=np.float32
                )
                box = (rect.left() / scale, rect.top() / scale, rect.right() / scale, rect.bottom() / scale)
                embedding = F.normalize(torch.from_numpy(descriptor), dim=0)
                found.append(Face(box=box, score=1.0, embedding=embedding))
            out.append(found)
        return out
