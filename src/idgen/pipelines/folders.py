"""An identity pipeline as one folder: a diffusers FLUX folder with the identity adapter beside its parts.

    <folder>/model_index.json, transformer/, vae/, ...   the FLUX pipeline, as diffusers saves it (optional)
    <folder>/identity_adapter/config.json                the adapter's sizes; `_class_name` names its class
    <folder>/identity_adapter/model.safetensors          its weights
    <folder>/identity_pipeline.json                      the sampling defaults of the pipeline

diffusers loads only the parts model_index.json lists, so a stock `FluxPipeline.from_pretrained(folder)`
still reads the folder; `IdentityFluxPipeline.from_pretrained(folder)` reads all of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from idgen.errors import IdgenError
from idgen.io import atomic_write_text, widen_to_umask
from idgen.models.checkpoint import CONFIG_NAME, read_config, save_model_folder

ADAPTER_FOLDER = "identity_adapter"
PIPELINE_FILE = "identity_pipeline.json"
FLUX_INDEX = "model_index.json"  # diffusers' pipeline folder marker
WPLUS_CLASS = "WPlusFluxAdapter"


def saved_paths(folder: Path, with_flux: bool) -> list[Path]:
    """What save_identity_folder writes at the top of `folder` (checked before anything is written)."""
    paths = [folder / ADAPTER_FOLDER, folder / PIPELINE_FILE]
    return [*paths, folder / FLUX_INDEX] if with_flux else paths


def save_identity_folder(
    folder: str | os.PathLike[str],
    adapter: Any,
    defaults: dict[str, Any],
    flux: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write the adapter (and the FLUX pipeline, unless None) into `folder`; existing parts are refused
    unless `overwrite`. The adapter's files are written atomically; the FLUX parts by diffusers."""
    folder = Path(folder)
    existing = [p for p in saved_paths(folder, flux is not None) if p.exists()]
    if existing and not overwrite:
        raise IdgenError(f"{existing[0]} exists; pass overwrite=True to replace it")
    save_model_folder(adapter, folder / ADAPTER_FOLDER, adapter.config.to_dict())
    atomic_write_text(folder / PIPELINE_FILE, json.dumps({"defaults": defaults}, indent=2) + "\n")
    if flux is not None:
        flux.save_pretrained(str(folder), safe_serialization=True)
        components = [folder / name for name in json.loads((folder / FLUX_INDEX).read_text(encoding="utf-8"))]
        widen_to_umask([folder / FLUX_INDEX, *(p for p in components if p.is_dir())])
    return folder


def adapter_folder(source: str | os.PathLike[str]) -> Path | None:
    """The adapter folder inside a folder this module wrote, or None."""
    inner = Path(source).expanduser() / ADAPTER_FOLDER
    return inner if (inner / CONFIG_NAME).is_file() else None


def load_identity_adapter(source: str | os.PathLike[str], dtype: torch.dtype) -> Any:
    """A PuLID adapter or the W+ branch from: an identity pipeline folder, an adapter folder (its config
    names the class), an official PuLID-FLUX file, or a hub id. Loaded strictly, on the CPU."""
    from idgen.models.loading import load_pulid_adapter
    from idgen.models.wplus_flux import load_wplus_flux_adapter

    path = adapter_folder(source) or Path(source).expanduser()
    if (path / CONFIG_NAME).is_file() and read_config(path).get("_class_name") == WPLUS_CLASS:
        return load_wplus_flux_adapter(path).to(dtype)
    return load_pulid_adapter(path if path.exists() else source, dtype=dtype)


def saved_defaults(source: Any) -> dict[str, Any] | None:
    """The sampling defaults stored in an identity pipeline folder, or None."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source).expanduser() / PIPELINE_FILE
    if not path.is_file():
        return None
    try:
        defaults = json.loads(path.read_text())["defaults"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise IdgenError(f"{path} is not an identity pipeline record (no 'defaults' object)") from None
    if not isinstance(defaults, dict):
        raise IdgenError(f"{path}: 'defaults' must be an object")
    return defaults
