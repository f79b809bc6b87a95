"""Contact sheets for eyeballing the demo world: `python -m idgen.world.preview [out_dir]`."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from idgen.world.render import (
    BACKGROUNDS,
    Render,
    Scene,
    render,
    render_reference,
    train_identities,
)


def _grid(tiles: list[np.ndarray], cols: int, scale: int, pad: int = 2) -> Image.Image:
    rows = math.ceil(len(tiles) / cols)
    h, w = tiles[0].shape[:2]
    sheet = np.full((rows * (h * scale + pad) + pad, cols * (w * scale + pad) + pad, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        big = np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)  # nearest: shows the true pixels
        y, x = pad + r * (h * scale + pad), pad + c * (w * scale + pad)
        sheet[y : y + h * scale, x : x + w * scale] = big
    return Image.fromarray(sheet)


def mask_overlay(r: Render, alpha: float = 0.55) -> np.ndarray:
    """The image with the face mask tinted green and the face box outlined in red."""
    img = r.image.astype(np.float32)
    img[r.face_mask] = (1 - alpha) * img[r.face_mask] + alpha * np.array([0, 255, 0], np.float32)
    out = img.astype(np.uint8)
    left, top, right, bottom = r.face_box
    if right > left:
        out[top, left:right] = out[bottom - 1, left:right] = (255, 0, 0)
        out[top:bottom, left] = out[top:bottom, right - 1] = (255, 0, 0)
    return out


def contact_sheet(n: int = 16, seed: int = 0, scale: int = 3) -> Image.Image:
    """`n` random training identities, each in a random scene (seeded), on a square-ish grid."""
    rng = np.random.default_rng(seed)
    ids = train_identities()
    tiles = []
    for i in range(n):
        ident = ids[int(rng.integers(len(ids)))]
        tiles.append(render(ident, Scene.random(rng), seed=seed * 1000 + i).image)
    return _grid(tiles, math.ceil(math.sqrt(n)), scale)


def scenes_sheet(seed: int = 0, scale: int = 3) -> Image.Image:
    """One identity in every background, close-up and half-body, neutral light."""
    ident = train_identities()[seed % 1000]
    tiles = []
    for framing in (0, 1):
        for b in range(len(BACKGROUNDS)):
            scene = Scene(background=b, clothing_colour=b % 11, lighting=0, framing=framing, position=1)
            tiles.append(render(ident, scene, seed=seed).image)
    return _grid(tiles, len(BACKGROUNDS), scale)


def reference_sheet(n: int = 8, seed: int = 0, scale: int = 3) -> Image.Image:
    """Reference photos (top row) and their face masks (bottom row)."""
    ids = train_identities()
    refs = [render_reference(ids[(seed + 7 * i) % len(ids)], seed=seed + i) for i in range(n)]
    return _grid([r.image for r in refs] + [mask_overlay(r) for r in refs], n, scale)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "/tmp")
    out.mkdir(parents=True, exist_ok=True)
    contact_sheet().save(out / "world_sheet.png")
    scenes_sheet().save(out / "world_scenes.png")
    reference_sheet().save(out / "world_references.png")
    print(f"wrote {out}/world_sheet.png, world_scenes.png, world_references.png")


if __name__ == "__main__":
    main()
