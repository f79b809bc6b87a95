"""Reading weight files and loading them strictly, with errors that name the offending key."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from idgen.errors import CheckpointError

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
WEIGHTS_NAME = "model.safetensors"  # beside config.json, as transformers and diffusers save models


def save_model_folder(module: nn.Module, folder: str | os.PathLike[str], config: dict[str, Any]) -> Path:
    """Write `folder`/config.json (`config` plus `_class_name`) and model.safetensors, each atomically."""
    from safetensors.torch import save_file

    from idgen.io import atomic_output, atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    with atomic_output(folder / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    record = {"_class_name": type(module).__name__, **config}
    atomic_write_text(folder / "config.json", json.dumps(record, indent=2) + "\n")
    return folder


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Tensors of a .safetensors file, or of a .pt/.bin file read with torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    if path.suffix in WEIGHT_SUFFIXES:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path} cannot be read with weights_only=True ({first_line})") from None
        return flatten_state_dict(obj, str(path))
    raise CheckpointError(f"{path}: unknown weight format {path.suffix!r}; expected one of {WEIGHT_SUFFIXES}")


def flatten_state_dict(obj: Any, source: str, prefix: str = "") -> dict[str, Tensor]:
    """Nested dicts of tensors (as official .bin files store them) -> one flat dict with dotted keys."""
    if isinstance(obj, Tensor):
        return {prefix[:-1]: obj}
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source} holds a {type(obj).__name__} where tensors were expected")
    flat: dict[str, Tensor] = {}
    for key, value in obj.items():
        flat.update(flatten_state_dict(value, source, f"{prefix}{key}."))
    return flat


def check_state_dict(module: nn.Module, state_dict: dict[str, Tensor], source: str, what: str) -> None:
    """Raise CheckpointError naming the first missing, unexpected or mis-shaped key."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]

    def more(keys: list[str]) -> str:
        return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""

    if missing:
        raise CheckpointError(
            f"{source} is not a {what} checkpoint: missing key {missing[0]!r}{more(missing)}"
        )
    if unexpected:
        raise CheckpointError(
            f"{source} is not a {what} checkpoint: unexpected key {unexpected[0]!r}{more(unexpected)}"
        )
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source} does not fit this {what}: {key!r} has shape {tuple(state_dict[key].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )


def load_strict(module: nn.Module, state_dict: dict[str, Tensor], source: str, what: str) -> None:
    """Strict load_state_dict with one-line errors; tensors are cast to the module's dtype."""
    check_state_dict(module, state_dict, source, what)
    module.load_state_dict(state_dict, strict=True)


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return config
