"""Identity encoders: photo -> PuLID's IDFormer inputs.

The real encoder (PuLIDIdentityEncoder, extra `idgen[pulid]`) and the dlib face detector
(DlibFaceDetector, extra `idgen[faces]`) are imported on first use, so `import idgen.identity`
stays light and works without the extras.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from idgen.identity.base import FaceBox, FaceDetector, IdentityEncoder, IdentityFeatures, largest_face
from idgen.identity.random import RandomIdentityEncoder

if TYPE_CHECKING:
    from idgen.identity.faces import DlibFaceDetector
    from idgen.identity.pulid import PuLIDIdentityEncoder

__all__ = [
    "DlibFaceDetector",
    "FaceBox",
    "FaceDetector",
    "IdentityEncoder",
    "IdentityFeatures",
    "PuLIDIdentityEncoder",
    "RandomIdentityEncoder",
    "largest_face",
]

_LAZY = {
    "DlibFaceDetector": "idgen.identity.faces",
    "PuLIDIdentityEncoder": "idgen.identity.pulid",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
