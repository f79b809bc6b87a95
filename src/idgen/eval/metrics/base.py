"""What a metric is: an object with one signature, registered by name.

A metric reads what it needs from a `ScoreBatch` (images, references, embeddings and faces, each computed
once per batch or once per process and shared by every metric) and returns one value per image: a float,
or a short reason why this image has no value (`Skip`). `unavailable` says why the whole metric cannot be
computed with the loaded models ("not computed: reason" in the report), `model` which model it used.

Adding a metric: a module with a `Metric` subclass and `register(...)`, imported in `metrics/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from idgen.eval.metrics import maths as M
from idgen.eval.models import Face, FaceModel, ImageScorer, ImageTextModel, largest_face
from idgen.io import load_image
from idgen.pipelines.names import NONE

if TYPE_CHECKING:
    from idgen.eval.folder import Job
    from idgen.eval.manifest import IdentityPhoto


@dataclass(frozen=True)
class Skip:
    """No value for this image, and why (counted per reason in the report)."""

    why: str


Value = float | Skip


@dataclass
class MetricModels:
    """The models metrics need; a missing one makes its metrics "not computed" (why in `skipped`)."""

    clip: ImageTextModel | None = None
    faces: FaceModel | None = None
    scorers: dict[str, ImageScorer] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # model or metric key -> why it is missing
    extra: dict[str, Any] = field(default_factory=dict)  # models of plug-in metrics, by metric key


class Cache:
    """Per-process memo of embeddings of files and texts (reference photos, no-id images, prompts)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], Any] = {}

    def get(self, kind: str, key: str, make: Callable[[Any], Any], arg: Any) -> Any:
        """make(arg), computed once per (kind, key)."""
        if (kind, key) not in self.values:
            self.values[(kind, key)] = make(arg)
        return self.values[(kind, key)]


def _one_face(faces: FaceModel, image: Image.Image) -> Face | None:
    return largest_face(faces.faces([image])[0])


def _patch_tokens(clip_and_image: tuple[ImageTextModel, Image.Image]) -> Tensor:
    clip, image = clip_and_image
    return clip.patch_embeds([image])[0][0]  # (N, C), one image per call: independent of batching


class ScoreBatch:
    """One batch of generated images and everything metrics share about them, computed on first use.

    Shared images (a pair's no-id image, a reference photo, a prompt) are memoised per process in `cache`,
    so they cost once however many methods and metrics read them."""

    def __init__(
        self,
        out: Path,
        jobs: Sequence[Job],
        models: MetricModels,
        cache: Cache,
        identities: dict[str, IdentityPhoto],
    ) -> None:
        self.out, self.jobs, self.models, self.cache, self.identities = (
            out,
            list(jobs),
            models,
            cache,
            identities,
        )

    def __len__(self) -> int:
        return len(self.jobs)

    @cached_property
    def with_id(self) -> list[bool]:
        return [j.method != NONE for j in self.jobs]

    @cached_property
    def images(self) -> list[Image.Image]:
        return [load_image(self.out / j.image, what="generated image") for j in self.jobs]

    @cached_property
    def bases(self) -> list[Image.Image]:
        return [self.cache.get("image", j.none_image, load_image, self.out / j.none_image) for j in self.jobs]

    @cached_property
    def references(self) -> list[Image.Image]:
        return [
            self.cache.get("ref", j.pair.identity.id, load_image, j.pair.identity.path) for j in self.jobs
        ]

    def _clip(self) -> ImageTextModel:
        assert self.models.clip is not None, "a CLIP metric ran without a CLIP model"
        return self.models.clip

    @cached_property
    def clip_images(self) -> Tensor:  # (B, D)
        return self._clip().image_embeds(self.images)

    @cached_property
    def clip_texts(self) -> Tensor:  # (B, D)
        clip = self._clip()
        return torch.cat(
            [
                self.cache.get("text", j.pair.prompt.id, clip.text_embeds, [j.pair.prompt.text])
                for j in self.jobs
            ]
        )

    @cached_property
    def clip_bases(self) -> Tensor:  # (B, D)
        clip = self._clip()
        return torch.cat(
            [
                self.cache.get("clip", j.none_image, clip.image_embeds, [b])
                for j, b in zip(self.jobs, self.bases, strict=True)
            ]
        )

    @cached_property
    def clip_references(self) -> Tensor:  # (B, D)
        clip = self._clip()
        return torch.cat(
            [
                self.cache.get("clip-ref", j.pair.identity.id, clip.image_embeds, [r])
                for j, r in zip(self.jobs, self.references, strict=True)
            ]
        )

    def _faces(self) -> FaceModel:
        assert self.models.faces is not None, "a face metric ran without a face model"
        return self.models.faces

    @cached_property
    def faces(self) -> list[Face | None]:
        """The largest face of each generated image (None: no face)."""
        return [largest_face(found) for found in self._faces().faces(self.images)]

    @cached_property
    def base_faces(self) -> list[Face | None]:
        model = self._faces()
        return [
            self.cache.get("face", j.none_image, lambda im: _one_face(model, im), b)
            for j, b in zip(self.jobs, self.bases, strict=True)
        ]

    @cached_property
    def reference_faces(self) -> list[Face | None]:
        model = self._faces()
        return [
            self.cache.get("face-ref", j.pair.identity.id, lambda im: _one_face(model, im), r)
            for j, r in zip(self.jobs, self.references, strict=True)
        ]

    @cached_property
    def backgrounds(self) -> list[np.ndarray]:
        """(H, W) bool per image: outside the face of both the with-id and the no-id image."""
        return [
            M.background([face, base], image.size)
            for face, base, image in zip(self.faces, self.base_faces, self.images, strict=True)
        ]

    def base_patch_tokens(self, k: int) -> Tensor:
        """(N, C) patch tokens of job k's no-id image, once per process."""
        return self.cache.get(
            "patches", self.jobs[k].none_image, _patch_tokens, (self._clip(), self.bases[k])
        )


class Metric:
    """One reported number per image. Subclasses set the class attributes and implement `compute`."""

    key: str = ""  # the column in results.jsonl and summary.json
    title: str = ""  # the column title in report.md
    higher_is_better: bool = True
    needs: str = ""  # "clip", "faces", a scorer name, or a plug-in model key in MetricModels.extra
    note: str = ""  # one line in the report: what it measures, where it differs from the reference

    def unavailable(self, models: MetricModels) -> str | None:
        """Why it cannot be computed with these models (None: it can)."""
        if self.model(models) is not None:
            return None
        return models.skipped.get(self.needs) or models.skipped.get(self.key) or f"no {self.needs} model"

    def model(self, models: MetricModels) -> Any | None:
        if self.needs == "clip":
            return models.clip
        if self.needs == "faces":
            return models.faces
        return models.scorers.get(self.needs) or models.extra.get(self.needs)

    def model_name(self, models: MetricModels) -> str | None:
        model = self.model(models)
        return None if model is None else str(getattr(model, "name", type(model).__name__))

    def compute(self, batch: ScoreBatch) -> list[Value]:  # one per job
        raise NotImplementedError


REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add a metric under its key (report order is registration order); a key is registered once."""
    if not metric.key or metric.key in REGISTRY:
        raise ValueError(f"metric key {metric.key!r} is empty or already registered")
    REGISTRY[metric.key] = metric
    return metric


def registered() -> list[Metric]:
    return list(REGISTRY.values())


def per_image(values: Tensor, keep: Sequence[bool] | None = None, why: str = "") -> list[Value]:
    """Floats of a (B,) tensor, `Skip(why)` where keep is False."""
    return [float(v) if keep is None or keep[k] else Skip(why) for k, v in enumerate(values.tolist())]
