"""Background contamination (ours): how much the identity changes the image outside the face.

The background is outside the largest face of both the with-id and the no-id image."""

from __future__ import annotations

import math

import numpy as np
import torch

from idgen.eval.metrics import maths as M
from idgen.eval.metrics.base import Metric, MetricModels, ScoreBatch, Skip, Value, register

NO_BACKGROUND = "no background pixels"


def _checked(values: list[float]) -> list[Value]:
    return [Skip(NO_BACKGROUND) if math.isnan(v) else v for v in values]


class PixelContamination(Metric):
    key, title, needs, higher_is_better = "contamination_px", "Contamination px (0-255)", "faces", False
    note = "mean |with id - no id| over background pixels and RGB"

    def compute(self, batch: ScoreBatch) -> list[Value]:
        out: list[Value] = []
        for k, with_id in enumerate(batch.with_id):
            if not with_id:
                out.append(Skip("the no-id image itself"))
                continue
            gen, base = np.array(batch.images[k]), np.array(batch.bases[k])
            out += _checked([M.pixel_contamination(gen, base, batch.backgrounds[k])])
        return out


class BackdropShift(Metric):
    key, title, needs, higher_is_better = "backdrop_shift", "Backdrop shift (0-255)", "faces", False
    note = "background move towards the reference's backdrop colour (known in rendered benchmarks only)"

    def compute(self, batch: ScoreBatch) -> list[Value]:
        out: list[Value] = []
        for k, (job, with_id) in enumerate(zip(batch.jobs, batch.with_id, strict=True)):
            backdrop = batch.identities[job.pair.identity.id].backdrop_rgb
            if not with_id or backdrop is None:
                out.append(
                    Skip("the no-id image itself" if not with_id else "reference backdrop colour unknown")
                )
                continue
            gen, base = (
                torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
                for im in (batch.images[k], batch.bases[k])
            )
            keep = torch.from_numpy(batch.backgrounds[k])
            out += _checked([M.backdrop_shift(gen, base, keep, torch.tensor(backdrop, dtype=torch.float32))])
        return out


class PatchContamination(Metric):
    key, title, needs, higher_is_better = "contamination_clip", "Contamination CLIP patches", "clip", False
    note = "mean (1 - cos) of CLIP patch tokens over background patches"

    def unavailable(self, models: MetricModels) -> str | None:
        if models.faces is None:
            return models.skipped.get("faces") or "no faces model (needed for the background)"
        return super().unavailable(models)

    def compute(self, batch: ScoreBatch) -> list[Value]:
        index = [k for k, w in enumerate(batch.with_id) if w]
        out: list[Value] = [Skip("the no-id image itself")] * len(batch)
        if not index:
            return out
        clip = batch.models.clip
        assert clip is not None
        patches, grid = clip.patch_embeds([batch.images[k] for k in index])
        for n, k in enumerate(index):
            keep = M.patch_background(batch.backgrounds[k], clip.view_box(batch.images[k].size), grid)
            out[k] = _checked([M.patch_contamination(patches[n], batch.base_patch_tokens(k), keep)])[0]
        return out


for _metric in (PixelContamination(), PatchContamination(), BackdropShift()):
    register(_metric)
