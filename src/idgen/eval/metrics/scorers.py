"""No-reference image scores: LAION aesthetic (/10) and MUSIQ image quality (/100)."""

from __future__ import annotations

from idgen.eval.metrics.base import Metric, ScoreBatch, Value, per_image, register


class ScorerMetric(Metric):
    """The value of the no-reference scorer registered in MetricModels.scorers under `needs`."""

    def __init__(self, key: str, title: str, note: str) -> None:
        self.key = self.needs = key
        self.title, self.note = title, note

    def compute(self, batch: ScoreBatch) -> list[Value]:
        return per_image(batch.models.scorers[self.needs].score(batch.images))


register(ScorerMetric("aesthetic", "Aesthetic", "LAION linear head on CLIP ViT-L/14, / 10"))
register(ScorerMetric("iq", "IQ", "MUSIQ (SPAQ), / 100; the input mode is the model's name"))
