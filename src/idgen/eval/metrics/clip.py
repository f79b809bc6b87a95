"""CLIP-T, CLIP-I (IBench's: against the no-id image) and CLIP-I-ref (ours: against the reference photo)."""

from __future__ import annotations

from idgen.eval.metrics import maths as M
from idgen.eval.metrics.base import Metric, ScoreBatch, Value, per_image, register


class ClipT(Metric):
    key, title, needs = "clip_t", "CLIP-T", "clip"
    note = "cos(text(prompt), image), IBench's definition"

    def compute(self, batch: ScoreBatch) -> list[Value]:
        return per_image(M.cosine(batch.clip_images, batch.clip_texts))


class ClipI(Metric):
    key, title, needs = "clip_i", "CLIP-I (vs no-id)", "clip"
    note = "cos(image with id, image without id), same prompt and seed: IBench's CLIP-I"

    def compute(self, batch: ScoreBatch) -> list[Value]:
        cos = M.cosine(batch.clip_images, batch.clip_bases)
        return per_image(cos, batch.with_id, "the no-id image itself")


class ClipIRef(Metric):
    key, title, needs = "clip_i_ref", "CLIP-I-ref", "clip"
    note = "cos(image(reference photo), image): ours, what most users mean by CLIP-I"

    def compute(self, batch: ScoreBatch) -> list[Value]:
        return per_image(M.cosine(batch.clip_images, batch.clip_references))


for _metric in (ClipT(), ClipI(), ClipIRef()):
    register(_metric)
