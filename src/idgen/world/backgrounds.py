"""Procedural backgrounds of the demo world: the caption-controlled scenes and the reference backdrops.

Each scene is one large texture, computed once (cached) at the renderer's supersampled resolution from a
fixed seed; a render crops it at a seed-dependent offset (the "pattern phase"), so two renders of the same
scene differ slightly while the scene stays recognisable. Every scene has a distinctive pattern *and* a
distinctive dominant colour, so both a pattern-blind colour statistic and a colour-blind classifier can
tell them apart.

Reference backdrops are plain, strongly coloured studio sweeps (a soft radial light falloff, no pattern)
that are deliberately absent from the scene list: when an identity model drags its reference's backdrop
along, the colour shift is measurable against any scene.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, lru_cache

import numpy as np

SIZE = 64  # final image side, pixels
SS = 4  # supersampling factor of the renderer
HI = SIZE * SS
# Texture size in final pixels: room for a horizontal phase of up to one image width and a small vertical one
# (scenes have horizons, which must stay roughly in place).
TEX_H, TEX_W = SIZE + 8, SIZE * 2

RGB = tuple[int, int, int]
_Texture = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]

SCENES: tuple[str, ...] = (
    "beach",
    "forest",
    "night city",
    "snow",
    "desert",
    "library",
    "office",
    "garden",
    "mountain",
    "underwater",
    "brick wall",
    "lavender field",
)

# Plain studio backdrops for reference photos: saturated, none of them the dominant colour of a scene.
REFERENCE_BACKDROPS: dict[str, RGB] = {
    "crimson": (205, 20, 60),
    "orange": (250, 120, 0),
    "yellow": (250, 215, 0),
    "lime": (130, 225, 20),
    "emerald": (0, 165, 95),
    "cyan": (0, 205, 235),
    "royal blue": (30, 60, 225),
    "violet": (135, 40, 225),
    "magenta": (230, 30, 185),
    "hot pink": (255, 105, 180),
}
BACKDROP_NAMES: tuple[str, ...] = tuple(REFERENCE_BACKDROPS)


def _c(rgb: tuple[float, float, float]) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32)


def _vgrad(y: np.ndarray, y0: float, y1: float, top: RGB, bottom: RGB) -> np.ndarray:
    """Vertical gradient from `top` at y0 to `bottom` at y1 (clamped)."""
    t = np.clip((y - y0) / (y1 - y0), 0.0, 1.0)[..., None]
    return (1 - t) * _c(top) + t * _c(bottom)


def _dots(
    out: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    n: int,
    r: tuple[float, float],
    colours: list[RGB],
    region: np.ndarray | None = None,
) -> None:
    """Scatter `n` filled discs (radius range `r`, final pixels) over the texture, in place."""
    h, w = TEX_H, TEX_W
    for _ in range(n):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rad = rng.uniform(*r)
        col = colours[int(rng.integers(len(colours)))]
        # Work on the disc's bounding box only: a full-texture test per dot would be slow.
        r0, r1 = max(int((cy - rad - 1) * SS), 0), min(int((cy + rad + 1) * SS), out.shape[0])
        c0, c1 = max(int((cx - rad - 1) * SS), 0), min(int((cx + rad + 1) * SS), out.shape[1])
        if r1 <= r0 or c1 <= c0:
            continue
        m = (x[r0:r1, c0:c1] - cx) ** 2 + (y[r0:r1, c0:c1] - cy) ** 2 <= rad * rad
        if region is not None:
            m &= region[r0:r1, c0:c1]
        out[r0:r1, c0:c1][m] = col


def _beach(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Horizontal bands: pale sky, blue sea with white wave crests, wide sand with darker speckles.
    out = _vgrad(y, 0, 22, (120, 190, 245), (185, 225, 250))
    sea_top = 21 + 0.6 * np.sin(x / 7.0)
    shore = 33 + 1.8 * np.sin(x / 6.0 + 1.0) + 0.8 * np.sin(x / 2.3)
    sea = (y >= sea_top) & (y < shore)
    out[sea] = _vgrad(y, 21, 33, (25, 95, 175), (40, 150, 200))[sea]
    crest = sea & (np.abs(((y - 0.5 * np.sin(x / 3.0)) % 4.0) - 2.0) < 0.35)
    out[crest] = (230, 245, 250)
    foam = (y >= shore - 0.9) & (y < shore)
    out[foam] = (245, 248, 250)
    sand = y >= shore
    out[sand] = (236, 212, 158)
    _dots(out, x, y, rng, 260, (0.3, 0.6), [(200, 170, 120), (215, 190, 140)], region=sand)
    # A sun in the sky, so the scene reads as a beach even when the sand is hidden behind a person.
    sun = (x % 64 - 52) ** 2 + (y - 7) ** 2 <= 16
    out[sun] = (255, 240, 170)
    return out


def _forest(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Dark green foliage with lighter leaf blobs, many vertical brown trunks, mossy ground.
    out = np.empty((*x.shape, 3), np.float32)
    out[:] = (28, 74, 38)
    _dots(out, x, y, rng, 220, (1.2, 3.0), [(45, 105, 50), (20, 58, 30), (60, 120, 55)])
    for _ in range(22):
        tx, tw = rng.uniform(0, TEX_W), rng.uniform(1.6, 4.5)
        shade = rng.uniform(0.75, 1.15)
        trunk = np.abs(x - tx - 0.4 * np.sin(y / 9.0)) < tw / 2
        out[trunk] = _c((92, 60, 34)) * shade
        bark = trunk & (np.abs(((y + tx) % 5.0) - 2.5) < 0.3)
        out[bark] = _c((60, 38, 22)) * shade
    ground = y > 58 + np.sin(x / 5.0)
    out[ground] = (52, 82, 36)
    return out


def _night_city(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Dark navy sky with stars; dark skyscrapers with grids of lit yellow windows.
    out = _vgrad(y, 0, TEX_H, (8, 10, 40), (30, 28, 70))
    _dots(out, x, y, rng, 40, (0.25, 0.45), [(230, 230, 255)])
    bx = 0.0
    while bx < TEX_W:
        bw = rng.uniform(7, 15)
        top = rng.uniform(6, 30)
        building = (x >= bx) & (x < bx + bw - 0.8) & (y >= top)
        out[building] = _c((32, 36, 58)) * rng.uniform(0.8, 1.2)
        # Windows: 1.5 px cells on a 3.5 px grid, each independently lit (seeded per building).
        cols = np.floor((x - bx - 1.0) / 3.5)
        rows = np.floor((y - top - 1.5) / 3.5)
        in_cell = (((x - bx - 1.0) % 3.5) < 1.6) & (((y - top - 1.5) % 3.5) < 1.6)
        lit_seed = int(rng.integers(1 << 30))
        h = ((cols * 73856093 + rows * 19349663 + lit_seed) % 1000) / 1000.0
        lit = building & in_cell & (x < bx + bw - 2.0) & (y > top + 1.0) & (h < 0.55)
        out[lit] = (255, 215, 110)
        bx += bw
    return out


def _snow(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # A snowy forest: grey-blue winter sky, dark pines capped with snow, white ground, falling snowflakes.
    out = _vgrad(y, 0, 40, (175, 195, 220), (210, 222, 236))
    for _ in range(9):
        tx, base, hgt = rng.uniform(0, TEX_W), rng.uniform(40, 46), rng.uniform(18, 30)
        top = base - hgt
        half = (y - top) / hgt * rng.uniform(5, 8)
        tree = (y >= top) & (y <= base) & (np.abs(x - tx) <= half)
        out[tree] = (30, 70, 55)
        cap = tree & ((((y - top) % 6.0) < 1.3) | (y < top + 2.5))
        out[cap] = (240, 245, 250)
    ground = y >= 42 + 1.2 * np.sin(x / 8.0)
    out[ground] = _vgrad(y, 42, TEX_H, (235, 240, 248), (250, 252, 255))[ground]
    _dots(out, x, y, rng, 420, (0.35, 0.8), [(255, 255, 255), (245, 248, 255)])
    return out


def _desert(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Hazy yellow sky with a white sun, layered orange dunes with wind ripples.
    out = _vgrad(y, 0, 24, (250, 232, 175), (245, 210, 150))
    sun = (x % 64 - 14) ** 2 + (y - 8) ** 2 <= 20
    out[sun] = (255, 250, 225)
    shades = [(228, 160, 80), (214, 138, 62), (236, 172, 92), (200, 120, 52)]
    for i, col in enumerate(shades):
        ridge = 20 + 10 * i + 4 * np.sin(x / (9.0 + 3 * i) + rng.uniform(0, 6.3))
        dune = y >= ridge
        out[dune] = col
        ripple = dune & (np.abs(((y - 0.8 * np.sin(x / 2.5)) % 3.0) - 1.5) < 0.25)
        out[ripple] = _c(col) * 0.9
    return out


def _library(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Wooden bookshelves: dark wood, shelf boards every 16 px, rows of multicoloured book spines.
    out = np.empty((*x.shape, 3), np.float32)
    out[:] = (70, 42, 24)
    spines = [(140, 30, 35), (35, 55, 120), (40, 100, 55), (180, 140, 60), (110, 60, 35), (90, 35, 90)]
    for shelf_top in range(0, TEX_H, 16):
        bx = 0.0
        while bx < TEX_W:
            bw = rng.uniform(1.5, 3.5)
            bh = rng.uniform(9, 13.5)
            book = (x >= bx) & (x < bx + bw - 0.3) & (y >= shelf_top + 14 - bh) & (y < shelf_top + 14)
            out[book] = _c(spines[int(rng.integers(len(spines)))]) * rng.uniform(0.75, 1.1)
            band = book & (np.abs(y - (shelf_top + 14 - bh * 0.7)) < 0.4)
            out[band] = (215, 185, 110)
            bx += bw
        board = (y >= shelf_top + 14) & (y < shelf_top + 16)
        out[board] = (120, 78, 44)
    return out


def _office(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Mid-grey office: ceiling light strips, a row of pale blue glass windows, grey desk partitions.
    out = np.empty((*x.shape, 3), np.float32)
    out[:] = (128, 130, 136)
    lights = (y >= 2) & (y < 3.5) & ((x % 20) < 12)
    out[lights] = (245, 248, 240)
    window = (y >= 8) & (y < 30) & ((x % 16) >= 1.5)
    out[window] = _vgrad(y, 8, 30, (175, 205, 230), (150, 185, 215))[window]
    mullion = window & (np.abs((y - 8) % 11 - 5.5) > 5.0)
    out[mullion] = (100, 104, 112)
    partition = y >= 40
    out[partition] = (92, 96, 104)
    seams = partition & ((x % 14) < 0.8)
    out[seams] = (70, 72, 80)
    desk = (y >= 38) & (y < 40.5)
    out[desk] = (170, 168, 160)
    return out


def _garden(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Bright green mowed lawn (diagonal stripes) under a strip of sky and a dark hedge, dotted with flowers.
    out = np.empty((*x.shape, 3), np.float32)
    out[:] = (95, 175, 65)
    stripes = ((x + 0.6 * y) % 10) < 5
    out[stripes] = (110, 190, 75)
    hedge = y < 16 + 1.2 * np.sin(x / 3.0)
    out[hedge] = (40, 100, 45)
    sky = y < 6 + np.sin(x / 4.0)
    out[sky] = (165, 210, 245)
    grass = ~hedge
    _dots(
        out,
        x,
        y,
        rng,
        150,
        (0.6, 1.0),
        [(235, 50, 60), (250, 220, 40), (250, 250, 250), (240, 120, 190)],
        region=grass,
    )
    _dots(out, x, y, rng, 50, (0.5, 0.8), [(250, 130, 150), (255, 255, 255)], region=hedge & ~sky)
    return out


def _mountain(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Deep blue sky, jagged slate-blue peaks with snowcaps, a green valley at the bottom.
    out = _vgrad(y, 0, 36, (70, 130, 215), (150, 195, 240))
    phase = rng.uniform(0, 16)
    tri = np.abs(((x + phase) % 16) - 8)  # triangle wave: sharp peaks every 16 px
    ridge = 10 + 1.6 * tri + 2.5 * np.sin(x / 5.0)
    rock = y >= ridge
    out[rock] = (88, 98, 140)
    face = rock & ((((x + phase) % 16) - 8) > 0)
    out[face] = (70, 78, 118)  # shaded side of each peak
    cap = rock & (y < ridge + 4.5) & (ridge < 20)
    out[cap] = (240, 244, 250)
    far = 44 + 2.0 * np.sin(x / 7.0 + 2.0)
    valley = y >= far
    out[valley] = (64, 118, 74)
    return out


def _underwater(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Teal water darkening with depth, diagonal light rays, rising bubbles, green seaweed at the bottom.
    out = _vgrad(y, 0, TEX_H, (20, 140, 165), (5, 55, 95))
    rays = ((x + 0.5 * y) % 18) < 4
    out[rays] *= 1.18
    for _ in range(40):
        cx, cy, r = rng.uniform(0, TEX_W), rng.uniform(0, TEX_H), rng.uniform(0.8, 1.8)
        d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        out[np.abs(d - r) < 0.35] = (190, 235, 245)
    for _ in range(14):
        sx = rng.uniform(0, TEX_W)
        weed = (np.abs(x - sx - 1.5 * np.sin(y / 3.0)) < 0.9) & (y > rng.uniform(45, 58))
        out[weed] = (40, 140, 60)
    return out


def _brick_wall(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Staggered red bricks (8x4 px) with light mortar lines; each brick a slightly different red.
    row = np.floor(y / 4.0)
    col = np.floor((x + 4.0 * (row % 2)) / 8.0)
    seed = int(rng.integers(1 << 20))
    h = ((col * 92821 + row * 68917 + seed) % 997) / 997.0
    out = np.empty((*x.shape, 3), np.float32)
    out[:] = _c((175, 62, 45))
    out *= (0.8 + 0.35 * h)[..., None]
    mortar = ((y % 4.0) < 0.7) | (((x + 4.0 * (row % 2)) % 8.0) < 0.7)
    out[mortar] = (205, 195, 180)
    return out


def _lavender_field(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Pale sky over rows of purple lavender converging towards a vanishing point, green soil between rows.
    out = _vgrad(y, 0, 18, (170, 190, 240), (215, 210, 240))
    field = y >= 17
    depth = np.maximum(y - 14.0, 1.0)
    rowcoord = (x - 32.0) / depth * 6.0  # perspective: rows fan out from (32, 14)
    lav = field & ((rowcoord % 2.0) < 1.25)
    out[field] = (70, 105, 55)
    out[lav] = (150, 95, 200)
    blossoms = lav & (((x * 1.7 + y * 2.3) % 2.2) < 0.7)
    out[blossoms] = (185, 135, 230)
    return out


_TEXTURES: dict[str, _Texture] = {
    "beach": _beach,
    "forest": _forest,
    "night city": _night_city,
    "snow": _snow,
    "desert": _desert,
    "library": _library,
    "office": _office,
    "garden": _garden,
    "mountain": _mountain,
    "underwater": _underwater,
    "brick wall": _brick_wall,
    "lavender field": _lavender_field,
}
assert tuple(_TEXTURES) == SCENES


@cache
def scene_texture(index: int) -> np.ndarray:
    """The full (TEX_H*SS, TEX_W*SS, 3) uint8 texture of scene `index` (read-only, cached).

    Fixed: each texture has its own fixed seed, independent of render seeds.
    """
    name = SCENES[index]
    # Pixel centres in final-pixel units, so patterns are designed at the 64x64 scale.
    ys = (np.arange(TEX_H * SS, dtype=np.float32) + 0.5) / SS
    xs = (np.arange(TEX_W * SS, dtype=np.float32) + 0.5) / SS
    y, x = np.meshgrid(ys, xs, indexing="ij")
    rng = np.random.default_rng([0x1D6E2, index])
    tex = np.clip(np.rint(_TEXTURES[name](x, y, rng)), 0, 255).astype(np.uint8)
    tex.setflags(write=False)
    return tex


@cache
def _planar(index: int) -> np.ndarray:
    # Channel-planar copy (3, H, W): the renderer composites one contiguous channel at a time.
    tex = np.ascontiguousarray(scene_texture(index).transpose(2, 0, 1))
    tex.setflags(write=False)
    return tex


@cache
def _integral(index: int) -> np.ndarray:
    # Summed-area table of the texture (float64), so the mean colour of any crop costs four lookups.
    tex = scene_texture(index).astype(np.float64)
    table = np.zeros((tex.shape[0] + 1, tex.shape[1] + 1, 3))
    table[1:, 1:] = tex.cumsum(0).cumsum(1)
    return table


def scene_crop(index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A channel-planar (3, HI, HI) uint8 read-only view of scene `index` at a random phase, and the crop's
    mean colour (3,) float32."""
    oy = int(rng.integers(0, (TEX_H - SIZE) * SS + 1))
    ox = int(rng.integers(0, (TEX_W - SIZE) * SS + 1))
    t = _integral(index)
    total = t[oy + HI, ox + HI] - t[oy, ox + HI] - t[oy + HI, ox] + t[oy, ox]
    return _planar(index)[:, oy : oy + HI, ox : ox + HI], (total / (HI * HI)).astype(np.float32)


@lru_cache(maxsize=1)
def _studio_light() -> np.ndarray:
    # Soft studio falloff: bright behind the head, darker towards the corners; (HI, HI, 1).
    c = (np.arange(HI, dtype=np.float32) + 0.5) / HI - 0.5
    yy, xx = np.meshgrid(c + 0.12, c, indexing="ij")
    light = 1.06 - 0.5 * (xx**2 + yy**2)
    light = light[..., None].astype(np.float32)
    light.setflags(write=False)
    return light


@cache
def backdrop(index: int) -> tuple[np.ndarray, np.ndarray]:
    """The channel-planar (3, HI, HI) uint8 studio backdrop `index` (read-only, cached), and its mean colour
    (3,) float32."""
    img = np.clip(np.rint(_studio_light() * _c(REFERENCE_BACKDROPS[BACKDROP_NAMES[index]])), 0, 255)
    planar = np.ascontiguousarray(img.astype(np.uint8).transpose(2, 0, 1))
    planar.setflags(write=False)
    mean = planar.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
    mean.setflags(write=False)
    return planar, mean
