import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idgen.errors import IdgenError
from idgen.io import (
    atomic_folder,
    atomic_output,
    atomic_save_image,
    atomic_write_bytes,
    atomic_write_text,
    file_sha256,
    load_image,
    umask_file_mode,
    widen_to_umask,
)


def _png(path: Path, image: Image.Image, **kw) -> Path:
    image.save(path, format="PNG", **kw)
    return path


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- load_image: bad inputs give a one-line IdgenError naming the file --------------------------


def _bad_cases(tmp_path: Path) -> dict[str, tuple[Path, dict, str]]:
    cases: dict[str, tuple[Path, dict, str]] = {}
    cases["missing"] = (tmp_path / "missing.png", {}, "not found")
    (tmp_path / "folder.png").mkdir()
    cases["directory"] = (tmp_path / "folder.png", {}, "is a directory")
    (tmp_path / "notes.png").write_text("hello, not an image\n")
    cases["not an image"] = (tmp_path / "notes.png", {}, "not a readable image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    cases["empty"] = (tmp_path / "empty.jpg", {}, "empty file")
    full = tmp_path / "full.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full, quality=95)
    data = full.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (tmp_path / "truncated.jpg", {}, "corrupt or truncated")
    # A PPM header claiming 9000x9000: refused from the header, before any decoding.
    (tmp_path / "huge.ppm").write_bytes(b"P6\n9000 9000\n255\n")
    cases["too large"] = (tmp_path / "huge.ppm", {}, "too large (9000x9000")
    # 20000x20000 is over Pillow's own bomb limit even when our limit is raised.
    (tmp_path / "bomb.ppm").write_bytes(b"P6\n20000 20000\n255\n")
    cases["bomb"] = (tmp_path / "bomb.ppm", {"max_pixels": 10**10}, "too large")
    small = _png(tmp_path / "small.png", Image.new("RGB", (20, 10)))
    cases["over max_pixels"] = (small, {"max_pixels": 199}, "too large (20x10 = 200 pixels, limit 199)")
    return cases


@pytest.mark.parametrize(
    "case",
    ["missing", "directory", "not an image", "empty", "truncated", "too large", "bomb", "over max_pixels"],
)
def test_load_image_bad_inputs(tmp_path: Path, case: str) -> None:
    path, kwargs, expected = _bad_cases(tmp_path)[case]
    with pytest.raises(IdgenError) as info:
        load_image(path, what="id image", **kwargs)
    message = str(info.value)
    assert expected in message
    assert path.name in message
    assert message.startswith("id image") or "id image" in message
    assert "\n" not in message


def test_load_image_exact_max_pixels_is_allowed(tmp_path: Path) -> None:
    path = _png(tmp_path / "small.png", Image.new("RGB", (20, 10), (1, 2, 3)))
    image = load_image(path, max_pixels=200)
    assert image.size == (20, 10) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == (1, 2, 3)


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    # 4 wide x 2 high, red top-left pixel; orientation 6 = "rotate 90 degrees clockwise to view".
    image = Image.new("RGB", (4, 2), (0, 0, 255))
    image.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _png(tmp_path / "rotated.png", image, exif=exif.tobytes())
    loaded = load_image(path)
    assert loaded.size == (2, 4)
    # Clockwise rotation takes the top-left corner to the top-right.
    assert loaded.getpixel((1, 0)) == (255, 0, 0)
    assert loaded.getpixel((0, 0)) == (0, 0, 255)


def test_load_image_rgba_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red -> white
    image.putpixel((1, 0), (0, 0, 0, 255))  # opaque black stays black
    image.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black -> mid grey
    loaded = load_image(_png(tmp_path / "alpha.png", image))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 0)) == (0, 0, 0)
    assert loaded.getpixel((2, 0)) == (127, 127, 127)


def test_load_image_other_modes_to_rgb(tmp_path: Path) -> None:
    grey = load_image(_png(tmp_path / "l.png", Image.new("L", (2, 2), 77)))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (77, 77, 77)

    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    loaded = load_image(_png(tmp_path / "p.png", palette))
    assert [loaded.getpixel((x, 0)) for x in range(2)] == [(10, 20, 30), (200, 100, 50)]

    palette.info["transparency"] = 0  # entry 0 transparent -> white
    loaded = load_image(_png(tmp_path / "pt.png", palette, transparency=0))
    assert [loaded.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (200, 100, 50)]

    cmyk = Image.new("CMYK", (2, 2), (0, 0, 0, 0))  # no ink = white
    cmyk.save(tmp_path / "c.jpg")
    loaded = load_image(tmp_path / "c.jpg")
    assert loaded.mode == "RGB"
    assert all(v >= 250 for v in loaded.getpixel((0, 0)))

    deep = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))  # 16-bit white stays white
    loaded = load_image(_png(tmp_path / "i16.png", deep))
    assert loaded.getpixel((0, 0)) == (255, 255, 255)


def _png16_rgb(path: Path, rgb: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one), built chunk by chunk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    data = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    return path


def test_load_image_16_bit(tmp_path: Path) -> None:
    # Colour: Pillow keeps the high byte (what PuLID's demo gets too): 0x12ff -> 0x12.
    rgb = np.array([[[0x12FF, 0xFFFF, 0x0080]]], dtype=np.uint16)
    loaded = load_image(_png16_rgb(tmp_path / "rgb16.png", rgb))
    assert loaded.mode == "RGB" and loaded.getpixel((0, 0)) == (0x12, 0xFF, 0x00)
    # Greyscale: scaled by 255/65535 and rounded (Pillow's own convert would clip 300 to 255).
    grey = Image.fromarray(np.array([[300, 32768, 65535, 0]], dtype=np.uint16))
    loaded = load_image(_png(tmp_path / "grey16.png", grey))
    assert [loaded.getpixel((x, 0)) for x in range(4)] == [(1, 1, 1), (128, 128, 128), (255,) * 3, (0, 0, 0)]


def test_load_image_alpha_drop_keeps_the_stored_colour(tmp_path: Path) -> None:
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (255, 0, 0, 0))  # transparent red stays red (PuLID's demo, facexlib)
    image.putpixel((1, 0), (0, 0, 0, 255))
    image.putpixel((2, 0), (10, 20, 30, 128))
    path = _png(tmp_path / "alpha.png", image)
    loaded = load_image(path, alpha="drop")
    assert [loaded.getpixel((x, 0)) for x in range(3)] == [(255, 0, 0), (0, 0, 0), (10, 20, 30)]
    assert load_image(path).getpixel((0, 0)) == (255, 255, 255)  # the default composites on white
    la = Image.new("LA", (1, 1), (40, 0))
    assert load_image(_png(tmp_path / "la.png", la), alpha="drop").getpixel((0, 0)) == (40, 40, 40)
    palette = Image.new("P", (1, 1), 0)
    palette.putpalette([10, 20, 30] + [0] * 765)
    loaded = load_image(_png(tmp_path / "pt.png", palette, transparency=0), alpha="drop")
    assert loaded.getpixel((0, 0)) == (10, 20, 30)
    with pytest.raises(ValueError, match="alpha"):
        load_image(path, alpha="black")  # type: ignore[arg-type]


def test_load_image_accepts_str_and_keeps_no_file_open(tmp_path: Path) -> None:
    path = _png(tmp_path / "a.png", Image.new("RGB", (3, 3), (9, 9, 9)))
    image = load_image(str(path))
    os.remove(path)  # the data was read fully: the image still works
    assert image.getpixel((2, 2)) == (9, 9, 9)


# --- atomic writes -------------------------------------------------------------------------------


def test_atomic_write_bytes_and_text(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.bin"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    atomic_write_bytes(target, b"new")  # replaces
    assert target.read_bytes() == b"new"
    text = tmp_path / "t" / "x.json"
    atomic_write_text(text, "é\nline2\n")
    assert text.read_bytes() == "é\nline2\n".encode()
    assert _only(target.parent) == ["out.bin"]
    assert _only(text.parent) == ["x.json"]


def test_atomic_write_respects_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


def test_a_model_folder_gets_the_umasks_permissions_like_any_file(tmp_path: Path) -> None:
    # safetensors' save_file writes through its own 0o600 temp file; the saved weights must not keep that.
    from idgen.models.checkpoint import save_model_folder

    old = os.umask(0o022)
    try:
        save_model_folder(torch.nn.Linear(2, 2), tmp_path / "m", {})
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert modes == {"model.safetensors": 0o644, "config.json": 0o644}


def test_widen_to_umask_adds_what_the_umask_allows_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    narrow, tool, private = tmp_path / "sub" / "w.safetensors", tmp_path / "run.sh", tmp_path / "kept"
    for path, mode in ((narrow, 0o600), (tool, 0o700), (private, 0o600)):
        path.write_bytes(b"x")
        os.chmod(path, mode)
    (tmp_path / "link").symlink_to(private)
    old = os.umask(0o022)
    try:
        assert umask_file_mode(tmp_path) == 0o644
        widen_to_umask([tmp_path / "sub", tool, tmp_path / "link"])
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (narrow, tool, private)}
    assert modes == {"w.safetensors": 0o644, "run.sh": 0o744, "kept": 0o600}  # a link is not followed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "link", "run.sh", "sub"]  # no probe left


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_atomic_folder_replaces_the_old_folder_whole_and_readable(tmp_path: Path) -> None:
    target = tmp_path / "vae"
    target.mkdir()
    (target / "stale.json").write_text("old")
    old = os.umask(0o022)
    try:
        with atomic_folder(target) as staging:
            assert staging.parent == tmp_path and list(staging.iterdir()) == []
            (staging / "weights").write_text("new")
            os.chmod(staging / "weights", 0o600)  # as safetensors' own temp file leaves it
    finally:
        os.umask(old)
    assert _tree(target) == {"weights": "new"}
    assert (target / "weights").stat().st_mode & 0o777 == 0o644
    assert _only(tmp_path) == ["vae"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_folder_interrupted_keeps_the_old_folder(tmp_path: Path, error: type[BaseException]) -> None:
    target = tmp_path / "flux"
    target.mkdir()
    (target / "model_index.json").write_text("old")
    with pytest.raises(error), atomic_folder(target) as staging:
        (staging / "model_index.json").write_text("half")
        raise error("writer died")
    assert _tree(target) == {"model_index.json": "old"}
    assert _only(tmp_path) == ["flux"]


def test_atomic_folder_puts_back_a_folder_a_kill_left_aside(tmp_path: Path) -> None:
    # A kill between the swap's two renames: the old folder aside, the new one still staged.
    for name, text in ((".flux.old", "old"), (".flux.tmp", "half")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text(text)
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "flux"):
        raise RuntimeError("writer died")
    assert _only(tmp_path) == ["flux"]
    assert _tree(tmp_path / "flux") == {"model_index.json": "old"}


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_output_interrupted_leaves_nothing(tmp_path: Path, error: type[BaseException]) -> None:
    target = tmp_path / "out.safetensors"
    with pytest.raises(error), atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".safetensors"
        tmp.write_bytes(b"partial")
        raise error("writer died")
    assert _only(tmp_path) == []


def test_atomic_output_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(ValueError), atomic_output(target) as tmp:
        tmp.write_text("new but broken")
        raise ValueError("no")
    assert target.read_text() == "old"
    assert _only(tmp_path) == ["keep.txt"]


def test_atomic_output_with_pil_gif_writer(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in [(255, 0, 0), (0, 255, 0)]]
    target = tmp_path / "sub" / "anim.gif"
    with atomic_output(target) as tmp:
        frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=50)  # format from suffix
    with Image.open(target) as gif:
        assert gif.format == "GIF" and gif.n_frames == 2
    assert _only(target.parent) == ["anim.gif"]


def test_atomic_save_image_round_trip_and_failures(tmp_path: Path) -> None:
    image = Image.new("RGB", (5, 4), (1, 200, 3))
    atomic_save_image(image, tmp_path / "x.png")
    assert load_image(tmp_path / "x.png").getpixel((4, 3)) == (1, 200, 3)
    atomic_save_image(image, tmp_path / "noext", format="PNG")
    with Image.open(tmp_path / "noext") as saved:
        assert saved.format == "PNG"

    with pytest.raises(IdgenError, match="image format"):
        atomic_save_image(image, tmp_path / "y.unknownext")
    # A failing writer: JPEG cannot store RGBA.
    with pytest.raises(OSError):
        atomic_save_image(Image.new("RGBA", (2, 2)), tmp_path / "z.jpg")
    assert _only(tmp_path) == ["noext", "x.png"]


def test_file_sha256_reads_the_file_in_blocks_and_gives_its_hex_digest(tmp_path):
    small = tmp_path / "abc.bin"
    small.write_bytes(b"abc")
    assert file_sha256(small) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    large = tmp_path / "large.bin"  # over one 1 MiB block, so the blocks must join seamlessly
    large.write_bytes(bytes(range(256)) * 5000)
    assert file_sha256(large) == hashlib.sha256(bytes(range(256)) * 5000).hexdigest()
