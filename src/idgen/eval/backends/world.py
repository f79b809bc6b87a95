"""The demo world's evaluators behind the harness's metric interfaces (offline, CPU, 64x64 images).

WorldCLIP stands in for CLIP ViT-L/14, the evaluator FaceRecognizer + FaceSegmenter for antelopev2
(detection is the segmenter's largest face region; its mask is the face region for contamination).
They were trained apart from the generator (different seeds, architectures and data draws).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

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
