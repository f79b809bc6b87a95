"""W+ code files and the edits of `idgen edit`: swap / mix layers with another code, add a direction.

A code file is a .safetensors holding a tensor "w_plus" (other keys are ignored), or a .npy read
with numpy (allow_pickle=False). Codes are (L, D) or (1, L, D); the edit keeps the input's shape.
The maths lives in idgen.core.wplus_edit; this module reads, checks and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from idgen.core.wplus_edit import W_DIM, W_PLUS_LAYERS, add_direction, check_w_plus, mix, parse_layers
from idgen.errors import IdgenError
from idgen.io import atomic_output

W_PLUS_KEY = "w_plus"
CODE_SUFFIXES = (".safetensors", ".npy")


def read_tensors(path: str | os.PathLike[str], what: str = "W+ file") -> dict[str, Tensor]:
    """All tensors of a .safetensors file, or {"w_plus": array} for a .npy file."""
    p = Path(path)
    if p.suffix not in CODE_SUFFIXES:
        raise IdgenError(f"{what} must be .safetensors or .npy, got {p.name}")
    if not p.is_file():
        raise IdgenError(f"{what} not found: {p}")
    try:
        if p.suffix == ".npy":
            array = np.load(p, allow_pickle=False)  # never unpickle user files
            return {W_PLUS_KEY: torch.from_numpy(np.ascontiguousarray(array))}
        from safetensors.torch import load_file

        return load_file(str(p))
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise IdgenError(f"{what} is not readable ({first}): {p}") from None


def pick_code(
    tensors: dict[str, Tensor],
    key: str,
    num_layers: int,
    w_dim: int,
    what: str,
) -> Tensor:
    """tensors[key] as a float32 (L, D) code; one-line errors for a missing key, a wrong shape or values
    that are not finite."""
    if key not in tensors:
        keys = ", ".join(sorted(tensors)[:5]) or "none"
        raise IdgenError(f"{what} has no tensor {key!r} (it has: {keys})")
    w = tensors[key]
    if not w.is_floating_point():
        raise IdgenError(f"{what} must hold floats, got {w.dtype}")
    batched = check_w_plus(w.float(), num_layers, w_dim, what)  # (B, L, D)
    if batched.shape[0] != 1:
        raise IdgenError(f"{what} holds {batched.shape[0]} codes; give one code per file")
    if not torch.isfinite(batched).all():
        raise IdgenError(f"{what} holds NaN or infinite values")
    return batched[0]  # (L, D)


def read_w_plus(
    path: str | os.PathLike[str],
    num_layers: int = W_PLUS_LAYERS,
    w_dim: int = W_DIM,
    key: str = W_PLUS_KEY,
    what: str = "W+ code",
) -> Tensor:
    """One (L, D) float32 code from a .safetensors ("w_plus") or .npy file."""
    tensors = read_tensors(path, what)  # its messages name the file already
    return pick_code(tensors, key, num_layers, w_dim, f"{what} {path}")


def read_direction(path: str | os.PathLike[str], num_layers: int, w_dim: int) -> Tensor:
    """An edit direction: (D,) for every chosen layer, or W+-shaped (L, D) / (1, L, D)."""
    tensors = read_tensors(path, "edit direction")
    what = f"edit direction {path}"
    direction = tensors.get(W_PLUS_KEY, tensors.get("direction"))
    if direction is None:
        raise IdgenError(f"{what} has no tensor 'w_plus' or 'direction'")
    if direction.dim() == 1:
        if direction.shape[0] != w_dim:
            raise IdgenError(f"{what} has width {direction.shape[0]}, W+ layers are {w_dim} wide")
        return direction.float()
    return pick_code({W_PLUS_KEY: direction}, W_PLUS_KEY, num_layers, w_dim, what)


def write_w_plus(path: str | os.PathLike[str], w: Tensor) -> Path:
    """Write a code atomically: .safetensors as {"w_plus": w}, .npy as a plain array."""
    p = Path(path)
    if p.suffix not in CODE_SUFFIXES:
        raise IdgenError(f"output code must end in .safetensors or .npy, got {p.name}")
    w = w.detach().contiguous().cpu()
    with atomic_output(p) as tmp:
        if p.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, w.numpy(), allow_pickle=False)
        else:
            from safetensors.torch import save_file

            save_file({W_PLUS_KEY: w}, str(tmp))
    return p


@dataclass(frozen=True)
class WPlusEdit:
    """What `idgen edit` does, in order: swap/mix layers with `other`, then add `direction`."""

    other: Tensor | None = None  # (L, D)
    mix_layers: str | None = None
    mix_alpha: float = 1.0  # 1 = swap the layers in from `other`
    direction: Tensor | None = None  # (D,) or (L, D)
    direction_layers: str = "all"
    direction_alpha: float = 1.0


def apply_edit(w: Tensor, edit: WPlusEdit, num_layers: int = W_PLUS_LAYERS, w_dim: int = W_DIM) -> Tensor:
    """w (L, D) | (B, L, D) -> the edited code, same shape."""
    sizes: dict[str, Any] = dict(num_layers=num_layers, w_dim=w_dim)
    if (edit.other is None) != (edit.mix_layers is None):
        raise IdgenError("swapping or mixing layers needs both another code and a layer selection")
    if edit.other is not None and edit.mix_layers is not None:
        w = mix(w, edit.other, edit.mix_layers, edit.mix_alpha, **sizes)
    if edit.direction is not None:
        w = add_direction(w, edit.direction, edit.direction_layers, edit.direction_alpha, **sizes)
    return w


def check_layers(spec: str, num_layers: int, option: str) -> str:
    """Parse early so a bad selection is reported with the option that holds it."""
    try:
        parse_layers(spec, num_layers)
    except IdgenError as e:
        raise IdgenError(f"{option}: {e}") from None
    return spec


@torch.no_grad()
def generate_with_code(
    pipe: Any,
    adapter: Any,
    w: Tensor,
    prompt: str,
    *,
    seed: int = 0,
    **generate_kwargs: Any,
) -> Any:
    """One image of code `w` (L, D) with an SD1.5 pipeline and a W+ adapter; the branch is removed after."""
    from idgen.backbones.sd15 import install_wplus
    from idgen.pipelines.pidiff_sd15 import generate

    injector = install_wplus(pipe.unet, adapter)
    try:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        return generate(pipe, injector, w, prompt, generator=generator, **generate_kwargs).images[0]
    finally:
        injector.remove()
