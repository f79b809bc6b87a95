"""Metric models behind the interfaces in `idgen.eval.models` (heavy packages are imported lazily).

HFCLIP (CLIP-T, CLIP-I, patch contamination), LaionAesthetic and Musiq (image scores), InsightFaceModel
and DlibFaceModel (FaceSim); the demo world's stand-ins live in `idgen.eval.backends.world`.
"""

from idgen.eval.backends.clip import HFCLIP, ClipPreprocess
from idgen.eval.backends.faces import DlibFaceModel, InsightFaceModel
from idgen.eval.backends.scorers import LaionAesthetic, Musiq

__all__ = ["HFCLIP", "ClipPreprocess", "DlibFaceModel", "InsightFaceModel", "LaionAesthetic", "Musiq"]
