"""Reading weight files and loading them strictly: one reader, one strict loader, one set of messages.

Formats: safetensors, and official .pt/.pth/.bin/.ckpt files read with torch.load(weights_only=True)
only. A pickle that needs more than tensors and plain containers is refused in one line.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from idgen.errors import CheckpointError

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
WEIGHT_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)
WEIGHTS_NAME = "model.safetensors"  # beside config.json, as transformers and diffusers save models
CONFIG_NAME = "config.json"
DOCTOR_HINT = "run `idgen doctor` to see where each weight file goes"


class MissingWeightsError(CheckpointError):
    """A weight file or folder is not where it was looked for."""


def missing_weights(what: str, where: str | os.PathLike[str]) -> MissingWeightsError:
    """The one "missing weights" message: what, where it was looked for, and where to look next."""
    return MissingWeightsError(f"{what} not found: {os.fspath(where)}; {DOCTOR_HINT}")


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
    atomic_write_text(folder / CONFIG_NAME, json.dumps(record, indent=2) + "\n")
    return folder


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _torch_load(path: Path, what: str) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises weights_only=False; we never do that, so we name what was refused.
        found = re.search(r"GLOBAL (\S+)", str(e))
        needs = f"it needs {found.group(1)}" if found else _first_line(e)
        raise CheckpointError(
            f"{path} cannot be read with weights_only=True ({needs}); expected {what} holding only tensors"
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ... on a truncated or foreign file
        raise CheckpointError(f"{path} is not a readable {what} file ({_first_line(e)})") from None


def read_weights(path: str | os.PathLike[str], what: str = "weights") -> dict[str, Any]:
    """The dict stored in a weight file: tensors from .safetensors, or the (possibly nested) dict of a
    .pt/.pth/.bin/.ckpt read with torch.load(weights_only=True). `what` names the expected content."""
    path = Path(path)
    if not path.is_file():
        raise missing_weights(what, path)
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({_first_line(e)}); expected {what}"
            ) from None
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: unknown weight format {path.suffix!r} for {what}; expected one of {WEIGHT_SUFFIXES}"
        )
    obj = _torch_load(path, what)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected {what} (a dict of tensors)")
    return dict(obj)


def read_state_dict(path: str | os.PathLike[str], what: str = "weights") -> dict[str, Tensor]:
    """read_weights, flattened: nested dicts (as official .bin files store them) -> dotted keys."""
    return flatten_state_dict(read_weights(path, what), str(path))


def flatten_state_dict(obj: Any, source: str, prefix: str = "") -> dict[str, Tensor]:
    """Nested dicts of tensors -> one flat dict with dotted keys."""
    if isinstance(obj, Tensor):
        return {prefix[:-1]: obj}
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__} where tensors were expected")
    flat: dict[str, Tensor] = {}
    for key, value in obj.items():
        flat.update(flatten_state_dict(value, source, f"{prefix}{key}."))
    return flat


def _a(what: str) -> str:
    return f"an {what}" if what[:1].lower() in "aeiou" else f"a {what}"


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def check_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str, what: str) -> None:
    """Raise CheckpointError naming the file, what was expected, and the first missing, unexpected or
    mis-shaped key."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing:
        raise CheckpointError(
            f"{source} is not {_a(what)} checkpoint: missing key {missing[0]!r}{_more(missing)}"
        )
    if unexpected:
        raise CheckpointError(
            f"{source} is not {_a(what)} checkpoint: unexpected key {unexpected[0]!r}{_more(unexpected)}"
        )
    for key, tensor in expected.items():
        value = state_dict[key]
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{source}: {key!r} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source} does not fit this {what}: {key!r} has shape {tuple(value.shape)}, "
                f"expected {tuple(tensor.shape)}"
            )


def load_strict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str, what: str) -> None:
    """Strict load_state_dict with one-line errors; tensors are cast to the module's dtype."""
    check_state_dict(module, state_dict, source, what)
    module.load_state_dict(state_dict, strict=True)


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise missing_weights(f"{CONFIG_NAME} of the model folder", path)
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return config


def config_from_folder(folder: Path, config_class: Any, what: str) -> Any:
    """The dataclass `config_class` from folder/config.json; unknown or invalid fields are one line."""
    raw = read_config(folder)
    raw.pop("_class_name", None)
    unknown = sorted(set(raw) - set(config_class.__dataclass_fields__))
    if unknown:
        raise CheckpointError(
            f"{folder}/{CONFIG_NAME} is not {_a(what)} config: unknown field {unknown[0]!r}"
        )
    try:
        return config_class(**raw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder}/{CONFIG_NAME} is not a valid {what} config ({e})") from None


def build_strict(
    model_class: Any, config: Any, state_dict: Mapping[str, Tensor], source: str, what: str
) -> Any:
    """model_class(config), built without initialising its weights, then filled strictly from state_dict."""
    with torch.device("meta"):
        model = model_class(config)
    model = model.to_empty(device="cpu")
    load_strict(model, state_dict, source, what)
    return model
