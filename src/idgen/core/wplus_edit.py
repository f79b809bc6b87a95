"""Editing identities in StyleGAN2's W+ space: pure tensor maths, no models.

A W+ code is (L, D) or (B, L, D): one D-wide style vector per generator layer (FFHQ 1024 px:
L = 18, D = 512). Early layers steer coarse traits (pose, face shape, expression), later ones
fine traits (colour, texture, lighting), so editing or swapping only some layers changes only
those traits.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from idgen.errors import IdgenError

W_PLUS_LAYERS = 18
W_DIM = 512
COARSE_END = 8  # layers 0-7 are "coarse", 8 and up "fine" (as in the W+ adapter's editing code)

LayerSpec = str | int | Iterable[int]


def named_layers(name: str, num_layers: int = W_PLUS_LAYERS) -> tuple[int, ...]:
    """The layers of a named range: coarse (0-7), fine (8 to the end) or all."""
    if name == "coarse":
        return tuple(range(min(COARSE_END, num_layers)))
    if name == "fine":
        return tuple(range(COARSE_END, num_layers))
    if name == "all":
        return tuple(range(num_layers))
    raise IdgenError(f"unknown W+ layer name {name!r}; use coarse, fine, all or ranges like '0-3,8'")


def _check_index(index: int, num_layers: int) -> int:
    if not 0 <= index < num_layers:
        raise IdgenError(f"W+ layer {index} is out of range 0-{num_layers - 1}")
    return index


def _parse_index(text: str, num_layers: int) -> int:
    try:
        index = int(text)
    except ValueError:
        raise IdgenError(f"W+ layer {text!r} is not a number") from None
    return _check_index(index, num_layers)


def parse_layers(spec: LayerSpec, num_layers: int = W_PLUS_LAYERS) -> tuple[int, ...]:
    """A layer selection -> sorted unique layer indices.

    spec: "coarse", "fine", "all", explicit ranges such as "0-3,8" (inclusive; names may be mixed
    in: "coarse,17"), one index, or an iterable of indices.
    """
    if isinstance(spec, int):
        spec = [spec]
    picked: set[int] = set()
    if not isinstance(spec, str):
        picked = {_check_index(int(i), num_layers) for i in spec}
    else:
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                raise IdgenError(f"empty item in W+ layer list {spec!r}")
            if part[0].isalpha():
                picked.update(named_layers(part, num_layers))
            elif "-" in part[1:]:  # a range; a leading "-" is a (bad) negative index, not a range
                dash = part.index("-", 1)
                start = _parse_index(part[:dash], num_layers)
                end = _parse_index(part[dash + 1 :], num_layers)
                if start > end:
                    raise IdgenError(f"W+ layer range {part!r} runs backwards")
                picked.update(range(start, end + 1))
            else:
                picked.add(_parse_index(part, num_layers))
    if not picked:
        raise IdgenError(f"W+ layer selection {spec!r} selects no layer")
    return tuple(sorted(picked))


def check_w_plus(
    w: Tensor, num_layers: int = W_PLUS_LAYERS, w_dim: int = W_DIM, what: str = "W+ code"
) -> Tensor:
    """Accept (L, D) or (B, L, D); return it as (B, L, D). Anything else is an IdgenError."""
    if not isinstance(w, Tensor):
        raise IdgenError(f"{what} must be a tensor, got {type(w).__name__}")
    batched = w.unsqueeze(0) if w.dim() == 2 else w
    if batched.dim() != 3 or tuple(batched.shape[1:]) != (num_layers, w_dim):
        raise IdgenError(
            f"{what} must have shape ({num_layers}, {w_dim}) or (B, {num_layers}, {w_dim}), "
            f"got {tuple(w.shape)}"
        )
    if not w.is_floating_point():
        raise IdgenError(f"{what} must be a float tensor, got {w.dtype}")
    return batched


def _layer_mask(layers: tuple[int, ...], num_layers: int, device: torch.device) -> Tensor:
    # (L, 1) bool: True on the chosen layers. torch.where keeps the other layers bit-exact.
    mask = torch.zeros(num_layers, 1, dtype=torch.bool, device=device)
    mask[list(layers)] = True
    return mask


def mix(
    w_a: Tensor,
    w_b: Tensor,
    layers: LayerSpec,
    alpha: float = 1.0,
    *,
    num_layers: int = W_PLUS_LAYERS,
    w_dim: int = W_DIM,
) -> Tensor:
    """w_a with the chosen layers moved towards w_b: (1 - alpha) * w_a + alpha * w_b there.

    alpha = 1 swaps those layers in from w_b (style mixing); 0 < alpha < 1 interpolates. The
    result has w_a's shape; a single (L, D) w_b is used for every row of a batched w_a.
    """
    a = check_w_plus(w_a, num_layers, w_dim, "first W+ code")
    b = check_w_plus(w_b, num_layers, w_dim, "second W+ code")
    if b.shape[0] not in (1, a.shape[0]):
        raise IdgenError(f"second W+ code has batch {b.shape[0]}, the first has batch {a.shape[0]}")
    mask = _layer_mask(parse_layers(layers, num_layers), num_layers, a.device)  # (L, 1)
    # lerp returns exactly b at alpha = 1, so a full swap copies w_b's layers bit for bit.
    mixed = torch.where(mask, torch.lerp(a, b.to(a.dtype), alpha), a)  # (B, L, D)
    return mixed.reshape(w_a.shape)


def add_direction(
    w: Tensor,
    direction: Tensor,
    layers: LayerSpec = "all",
    alpha: float = 1.0,
    *,
    num_layers: int = W_PLUS_LAYERS,
    w_dim: int = W_DIM,
) -> Tensor:
    """w + alpha * direction on the chosen layers only.

    direction: (D,) for one direction applied to each chosen layer, or a W+-shaped (L, D) /
    (1 | B, L, D) direction (its values on unchosen layers are ignored).
    """
    batched = check_w_plus(w, num_layers, w_dim)
    if not isinstance(direction, Tensor):
        raise IdgenError(f"edit direction must be a tensor, got {type(direction).__name__}")
    if direction.dim() == 1:
        if direction.shape[0] != w_dim:
            raise IdgenError(f"edit direction has width {direction.shape[0]}, W+ layers are {w_dim} wide")
        direction = direction.expand(num_layers, w_dim)
    step = check_w_plus(direction, num_layers, w_dim, "edit direction")
    if step.shape[0] not in (1, batched.shape[0]):
        raise IdgenError(
            f"edit direction has batch {step.shape[0]}, the W+ code has batch {batched.shape[0]}"
        )
    mask = _layer_mask(parse_layers(layers, num_layers), num_layers, batched.device)  # (L, 1)
    edited = torch.where(mask, batched + alpha * step.to(batched.dtype), batched)  # (B, L, D)
    return edited.reshape(w.shape)
