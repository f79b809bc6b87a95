"""idgen: identity-preserving text-to-image generation (SpatialID on PuLID-FLUX, PIDiff, IBench).

Top-level names load on first use, so `import idgen.errors` or the CLI's argument parsing stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load": "idgen.api",
    "TINY_RANDOM": "idgen.api",
    "BACKBONES": "idgen.api",
    "IdentityFluxPipeline": "idgen.pipelines.pulid_flux",
    "IdentityPipeline": "idgen.pipelines.base",
    "IdentityPipelineOutput": "idgen.pipelines.base",
    "MODES": "idgen.pipelines.base",
    "WPlusSD15Pipeline": "idgen.pipelines.pidiff_sd15",
    "mask_policy": "idgen.pipelines.base",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'idgen' has no attribute {name!r}")
