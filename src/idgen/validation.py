"""Checks that run before any model loads or any file is written; each failure is one IdgenError line.

Numbers: finite and in range (NaN and inf are refused: `x < 0` lets NaN through). Sizes: the model's own
pixel multiple and a pixel limit. Paths: inputs exist, outputs are writable, never a folder and never one
of the inputs, and existing outputs are replaced only when asked.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

from idgen.errors import IdgenError

MAX_PIXELS = 4096 * 4096  # 16.8 MP: 16x FLUX.1's native 1 MP; larger sizes exhaust memory before step one
MAX_SIDE = 8192
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's range
MAX_SHOWN = 200  # characters of a user's value shown in a message


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """`value` as a message shows it: control characters escaped, long values cut with their length."""
    text = value if isinstance(value, str) else str(value)
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def finite(name: str, value: float | None, *, low: float | None = None, high: float | None = None) -> None:
    """`value` (if given) is a finite number in [low, high]."""
    if value is None:
        return
    if not math.isfinite(value):
        raise IdgenError(f"{name} must be a finite number, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise IdgenError(f"{name} must be {_range(low, high)}, got {value}")


def integer(name: str, value: int | None, *, low: int | None = None, high: int | None = None) -> None:
    """`value` (if given) is an integer in [low, high]."""
    if value is None:
        return
    if (low is not None and value < low) or (high is not None and value > high):
        raise IdgenError(f"{name} must be {_range(low, high)}, got {value}")


def _range(low: float | None, high: float | None) -> str:
    if high is None:
        return f">= {low}"
    if low is None:
        return f"<= {high}"
    return f"in [{low}, {high}]"


def seed(name: str, value: int | None) -> None:
    integer(name, value, low=0, high=MAX_SEED)


def image_size(
    width: int | None, height: int | None, defaults: tuple[int, int], multiple: int
) -> tuple[int, int]:
    """The (width, height) a generation will have; only the values the user gave are named in an error."""
    for name, value in (("--width", width), ("--height", height)):
        if value is not None and (value <= 0 or value % multiple):
            raise IdgenError(f"{name} must be a positive multiple of {multiple} for this model, got {value}")
        if value is not None and value > MAX_SIDE:
            raise IdgenError(f"{name} must be at most {MAX_SIDE}, got {value}")
    size = (defaults[0] if width is None else width, defaults[1] if height is None else height)
    if size[0] * size[1] > MAX_PIXELS:
        raise IdgenError(
            f"{size[0]}x{size[1]} is {size[0] * size[1]} pixels, over the limit of {MAX_PIXELS} (4096x4096)"
        )
    return size


def input_file(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise IdgenError(f"{what} not found: {shown(p)}")
    if p.is_dir():
        raise IdgenError(f"{what} is a folder, not a file: {shown(p)}")
    return p


def output_file(
    path: str | os.PathLike[str],
    what: str,
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    overwrite: bool = False,
) -> Path:
    """An output file we may write: not a folder, its folder creatable and writable, not one of `inputs`,
    and new unless `overwrite`."""
    p = Path(path)
    if p.is_dir():
        raise IdgenError(f"{what} is a folder: {shown(p)}")
    for source in inputs:
        if source is not None and _same_file(p, Path(source)):
            raise IdgenError(f"{what} {shown(p)} is also an input; choose another output path")
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise IdgenError(f"{what} {shown(p)} exists; pass --overwrite to replace it")
    writable_folder(p.parent, what)
    return p


def output_folder(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise IdgenError(f"{what} is a file, not a folder: {shown(p)}")
    writable_folder(p, what)
    return p


def writable_folder(folder: Path, what: str) -> None:
    """`folder` exists or can be created (no file in the way) and is writable."""
    existing = folder
    while not existing.exists():
        if existing.is_symlink():
            raise IdgenError(f"cannot create the folder of {what}: {shown(existing)} is a broken link")
        existing = existing.parent
    if not existing.is_dir():
        raise IdgenError(f"cannot write {what}: {shown(existing)} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK) or not _can_create_in(existing):
        raise IdgenError(f"cannot write {what}: no write permission in {shown(existing)}")


def _can_create_in(folder: Path) -> bool:
    """Whether a file can really be made there (root passes os.access on read-only and virtual file
    systems); the probe is removed at once."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".idgen-probe-"):
            return True
    except OSError:
        return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def device(name: str | None) -> str:
    """The device to run on: `name`, or cuda when there is one, else cpu. A device that is not there is
    refused before anything loads."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(name)
    except (RuntimeError, ValueError):
        raise IdgenError(f"unknown device {shown(name)!r}; e.g. cpu, cuda, cuda:1, mps") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise IdgenError(f"--device {shown(name)}: CUDA is not available on this machine")
        if chosen.index is not None and chosen.index >= count:
            raise IdgenError(f"--device {shown(name)}: this machine has {count} CUDA device(s)")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise IdgenError(f"--device {shown(name)}: MPS is not available on this machine")
    return name


def flux_pixel_multiple(folder: str | os.PathLike[str] | None, fallback: int = 16) -> int:
    """Pixels per latent token side of the FLUX pipeline in `folder`, read from its VAE's config as
    diffusers does (2 ** (blocks - 1) per latent pixel, then 2x2 packing); `fallback` when unreadable."""
    config = Path(folder) / "vae" / "config.json" if folder is not None else None
    if config is None or not config.is_file():
        return fallback
    import json

    try:
        blocks = json.loads(config.read_text())["block_out_channels"]
        return int(2 ** (len(blocks) - 1) * 2)
    except (ValueError, KeyError, TypeError) as e:
        raise IdgenError(f"unreadable VAE config {shown(config)}: {shown(e)}") from None


def mask_image_size(path: str | os.PathLike[str], size: tuple[int, int]) -> None:
    """A mask picture must have the image's aspect ratio: it is resized to the token grid, and stretching
    it would move the region it marks."""
    from PIL import Image, UnidentifiedImageError

    input_file(path, "mask image")
    try:
        with Image.open(path) as im:
            mw, mh = im.size
    except (UnidentifiedImageError, OSError) as e:
        raise IdgenError(f"mask image is not a readable image file: {shown(path)}") from e
    width, height = size
    if mw * height != mh * width:
        raise IdgenError(
            f"mask image is {mw}x{mh} but the image is {width}x{height}; a mask must have the image's aspect "
            f"ratio (it is scaled to the token grid, never stretched)"
        )
