"""IBench's remaining metrics as plug-ins: LandmarkDiff, PoseDiv, ExprDiv (per image) and FID (per set).

Each needs a model idgen does not ship a loader for (MTCNN 5 points, Hopenet, a VGG19 FER head, Inception
v3); a model put into `MetricModels.extra[key]` that implements the small interface below is used, else
the report says "not computed" with the reason. Reference and generated image are compared as IBench does:
- LandmarkDiff: 5 landmarks centred on their mean and divided by the face box diagonal; mean L2 per point.
- PoseDiv: mean of |d yaw|, |d pitch|, |d roll| in degrees.
- ExprDiv: 1 when the expression class differs from the reference's, else 0 (its mean is the fraction).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

import numpy as np
from PIL import Image

from idgen.eval.metrics.base import Metric, MetricModels, ScoreBatch, Skip, Value, register

NOT_SHIPPED = "idgen ships no loader for {model}, and none was given"


class LandmarkModel(Protocol):
    name: str

    # per image: (5, 2) landmarks in pixels and the face box (left, top, right, bottom), or None
    def landmarks(
        self, images: Sequence[Image.Image]
    ) -> list[tuple[np.ndarray, tuple[float, ...]] | None]: ...


class PoseModel(Protocol):
    name: str

    def poses(self, images: Sequence[Image.Image]) -> list[tuple[float, float, float] | None]: ...  # degrees


class ExpressionModel(Protocol):
    name: str

    def expressions(self, images: Sequence[Image.Image]) -> list[int | None]: ...  # class index


def landmark_distance(a: np.ndarray, box_a: Sequence[float], b: np.ndarray, box_b: Sequence[float]) -> float:
    """Mean L2 between 5 landmarks, each set centred and scaled by its face box diagonal."""

    def normalised(points: np.ndarray, box: Sequence[float]) -> np.ndarray:
        diagonal = float(np.hypot(box[2] - box[0], box[3] - box[1]))
        return (points - points.mean(axis=0)) / max(diagonal, 1e-6)

    return float(np.linalg.norm(normalised(a, box_a) - normalised(b, box_b), axis=1).mean())


def pose_distance(a: Sequence[float], b: Sequence[float]) -> float:
    return float(np.mean(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


class _AgainstReference(Metric):
    """A per-image comparison with the reference photo through an `extra` model."""

    model_label = ""

    def unavailable(self, models: MetricModels) -> str | None:
        if self.needs in models.extra:
            return None
        return models.skipped.get(self.key) or NOT_SHIPPED.format(model=self.model_label)

    def describe(self, model: object, images: Sequence[Image.Image]) -> list[object | None]:
        raise NotImplementedError

    def distance(self, a: object, b: object) -> float:
        raise NotImplementedError

    def compute(self, batch: ScoreBatch) -> list[Value]:
        model = batch.models.extra[self.needs]
        mine = self.describe(model, batch.images)
        refs = [
            batch.cache.get(self.key, j.pair.identity.id, lambda im: self.describe(model, [im])[0], r)
            for j, r in zip(batch.jobs, batch.references, strict=True)
        ]
        out: list[Value] = []
        for value, ref in zip(mine, refs, strict=True):
            if ref is None or value is None:
                out.append(Skip("no face in the reference photo" if ref is None else "no face in the image"))
            else:
                out.append(self.distance(value, ref))
        return out


class LandmarkDiff(_AgainstReference):
    key = needs = "landmark_diff"
    title, higher_is_better, model_label = "LandmarkDiff", False, "MTCNN 5-point landmarks"
    note = "IBench's: mean L2 of centred, box-diagonal-scaled 5 landmarks, reference vs image"

    def describe(self, model: object, images: Sequence[Image.Image]) -> list[object | None]:
        return list(model.landmarks(images))  # type: ignore[attr-defined]

    def distance(self, a: object, b: object) -> float:
        points_a, box_a = cast(tuple[np.ndarray, tuple[float, ...]], a)
        points_b, box_b = cast(tuple[np.ndarray, tuple[float, ...]], b)
        return landmark_distance(points_a, box_a, points_b, box_b)


class PoseDiv(_AgainstReference):
    key = needs = "pose_div"
    title, higher_is_better, model_label = "PoseDiv (deg)", True, "Hopenet head pose"
    note = "IBench's: mean |d yaw|, |d pitch|, |d roll| in degrees, reference vs image"

    def describe(self, model: object, images: Sequence[Image.Image]) -> list[object | None]:
        return list(model.poses(images))  # type: ignore[attr-defined]

    def distance(self, a: object, b: object) -> float:
        return pose_distance(a, b)  # type: ignore[arg-type]


class ExprDiv(_AgainstReference):
    key = needs = "expr_div"
    title, higher_is_better, model_label = "ExprDiv", True, "a VGG19 FER (7 classes) head"
    note = "IBench's: fraction of images whose expression class differs from the reference's"

    def describe(self, model: object, images: Sequence[Image.Image]) -> list[object | None]:
        return list(model.expressions(images))  # type: ignore[attr-defined]

    def distance(self, a: object, b: object) -> float:
        return float(a != b)


class FID(Metric):
    key = needs = "fid"
    title, higher_is_better = "FID", False
    note = "IBench's optional set-level FID (Inception-v3 pool features)"

    def unavailable(self, models: MetricModels) -> str | None:
        return models.skipped.get(self.key) or (
            "a set-level metric; idgen ships no Inception-v3 FID features and does not compute it"
        )

    def compute(self, batch: ScoreBatch) -> list[Value]:
        return [Skip("set-level metric")] * len(batch)


for _metric in (LandmarkDiff(), PoseDiv(), ExprDiv(), FID()):
    register(_metric)
