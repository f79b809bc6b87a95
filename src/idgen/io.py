"""Image loading with one-line errors, and atomic file writes (no partial outputs on failure)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from idgen.errors import IdgenError

__all__ = [
    "atomic_folder",
    "atomic_output",
    "atomic_save_image",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_image",
]

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_INT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


def load_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = 64_000_000,
    what: str = "image",
    alpha: Literal["white", "drop"] = "white",
) -> Image.Image:
    """Read an image file fully into memory as RGB, upright according to its EXIF orientation.

    alpha: "white" composites transparent pixels on white; "drop" discards the alpha channel and keeps
        the colour stored under it, as PuLID's demo (Pillow's convert("RGB")) and facexlib do.
    16-bit greyscale is scaled by 255/65535 (facexlib's arithmetic), not clipped; 16-bit colour PNGs
    are read by Pillow at 8 bits (the high byte), as in PuLID's demo. Photos over `max_pixels` are
    refused from the header, before any decoding.
    Every failure is an IdgenError whose one-line message names `what` and the file.
    """
    if alpha not in ("white", "drop"):
        raise ValueError(f"alpha must be 'white' or 'drop', got {alpha!r}")
    p = Path(path)
    _check_file(p, what)
    try:
        with Image.open(p) as im:
            # The header gives the size; refuse huge images before decoding any pixel data.
            width, height = im.size
            if width <= 0 or height <= 0:
                raise IdgenError(f"{what} has zero size ({width}x{height}): {p}")
            if width * height > max_pixels:
                raise IdgenError(
                    f"{what} is too large ({width}x{height} = {width * height} pixels, "
                    f"limit {max_pixels}): {p}"
                )
            im.load()  # force a full decode so truncated/corrupt data fails here, not later
            return _to_rgb(ImageOps.exif_transpose(im), alpha)
    except IdgenError:
        raise
    except Image.DecompressionBombError as e:
        raise IdgenError(f"{what} is too large (over Pillow's decompression-bomb limit): {p}") from e
    except UnidentifiedImageError as e:
        raise IdgenError(f"{what} is not a readable image file: {p}") from e
    except PermissionError as e:
        raise IdgenError(f"cannot read {what} (permission denied): {p}") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated or corrupt data as OSError / SyntaxError / ValueError.
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise IdgenError(f"{what} is corrupt or truncated ({msg}): {p}") from e


def _check_file(p: Path, what: str) -> None:
    """One-line errors for a path that is missing, a folder, unreadable or empty."""
    if not p.exists():
        raise IdgenError(f"{what} not found: {p}")
    if p.is_dir():
        raise IdgenError(f"{what} is a directory, not an image file: {p}")
    try:
        size_bytes = p.stat().st_size
    except OSError as e:
        raise IdgenError(f"cannot read {what} {p}: {e.strerror or e}") from e
    if size_bytes == 0:
        raise IdgenError(f"{what} is an empty file (0 bytes): {p}")


def _to_rgb(im: Image.Image, alpha: str = "white") -> Image.Image:
    """Convert any Pillow mode to RGB; transparent pixels become white, or keep their colour ("drop")."""
    if alpha == "white" and (im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info)):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in _INT_MODES or im.mode == "F":
        return _deep_grey_to_rgb(im)
    if im.mode != "RGB":
        return im.convert("RGB")
    return im.copy()  # detach from the (closed) file object


def _deep_grey_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit / float greyscale: Pillow's convert would clip to 255. Integer images whose maximum is
    over 256 are scaled by 255/65535, as facexlib's read_image does, then rounded."""
    arr = np.asarray(im, dtype=np.float64)
    if im.mode != "F" and arr.size and arr.max() > 256:
        arr = arr / 65535 * 255
    grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


# ---------------------------------------------------------------------------------------------
# Atomic writes: write a temp file next to the target, fsync, then os.replace. A crash or an
# exception leaves either the old file or the new one, never a partial file or a stray temp.


def _new_temp_path(path: Path) -> Path:
    """Create (exclusively) an empty temp file next to `path`, keeping its suffix for format sniffing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}")
        try:
            # 0o666 lets the umask decide the final permissions, like a plain open() would.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise IdgenError(f"cannot create a temporary file next to {path}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not supported everywhere (e.g. Windows), so best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path in the target's directory; on success it replaces `path`, on error it is removed.

    For writers that want a file name (PIL GIF saving, safetensors.save_file, ...). The temp path keeps
    the target's suffix so writers that infer a format from it behave the same.
    """
    target = Path(path)
    tmp = _new_temp_path(target)
    mode = stat.S_IMODE(tmp.stat().st_mode)  # what the umask made of 0o666
    try:
        yield tmp
        _fsync_file(tmp)
        # Some writers replace the file with their own temp file (safetensors' save_file leaves 0o600).
        if stat.S_IMODE(tmp.stat().st_mode) != mode:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty folder beside `path`; on success it replaces `path`, on error it is removed.

    For writers of whole folders (`save_pretrained`). Its files get at least the umask's permissions
    (`widen_to_umask`). The old folder is moved aside before the new one moves in and removed after, so
    a kill leaves the old folder, the new one, or the old one aside, which the next call puts back.
    """
    target = Path(path)
    staging = target.with_name(f".{target.name}.tmp")
    aside = target.with_name(f".{target.name}.old")
    if not target.exists() and aside.is_dir():
        aside.rename(target)  # a swap killed between its two renames
    for stale in (staging, aside):
        if stale.exists():
            shutil.rmtree(stale)
    staging.mkdir(parents=True)
    try:
        yield staging
        widen_to_umask([staging])
        if target.exists():
            target.rename(aside)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if aside.exists():
        shutil.rmtree(aside)
    _fsync_dir(target.parent)


def umask_file_mode(directory: str | os.PathLike[str]) -> int:
    """What the umask makes of 0o666 for a new file in `directory`, read off a probe file (reading the
    process umask means setting it, which races other threads)."""
    probe = _new_temp_path(Path(directory) / "umask-probe")
    try:
        return stat.S_IMODE(probe.stat().st_mode)
    finally:
        _remove_quietly(probe)


def widen_to_umask(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Give each file under `paths` (files, or folders walked) at least the permissions the umask gives a
    new file. Writers with their own temp files (safetensors' save_file, hence diffusers' and transformers'
    save_pretrained) leave 0o600 whatever the umask, so a saved folder would be unreadable to other users."""
    mode: int | None = None
    for root in map(Path, paths):
        walked = [root] if root.is_file() else sorted(root.rglob("*"))
        files = [p for p in walked if p.is_file() and not p.is_symlink()]  # never chmod through a link
        for path in files:
            mode = umask_file_mode(path.parent) if mode is None else mode
            current = stat.S_IMODE(path.stat().st_mode)
            if current | mode != current:
                os.chmod(path, current | mode)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks (shipped files are checked against these)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically (creating parent folders)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically; no newline translation, so files are identical across OSes."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_save_image(image: Image.Image, path: str | os.PathLike[str], **save_kwargs: Any) -> None:
    """`image.save(path, **save_kwargs)`, atomically. The format comes from the suffix unless given."""
    target = Path(path)
    fmt = save_kwargs.pop("format", None)
    if fmt is None:
        fmt = Image.registered_extensions().get(target.suffix.lower())
        if fmt is None:
            raise IdgenError(
                f"cannot tell the image format from the file name (use .png, .jpg, ...): {target}"
            )
    with atomic_output(target) as tmp, open(tmp, "wb") as f:
        image.save(f, format=fmt, **save_kwargs)
        f.flush()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: Path, what: str, name: str = ".lock") -> Iterator[None]:
    """Hold `folder/<name>` while a long job writes into `folder`; a second live `what` there is a one-line
    error. A lock left by a dead process on this machine is taken over (a killed job resumes)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    me = f"{socket.gethostname()} {os.getpid()}\n"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = path.read_text(errors="replace").split()
            host, pid = ([*holder, "?", "0"])[:2]
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise IdgenError(
                f"another {what} (process {pid} on {host}) is using {folder}; wait for it to finish, "
                f"or delete {path} if that run is gone"
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if path.read_text() == me:
                path.unlink()
