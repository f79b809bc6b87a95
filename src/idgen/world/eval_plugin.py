"""The demo world as a client of `idgen.eval`: its evaluators behind the metric interfaces (offline, CPU,
64x64 images) and its built-in benchmarks, registered into eval on import (eval never imports the world).

WorldCLIP stands in for CLIP ViT-L/14, the evaluator FaceRecognizer + FaceSegmenter for antelopev2
(detection is the segmenter's largest face region; its mask is the face region for contamination).
They were trained apart from the generator (different seeds, architectures and data draws).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from idgen.eval.harness import register_metric_models
from idgen.eval.manifest import Benchmark, BenchPrompt, IdentityPhoto, SeedPolicy, register_benchmark
from idgen.eval.metrics import MetricModels
from idgen.eval.models import Face

SIZE = 64


def to_batch(images: Sequence[Image.Image]) -> Tensor:
    """PIL images -> (B, 3, 64, 64) float in [0, 1]; other sizes are resized bicubic."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (SIZE, SIZE):
            image = image.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class WorldImageText:
    """ImageTextModel over the demo world's evaluator CLIP."""

    name = "world-clip"

    def __init__(self, clip: object | None = None) -> None:
        from idgen.world.evaluators import WorldCLIP

        self.clip = clip if clip is not None else WorldCLIP.from_pretrained()

    def image_embeds(self, images: Sequence[Image.Image]) -> Tensor:
        return self.clip.image_embeds(to_batch(images))  # type: ignore[attr-defined]

    def text_embeds(self, texts: Sequence[str]) -> Tensor:
        return self.clip.text_embeds(list(texts))  # type: ignore[attr-defined]

    def patch_embeds(self, images: Sequence[Image.Image]) -> tuple[Tensor, int]:
        tokens = self.clip.patch_tokens(to_batch(images))  # type: ignore[attr-defined]  # (B, g, g, C)
        return tokens.flatten(1, 2), int(tokens.shape[1])

    def view_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        return 0.0, 0.0, float(size[0]), float(size[1])  # the whole image, resized


class WorldFaces:
    """FaceModel: the evaluator segmenter finds the face (largest region), its recogniser embeds it."""

    name = "world-face"
    arcface_comparable = False

    def __init__(self, recognizer: object | None = None, segmenter: object | None = None) -> None:
        from idgen.world.evaluators import FaceRecognizer, FaceSegmenter

        self.recognizer = recognizer if recognizer is not None else FaceRecognizer.from_pretrained()
        self.segmenter = segmenter if segmenter is not None else FaceSegmenter.from_pretrained()

    @torch.inference_mode()
    def faces(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        x = to_batch(images)
        masks, boxes = self.segmenter.detect(x)  # type: ignore[attr-defined]
        found = [j for j, box in enumerate(boxes) if box is not None]
        out: list[list[Face]] = [[] for _ in images]
        if not found:
            return out
        embeds = self.recognizer.embed(x[found], [boxes[j] for j in found])  # type: ignore[attr-defined]
        for k, j in enumerate(found):
            w, h = images[j].size
            sx, sy = w / SIZE, h / SIZE
            left, top, right, bottom = boxes[j]
            mask = masks[j].numpy() if (w, h) == (SIZE, SIZE) else None
            box = (left * sx, top * sy, right * sx, bottom * sy)
            out[j] = [Face(box=box, score=1.0, embedding=embeds[k], mask=mask)]
        return out


def world_metric_models() -> MetricModels:
    """The demo world's evaluators (independent of the generator) behind the metric interfaces."""
    models = MetricModels(clip=WorldImageText(), faces=WorldFaces())
    models.skipped = {
        "aesthetic": "no LAION head exists for the demo world",
        "iq": "MUSIQ is not trained for the demo world",
    }
    return models


# Built-in demo-world benchmarks: the same pairs and seeds as `python -m idgen.world.gates`; name ->
# (split, pairs). Settings are chosen on `demo-validation`; `demo` and `demo-quick` only report.
BUILTIN = {"demo": ("test", 100), "demo-quick": ("test", 12), "demo-validation": ("validation", 100)}
FACE_MODEL = "demo-world evaluator recogniser (not comparable to ArcFace)"


def builtin(name: str, cache: Path) -> Benchmark:
    """`demo` (100 held-out identities, one held-out prompt each), `demo-quick` (its first 12 pairs) or
    `demo-validation` (100 validation identities, one validation prompt each, for choosing settings).

    The reference photos are rendered into `cache` by `Benchmark.prepare` (deterministic, atomic), so a
    refused run writes nothing."""
    from idgen.world.gates import pairs, reference_seed, split_people
    from idgen.world.render import render_reference

    split, count = BUILTIN[name]
    people = split_people(split)
    chosen = pairs(1, split)[:count]
    identities: list[IdentityPhoto] = []
    prompts: list[BenchPrompt] = []
    index: list[tuple[int, int, int]] = []
    prompt_ids: dict[str, int] = {}
    references = {}
    for k, pair in enumerate(chosen):
        reference = render_reference(people[pair.identity], seed=reference_seed(pair.identity, split))
        label = f"{split}_{pair.identity:03d}"
        path = cache / f"{label}.png"
        references[path] = reference.image
        rgb = tuple(c / 255 for c in reference.background_rgb)
        identities.append(IdentityPhoto(label, path, backdrop_rgb=rgb))  # type: ignore[arg-type]
        if pair.prompt.text not in prompt_ids:
            prompt_ids[pair.prompt.text] = len(prompts)
            prompts.append(BenchPrompt(id=f"{len(prompts):03d}", text=pair.prompt.text))
        index.append((k, prompt_ids[pair.prompt.text], pair.seed))

    def render() -> None:
        from idgen.io import atomic_save_image

        cache.mkdir(parents=True, exist_ok=True)
        for path, image in references.items():
            if not path.exists():
                atomic_save_image(Image.fromarray(image), path)

    return Benchmark(
        name, tuple(identities), tuple(prompts), SeedPolicy("fixed"), pairs=tuple(index), render=render
    )


register_metric_models("demo-world", world_metric_models)
for _name in BUILTIN:
    register_benchmark(_name, lambda out, _name=_name: builtin(_name, out / "references"))  # type: ignore[misc]
