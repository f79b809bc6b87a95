"""One resolver for weights (a local file, a folder, or a Hugging Face hub id) and the PuLID-FLUX loader.

Hub ids are read through huggingface_hub: from the local cache when offline (HF_HUB_OFFLINE=1), else
from the cache or the hub. Every "not found" error names what was looked for and where, and points to
`idgen doctor`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from idgen.errors import CheckpointError
from idgen.models.checkpoint import (
    CONFIG_NAME,
    DOCTOR_HINT,
    WEIGHTS_NAME,
    build_strict,
    config_from_folder,
    missing_weights,
    read_state_dict,
    save_model_folder,
)
from idgen.models.pulid import PuLIDAdapter, PuLIDConfig
from idgen.models.sources import WEIGHTS

PULID_HUB_REPO = WEIGHTS["pulid"].repo
PULID_HUB_FILE = WEIGHTS["pulid"].files[0]

# "owner/name" or "owner/name/path/in/repo": no leading "." or "/", no "~", no backslash.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?:/[\w.-]+)*$")


def split_hub_id(source: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(repo, path in repo or "") for a hub id that is not an existing local path; else None."""
    text = os.fspath(source)
    if not _HUB_ID.match(text) or Path(text).exists():
        return None
    owner, name, *rest = text.split("/")
    return f"{owner}/{name}", "/".join(rest)


def _not_cached(what: str, where: str, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"{what}: {where} is not in the local Hugging Face cache and cannot be downloaded "
        f"({type(error).__name__}); {DOCTOR_HINT}"
    )


def resolve_hub_file(repo_id: str, filename: str, what: str = "checkpoint") -> Path:
    """One file of a hub repo, from the local cache (or the hub when online)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as e:  # offline, gated, missing repo or file, network: one line for all
        raise _not_cached(what, f"{repo_id}/{filename}", e) from None


def resolve_hub_folder(repo_id: str, files: Sequence[str], what: str = "checkpoint") -> Path:
    """The snapshot folder of a hub repo holding `files`, from the local cache (or the hub when online)."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=list(files)))
    except Exception as e:  # offline, gated, missing repo, network: one line for all
        raise _not_cached(what, f"{repo_id} ({', '.join(files)})", e) from None
    return _folder_with(folder, files, what, ())


def _folder_with(folder: Path, files: Sequence[str], what: str, nested: Sequence[str]) -> Path:
    """`folder` (or one of its `nested` subfolders) when it holds every one of `files`."""
    for candidate in (folder, *(folder / n for n in nested)):
        if all((candidate / name).is_file() for name in files):
            return candidate
    lacking = [name for name in files if not (folder / name).is_file()]
    raise missing_weights(what, f"{folder} lacks {', '.join(lacking)}")


def _resolve_local(
    path: Path, what: str, folder_file: str | None, folder_files: Sequence[str], nested: Sequence[str]
) -> Path:
    if path.is_file():
        if folder_files:
            expected = ", ".join(folder_files)
            raise CheckpointError(f"{path} is a file; expected a folder of {what} ({expected})")
        return path
    if folder_files:
        return _folder_with(path, folder_files, what, nested)
    if folder_file is None:
        return path
    if not (path / folder_file).is_file():
        raise missing_weights(what, path / folder_file)
    return path / folder_file


def resolve_weights(
    source: str | os.PathLike[str],
    what: str,
    *,
    folder_file: str | None = None,
    repo_file: str | None = None,
    folder_files: Sequence[str] = (),
    nested: Sequence[str] = (),
) -> Path:
    """A local path for `source`: a file, a folder, or a hub id ("owner/name" or "owner/name/file").

    folder_file:  the file to take from a local folder (else the folder itself is returned).
    repo_file:    the file to take from a bare "owner/name" (else its config.json + model.safetensors
                  folder, or the `folder_files` folder).
    folder_files: files a folder must hold (the folder is returned); `nested` names subfolders that
                  are searched too (a zip unpacked one level down).
    """
    path = Path(source).expanduser()
    if path.exists():
        return _resolve_local(path, what, folder_file, folder_files, nested)
    hub = split_hub_id(source)
    if hub is None:
        raise missing_weights(what, source)
    repo, inside = hub
    if inside or repo_file:
        return resolve_hub_file(repo, inside or str(repo_file), what)
    return resolve_hub_folder(repo, folder_files or (CONFIG_NAME, WEIGHTS_NAME), what)


def load_model_weights(
    source: str | os.PathLike[str],
    weights: str,
    model_class: Any,
    config_class: Any,
    config: Any,
    what: str,
    repo_file: str | None = None,
) -> Any:
    """model_class from a weights file, a model folder (config.json + model.safetensors) or a hub id, loaded
    strictly on the CPU. `weights` names its row in models/sources.py; `config` (else the folder's, else
    config_class's defaults) gives its sizes."""
    path = resolve_weights(source, WEIGHTS[weights].what, repo_file=repo_file)
    if path.is_dir():
        config = config or config_from_folder(path, config_class, what)
        path = path / WEIGHTS_NAME
    state_dict = read_state_dict(path, WEIGHTS[weights].what)
    return build_strict(model_class, config or config_class(), state_dict, str(path), what)


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
    adapter = load_model_weights(
        source, "pulid", PuLIDAdapter, PuLIDConfig, config, "PuLID-FLUX", repo_file=PULID_HUB_FILE
    )
    return adapter.to(device, dtype).eval()


def save_pulid_adapter(adapter: PuLIDAdapter, folder: str | os.PathLike[str]) -> Path:
    """Write config.json + model.safetensors, each atomically."""
    return save_model_folder(adapter, folder, adapter.config.to_dict())
