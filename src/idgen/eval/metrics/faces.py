"""FaceSim, AntiFaceSim as IBench defines it, and idgen's with-id vs no-id variant under its own name.

Every face metric uses the largest detected face (IBench takes the first detection); an image without a
face gets no value and is counted with the reason.
"""

from __future__ import annotations

from idgen.eval.metrics import maths as M
from idgen.eval.metrics.base import Metric, ScoreBatch, Skip, Value, register
from idgen.eval.models import Face


def _cos(a: Face, b: Face) -> float:
    return float(M.cosine(a.embedding[None], b.embedding[None])[0])


def _to_references(faces: list[Face | None], references: list[Face | None], image: str) -> list[Value]:
    """cos(face, reference) per image, or why not: the reference photo is checked first, as IBench does."""
    out: list[Value] = []
    for face, ref in zip(faces, references, strict=True):
        if ref is None:
            out.append(Skip("no face in the reference photo"))
        elif face is None:
            out.append(Skip(f"no face in {image}"))
        else:
            out.append(_cos(face, ref))
    return out


class FaceSim(Metric):
    key, title, needs = "facesim", "FaceSim", "faces"
    note = "cos(face(reference), face(image)), IBench's definition"

    def compute(self, batch: ScoreBatch) -> list[Value]:
        return _to_references(batch.faces, batch.reference_faces, "the image")


class AntiFaceSim(Metric):
    key, title, needs, higher_is_better = "antifacesim", "AntiFaceSim", "faces", False
    note = (
        "cos(face(reference), face(the pair's no-id image)), IBench's definition: how much the base model "
        "already resembles the person (the same for every method of a pair)"
    )

    def compute(self, batch: ScoreBatch) -> list[Value]:
        return _to_references(batch.base_faces, batch.reference_faces, "the no-id image")


class FaceChange(Metric):
    key, title, needs, higher_is_better = "facesim_vs_noid", "FaceSim vs no-id (idgen)", "faces", False
    note = "cos(face(image with id), face(no-id image)): idgen's variant, not an IBench metric"

    def compute(self, batch: ScoreBatch) -> list[Value]:
        out: list[Value] = []
        for face, base, with_id in zip(batch.faces, batch.base_faces, batch.with_id, strict=True):
            if not with_id:
                out.append(Skip("the no-id image itself"))
            elif face is None or base is None:
                out.append(Skip("no face in the image" if face is None else "no face in the no-id image"))
            else:
                out.append(_cos(face, base))
        return out


for _metric in (FaceSim(), AntiFaceSim(), FaceChange()):
    register(_metric)
