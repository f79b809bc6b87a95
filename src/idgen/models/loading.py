"""Finding and loading PuLID-FLUX checkpoints: an official file, one of our folders, or a hub id."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from idgen.errors import CheckpointError
from idgen.models.checkpoint import WEIGHTS_NAME, load_strict, read_config, read_state_dict, save_model_folder
from idgen.models.pulid import PuLIDAdapter, PuLIDConfig

PULID_HUB_REPO = "guozinan/PuLID"
PULID_HUB_FILE = "pulid_flux_v0.9.1.safetensors"


def resolve_hub_file(repo_id: str, filename: str) -> Path:
    """A hub file from the local cache (or the hub when online); a clear error when neither has it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{repo_id}/{filename} is not in the local Hugging Face cache and cannot be downloaded "
            f"({type(e).__name__}); pass a local path instead"
        ) from None


def pulid_config_from_folder(folder: Path) -> PuLIDConfig:
    raw = read_config(folder)
    raw.pop("_class_name", None)
    known = set(PuLIDConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CheckpointError(f"{folder}/config.json is not a PuLID config: unknown field {unknown[0]!r}")
    return PuLIDConfig(**raw)


def load_pulid_adapter(
    source: str | os.PathLike[str],
    config: PuLIDConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PuLIDAdapter:
    """Load PuLID-FLUX weights strictly.

    source: an official pulid_flux_v0.9.x .safetensors file (released sizes unless `config` says
    otherwise), a folder with config.json + model.safetensors, or a hub id ("guozinan/PuLID" or
    "guozinan/PuLID/pulid_flux_v0.9.0.safetensors").
    """
    path = Path(source)
    if path.is_dir():
        config = config or pulid_config_from_folder(path)
        path = path / WEIGHTS_NAME
    elif not path.exists():
        text = str(source)
        if text.count("/") == 1 and not text.startswith((".", "/")):
            path = resolve_hub_file(text, PULID_HUB_FILE)
        elif text.count("/") >= 2 and text.endswith(".safetensors") and not text.startswith((".", "/")):
            repo, filename = text.rsplit("/", 1)
            path = resolve_hub_file(repo, filename)
        else:
            raise CheckpointError(f"PuLID checkpoint not found: {source}")
    state_dict = read_state_dict(path)
    with torch.device("meta"):
        adapter = PuLIDAdapter(config or PuLIDConfig())
    adapter = adapter.to_empty(device="cpu")
    load_strict(adapter, state_dict, str(path), "PuLID-FLUX")
    return adapter.to(device, dtype).eval()


def save_pulid_adapter(adapter: PuLIDAdapter, folder: str | os.PathLike[str]) -> Path:
    """Write config.json + model.safetensors, each atomically."""
    return save_model_folder(adapter, folder, adapter.config.to_dict())
