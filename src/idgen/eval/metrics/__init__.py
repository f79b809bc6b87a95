"""Metrics as registered objects (`base.Metric`), and the arithmetic they share (`maths`).

Built-in metrics, in report order: CLIP-T, CLIP-I, CLIP-I-ref (clip.py); FaceSim, AntiFaceSim, idgen's
FaceSim vs no-id (faces.py); Aesthetic, IQ (scorers.py); contamination in pixels, CLIP patches and towards
the backdrop (contamination.py); IBench's LandmarkDiff, PoseDiv, ExprDiv and FID (ibench_extra.py).
A new metric is one module with a `Metric` subclass and `register(...)`, plus its import line here.
"""

# isort: off
# Imported for their registrations, in report order.
from idgen.eval.metrics import clip  # noqa: F401
from idgen.eval.metrics import faces  # noqa: F401
from idgen.eval.metrics import scorers  # noqa: F401
from idgen.eval.metrics import contamination  # noqa: F401
from idgen.eval.metrics import ibench_extra  # noqa: F401

# isort: on
from idgen.eval.metrics.base import REGISTRY, Metric, MetricModels, ScoreBatch, Skip, register, registered
from idgen.eval.metrics.maths import (
    backdrop_shift,
    background,
    cosine,
    face_region,
    mean_ci,
    mean_ci_normal,
    patch_background,
    patch_contamination,
    pixel_contamination,
    t_quantile,
)

__all__ = [
    "REGISTRY",
    "Metric",
    "MetricModels",
    "ScoreBatch",
    "Skip",
    "backdrop_shift",
    "background",
    "cosine",
    "face_region",
    "mean_ci",
    "mean_ci_normal",
    "patch_background",
    "patch_contamination",
    "pixel_contamination",
    "register",
    "registered",
    "t_quantile",
]
