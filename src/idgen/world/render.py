"""Procedural renderer of the demo world: a person (head and shoulders) in a scene, as 64x64 RGB.

Pure numpy, vectorised, deterministic. An image is painted back to front on a 4x supersampled canvas
(256x256) that carries, next to the colour, a *part label* per supersample (background, clothes, neck,
ear, hair, skin, eye, brow, nose, mouth, glasses, facial hair). The canvas is then box-downsampled to
64x64, which anti-aliases the edges, and the labels are downsampled by counting.

Face mask (exact definition)
----------------------------
A supersample is *face* when it lies inside the face outline (the `face_shape` superellipse) and is not
covered by hair. Everything drawn on the face -- eyes, brows, nose, mouth, glasses, facial hair -- is
clipped to that outline, so it counts as face; hair (including a fringe over the forehead), ears, neck,
clothes and background never do. A 64x64 pixel is in `Render.face_mask` iff at least half of its 16
supersamples (8 of 16) are face; `Render.labels` is consistent with it (a masked pixel carries its most
frequent face part, an unmasked one its most frequent non-face part).

Coordinates: a person is drawn in "face units" (the face outline is about 2 units wide), centred on the
face; framing sets the scale (close-up 15 px/unit, face 24-30 px wide; half-body 9 px/unit, face
14-18 px wide) and position the horizontal placement ("left" = image left). Per-image jitter from the
`seed`: a sub-pixel-to-one-pixel offset of the person, a +-3% scale change and the phase of the
background pattern; nothing else is random.

Two people: `render_two_people(left, right, TwoPeopleScene(...), seed)` paints two people side by side in one
scene (layout and ground truth at `TwoPeopleScene`/`TwoPeopleRender`); `two_people_region(side)` is the
two-person analogue of `person_region`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from functools import cache, lru_cache
from math import prod
from typing import Any

import numpy as np

from idgen.world import backgrounds as bg
from idgen.world.backgrounds import HI, SIZE, SS

RGB = tuple[int, int, int]

# ---------------------------------------------------------------------------------------------------------
# Identity attributes: every attribute is an index into one of these option lists.
# ---------------------------------------------------------------------------------------------------------
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "face_shape": ("round", "oval", "long", "square", "heart"),
    "skin_tone": ("porcelain", "fair", "light", "medium", "olive", "tan", "brown", "deep"),
    "hair_style": ("bald", "buzz", "short", "fringe", "side part", "bob", "long", "afro", "mohawk"),
    "hair_colour": ("black", "dark brown", "chestnut", "ginger", "blonde", "platinum", "grey", "blue"),
    "eye_colour": ("brown", "dark", "blue", "green", "grey", "hazel"),
    "eye_spacing": ("close", "normal", "wide"),
    "brows": ("thin", "thick", "arched", "angled"),
    "nose": ("button", "long", "wide", "pointed"),
    "mouth": ("smile", "neutral", "open", "grin"),
    "glasses": ("none", "round", "square"),
    "facial_hair": ("none", "moustache", "beard", "goatee"),
}
NUM_COMBINATIONS: int = prod(len(v) for v in ATTRIBUTES.values())
IDENTITY_CODE_SIZE: int = sum(len(v) for v in ATTRIBUTES.values())

SKIN_RGB: tuple[RGB, ...] = (
    (255, 226, 205),
    (243, 200, 168),
    (228, 178, 138),
    (205, 150, 108),
    (188, 146, 100),
    (165, 112, 72),
    (125, 78, 48),
    (84, 52, 34),
)
HAIR_RGB: tuple[RGB, ...] = (
    (22, 20, 22),
    (62, 40, 26),
    (118, 70, 38),
    (196, 88, 36),
    (232, 196, 110),
    (238, 234, 220),
    (150, 150, 156),
    (50, 90, 210),
)
EYE_RGB: tuple[RGB, ...] = (
    (105, 60, 28),
    (38, 24, 20),
    (55, 125, 215),
    (50, 150, 70),
    (135, 145, 160),
    (150, 118, 45),
)
# Face outline per face_shape: half-width a, half-height b, superellipse power p, chin taper (heart).
_FACE_GEOMETRY: tuple[tuple[float, float, float, float], ...] = (
    (1.00, 1.04, 2.0, 0.0),
    (0.88, 1.16, 2.0, 0.15),
    (0.80, 1.32, 2.4, 0.0),
    (0.97, 1.04, 5.0, 0.0),
    (1.00, 1.14, 2.0, 0.48),
)
_EYE_SPACING: tuple[float, ...] = (0.34, 0.42, 0.50)  # half-distance between eye centres, in units of a

# ---------------------------------------------------------------------------------------------------------
# Scene factors (controlled by the caption).
# ---------------------------------------------------------------------------------------------------------
BACKGROUNDS: tuple[str, ...] = bg.SCENES
CLOTHING_COLOURS: dict[str, RGB] = {
    "red": (205, 30, 35),
    "orange": (245, 130, 20),
    "yellow": (245, 212, 40),
    "green": (40, 160, 60),
    "blue": (40, 85, 205),
    "purple": (125, 50, 175),
    "pink": (245, 135, 185),
    "white": (238, 238, 238),
    "black": (30, 30, 32),
    "grey": (128, 128, 132),
    "brown": (120, 75, 40),
}
CLOTHING_NAMES: tuple[str, ...] = tuple(CLOTHING_COLOURS)
# Lighting tints multiply the whole image; every component <= 1 so nothing clips.
LIGHTINGS: dict[str, tuple[float, float, float]] = {
    "neutral": (1.0, 1.0, 1.0),
    "warm": (1.0, 0.84, 0.62),
    "cool": (0.68, 0.84, 1.0),
    "rosy": (1.0, 0.70, 0.84),
    "night": (0.5, 0.56, 0.86),
}
LIGHTING_NAMES: tuple[str, ...] = tuple(LIGHTINGS)
FRAMINGS: tuple[str, ...] = ("close-up", "half-body")
POSITIONS: tuple[str, ...] = ("left", "centre", "right")

# Layout per framing: pixels per face unit and face-centre y; face-centre x per position (final pixels).
_SCALE = (15.0, 9.0)
_CENTRE_Y = (27.0, 19.5)
_CENTRE_X = ((20.0, 32.0, 44.0), (15.0, 32.0, 49.0))

# ---------------------------------------------------------------------------------------------------------
# Part labels (per pixel of Render.labels).
# ---------------------------------------------------------------------------------------------------------
LABEL_NAMES: tuple[str, ...] = (
    "background",
    "clothes",
    "neck",
    "ear",
    "hair",
    "skin",
    "eye",
    "brow",
    "nose",
    "mouth",
    "glasses",
    "facial hair",
)
BACKGROUND, CLOTHES, NECK, EAR, HAIR, SKIN, EYE, BROW, NOSE, MOUTH, GLASSES, FACIAL_HAIR = range(12)
FACE_LABELS: tuple[int, ...] = tuple(range(SKIN, len(LABEL_NAMES)))  # labels >= SKIN are face


def _check_index(kind: str, name: str, value: int, n: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 <= value < n:
        raise ValueError(f"{kind}.{name} must be an int in [0, {n}), got {value!r}")


def _check_indices(owner: Any, **sizes: int) -> None:
    """`_check_index` for each named field of `owner` against its number of options."""
    for name, n in sizes.items():
        _check_index(type(owner).__name__, name, getattr(owner, name), n)


@dataclass(frozen=True)
class Identity:
    """A person of the demo world: one index per attribute of `ATTRIBUTES` (same order as the fields)."""

    face_shape: int
    skin_tone: int
    hair_style: int
    hair_colour: int
    eye_colour: int
    eye_spacing: int
    brows: int
    nose: int
    mouth: int
    glasses: int
    facial_hair: int

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_index("Identity", f.name, getattr(self, f.name), len(ATTRIBUTES[f.name]))

    @classmethod
    def from_seed(cls, seed: int) -> Identity:
        """The identity of `seed`, each attribute uniform over its options.

        Uses sha256 rather than numpy's generators so identities (and hence the fixed train/test split)
        can never change with a numpy release.
        """
        digest = hashlib.sha256(f"idgen.world.identity:{int(seed)}".encode()).digest()
        values = {
            name: int.from_bytes(digest[2 * i : 2 * i + 2], "little") % len(options)
            for i, (name, options) in enumerate(ATTRIBUTES.items())
        }
        return cls(**values)

    @classmethod
    def from_dict(cls, d: Mapping[str, int | str]) -> Identity:
        """Inverse of `to_dict`; also accepts option names instead of indices."""
        values = {k: ATTRIBUTES[k].index(v) if isinstance(v, str) else int(v) for k, v in d.items()}
        return cls(**values)

    def to_dict(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(int(getattr(self, f.name)) for f in fields(self))

    def names(self) -> dict[str, str]:
        """Attribute -> option name, e.g. {"face_shape": "oval", ...}."""
        return {f.name: ATTRIBUTES[f.name][getattr(self, f.name)] for f in fields(self)}

    def describe(self) -> str:
        n = self.names()
        return (
            f"{n['face_shape']} face, {n['skin_tone']} skin, {n['hair_colour']} {n['hair_style']} hair, "
            f"{n['eye_colour']} {n['eye_spacing']}-set eyes, {n['brows']} brows, {n['nose']} nose, "
            f"{n['mouth']} mouth, glasses: {n['glasses']}, facial hair: {n['facial_hair']}"
        )


def identity_code(identity: Identity) -> np.ndarray:
    """Concatenated one-hot encoding of the attributes, float32 of length `IDENTITY_CODE_SIZE` (58)."""
    code = np.zeros(IDENTITY_CODE_SIZE, np.float32)
    offset = 0
    for name, value in zip(ATTRIBUTES, identity.as_tuple(), strict=True):
        code[offset + value] = 1.0
        offset += len(ATTRIBUTES[name])
    return code


# Fixed seeds of the split. Never change them: the split (pinned by a test) must be the same forever.
_TRAIN_SEED_BASE = 1_000_000
_TEST_SEED_BASE = 2_000_000
_VALIDATION_SEED_BASE = 3_000_000
NUM_TRAIN_IDENTITIES = 1000
NUM_TEST_IDENTITIES = 100


def _draw(
    seed_base: int, count: int, taken: frozenset[tuple[int, ...]] = frozenset()
) -> tuple[Identity, ...]:
    # Candidates from consecutive seeds; repeats and attribute tuples already `taken` are skipped.
    out: dict[tuple[int, ...], Identity] = {}
    k = 0
    while len(out) < count:
        ident = Identity.from_seed(seed_base + k)
        if ident.as_tuple() not in taken:
            out.setdefault(ident.as_tuple(), ident)
        k += 1
    return tuple(out.values())


@lru_cache(maxsize=1)
def _split() -> tuple[tuple[Identity, ...], tuple[Identity, ...]]:
    # Disjoint seed ranges, and a test candidate that collides with a train identity is skipped, so the
    # split is disjoint by attribute tuple.
    train = _draw(_TRAIN_SEED_BASE, NUM_TRAIN_IDENTITIES)
    test = _draw(_TEST_SEED_BASE, NUM_TEST_IDENTITIES, frozenset(i.as_tuple() for i in train))
    return train, test


def train_identities() -> list[Identity]:
    """The 1,000 training identities (fixed forever; index = identity class id)."""
    return list(_split()[0])


def test_identities() -> list[Identity]:
    """The 100 held-out identities, disjoint from the training ones by attribute tuple (fixed forever)."""
    return list(_split()[1])


@lru_cache(maxsize=1)
def _validation() -> tuple[Identity, ...]:
    taken = frozenset(ident.as_tuple() for part in _split() for ident in part)
    return _draw(_VALIDATION_SEED_BASE, NUM_TEST_IDENTITIES, taken)


def validation_identities() -> list[Identity]:
    """100 identities disjoint from both the training and the held-out ones, for choosing method settings
    without looking at the held-out identities."""
    return list(_validation())


# Not a test: keeps pytest from collecting it in test modules that import it by name.
test_identities.__test__ = False  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Scene:
    """The non-identity factors of an image, all controlled by the caption (indices into the lists above)."""

    background: int = 0
    clothing_colour: int = 0
    lighting: int = 0
    framing: int = 0
    position: int = 1

    def __post_init__(self) -> None:
        _check_indices(
            self,
            background=len(BACKGROUNDS),
            clothing_colour=len(CLOTHING_NAMES),
            lighting=len(LIGHTING_NAMES),
            framing=len(FRAMINGS),
            position=len(POSITIONS),
        )

    @classmethod
    def random(cls, rng: np.random.Generator) -> Scene:
        """Every factor uniform over its options."""
        return cls(
            background=int(rng.integers(len(BACKGROUNDS))),
            clothing_colour=int(rng.integers(len(CLOTHING_NAMES))),
            lighting=int(rng.integers(len(LIGHTING_NAMES))),
            framing=int(rng.integers(len(FRAMINGS))),
            position=int(rng.integers(len(POSITIONS))),
        )

    @classmethod
    def from_names(
        cls,
        background: str = "beach",
        clothing_colour: str = "red",
        lighting: str = "neutral",
        framing: str = "close-up",
        position: str = "centre",
    ) -> Scene:
        return cls(
            background=BACKGROUNDS.index(background),
            clothing_colour=CLOTHING_NAMES.index(clothing_colour),
            lighting=LIGHTING_NAMES.index(lighting),
            framing=FRAMINGS.index(framing),
            position=POSITIONS.index(position),
        )

    def to_dict(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}

    def names(self) -> dict[str, str]:
        return {
            "background": BACKGROUNDS[self.background],
            "clothing_colour": CLOTHING_NAMES[self.clothing_colour],
            "lighting": LIGHTING_NAMES[self.lighting],
            "framing": FRAMINGS[self.framing],
            "position": POSITIONS[self.position],
        }


@dataclass(frozen=True, eq=False)
class Render:
    """One rendered image with its ground truth.

    image: (64, 64, 3) uint8 RGB. face_mask: (64, 64) bool, see the module docstring. labels: (64, 64)
    uint8 part labels (indices into LABEL_NAMES), consistent with face_mask. face_box: (left, top, right,
    bottom) tight box of face_mask in pixels, right/bottom exclusive (crop with image[t:b, l:r]).
    background_rgb: mean colour of the background layer over the whole frame as rendered (tint included),
    before the person is drawn on it. scene is None for reference photos, which set backdrop instead (the
    name of the studio backdrop) and carry their clothing colour index in clothing_colour.
    """

    image: np.ndarray
    face_mask: np.ndarray
    labels: np.ndarray
    face_box: tuple[int, int, int, int]
    identity: Identity
    scene: Scene | None
    background_rgb: tuple[float, float, float]
    clothing_colour: int
    backdrop: str | None = None


# ---------------------------------------------------------------------------------------------------------
# Painting.
# ---------------------------------------------------------------------------------------------------------
_PIX = np.arange(HI, dtype=np.float32) + 0.5  # supersample centres
_Box = tuple[tuple[slice, slice], np.ndarray, np.ndarray]  # canvas slices, u (1, w), v (h, 1)


class _Painter:
    """Paints shapes given in face units onto the supersampled canvas.

    Shapes only write a small "material" id per supersample (one byte, so painting is cheap); each
    material has a colour and a part label, and `composite` turns ids into colours and labels at the end.
    """

    def __init__(self, cx: float, cy: float, s: float) -> None:
        self.cx, self.cy, self.s = cx, cy, s
        self.mat = np.zeros((HI, HI), np.uint8)  # 0 = background, untouched
        self.colours: list[Any] = [(0, 0, 0)]
        self.part: list[int] = [BACKGROUND]
        self.face = np.zeros((HI, HI), bool)  # supersamples inside the face outline and not under hair

    def box(self, x0: float, y0: float, x1: float, y1: float) -> _Box | None:
        """Canvas slices covering the unit-space box, with broadcastable u (1, w) and v (h, 1) coordinates."""
        c0 = max(int(np.floor(self.cx + x0 * self.s)), 0)
        c1 = min(int(np.ceil(self.cx + x1 * self.s)) + 1, HI)
        r0 = max(int(np.floor(self.cy + y0 * self.s)), 0)
        r1 = min(int(np.ceil(self.cy + y1 * self.s)) + 1, HI)
        if c1 <= c0 or r1 <= r0:
            return None
        u = ((_PIX[c0:c1] - self.cx) / self.s)[None, :]
        v = ((_PIX[r0:r1] - self.cy) / self.s)[:, None]
        return (slice(r0, r1), slice(c0, c1)), u, v

    def fill(self, sl: tuple[slice, slice], mask: np.ndarray, colour: Any, label: int) -> None:
        if len(self.colours) == 256:  # pragma: no cover - a person uses about 30 materials
            raise RuntimeError("too many materials")
        self.colours.append(colour)
        self.part.append(label)
        np.copyto(self.mat[sl], np.uint8(len(self.colours) - 1), where=mask)

    def on_face(self, sl: tuple[slice, slice], mask: np.ndarray) -> np.ndarray:
        """Clip a feature to the face outline, so everything drawn on the face belongs to the face mask."""
        return mask & self.face[sl]

    def composite(self, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The person over `background` (planar (3, HI, HI) uint8) and the (HI, HI) part labels."""
        lut = np.clip(np.rint(np.array(self.colours, np.float32).T), 0, 255).astype(
            np.uint8
        )  # (3, materials)
        out = np.where((self.mat == 0)[None], background, np.take(lut, self.mat, axis=1))
        return out, np.asarray(self.part, np.uint8)[self.mat]


def _ellipse(u: np.ndarray, v: np.ndarray, x: float, y: float, rx: float, ry: float) -> np.ndarray:
    return ((u - x) / rx) ** 2 + ((v - y) / ry) ** 2 <= 1.0


def _segment(
    u: np.ndarray, v: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], half_width: float
) -> np.ndarray:
    """Points within `half_width` of the segment p0-p1 (a thick line with round caps)."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * dx + (v - p0[1]) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return (u - p0[0] - t * dx) ** 2 + (v - p0[1] - t * dy) ** 2 <= half_width * half_width


def _face_outline(u: np.ndarray, v: np.ndarray, shape: int) -> np.ndarray:
    a, b, p, taper = _FACE_GEOMETRY[shape]
    w = a * (1.0 - taper * np.clip(v / b, 0.0, 1.0)) if taper else a
    if p == 2.0:
        return (u / w) ** 2 + (v / b) ** 2 <= 1.0
    return np.abs(u / w) ** p + np.abs(v / b) ** p <= 1.0


def _shade(rgb: RGB | np.ndarray, k: float) -> np.ndarray:
    return np.asarray(rgb, np.float32) * k


def _draw_torso(p: _Painter, clothes: np.ndarray, skin: np.ndarray, half_body: bool) -> None:
    y0, w, r = 1.52, 1.85, 0.6  # shoulder line, half-width, shoulder rounding (units)
    res = p.box(-w - 0.5, y0, w + 0.5, 40.0)
    if res is None:
        return
    sl, u, v = res
    # Half-body: the torso widens a little downwards (arms hanging at the sides).
    ww = w + 0.1 * np.clip(v - y0 - r, 0.0, None) if half_body else w
    au = np.abs(u)
    torso = ((au <= ww - r) & (v >= y0)) | ((au <= ww) & (v >= y0 + r))
    torso |= (au - (w - r)) ** 2 + (v - (y0 + r)) ** 2 <= r * r
    p.fill(sl, torso, clothes, CLOTHES)
    if half_body:
        # Darker sleeves separate the arms from the chest.
        arm = torso & (au >= ww - 0.55) & (au <= ww - 0.45) & (v > y0 + 0.5)
        p.fill(sl, arm, clothes * 0.7, CLOTHES)
    # Round neckline showing the neck's skin.
    neckline = _ellipse(u, v, 0.0, y0 - 0.05, 0.45, 0.35) & (v >= y0 - 0.2)
    p.fill(sl, neckline, skin * 0.86, NECK)
    collar = _ellipse(u, v, 0.0, y0 - 0.05, 0.53, 0.43) & ~neckline & torso
    p.fill(sl, collar, clothes * 0.78, CLOTHES)


def _hair_back(p: _Painter, style: str, a: float, b: float, hair: np.ndarray) -> None:
    """Hair behind the face (cap, volume, long hair over the shoulders)."""
    if style == "bald":
        return
    res = p.box(-a - 0.7, -b - 0.9, a + 0.7, 2.8)
    if res is None:
        return
    sl, u, v = res
    if style == "buzz":
        m = _ellipse(u, v, 0.0, -0.04, a + 0.05, b + 0.06) & (v < -0.15)
    elif style in ("short", "fringe"):
        m = _ellipse(u, v, 0.0, -0.07, a + 0.13, b + 0.15) & (v < 0.0)
    elif style == "side part":
        m = _ellipse(u, v, 0.0, -0.07, a + 0.15, b + 0.16) & (v < 0.05)
        m |= _ellipse(u, v, -0.35 * a, -b + 0.05, 0.75 * a, 0.32)  # volume swept to one side
    elif style == "bob":
        m = _ellipse(u, v, 0.0, -0.06, a + 0.2, b + 0.17) & (v < 0.0)
        m |= (np.abs(u) < a + 0.2) & (v >= -0.1) & (v < 0.8)
    elif style == "long":
        m = _ellipse(u, v, 0.0, -0.06, a + 0.18, b + 0.16) & (v < 0.0)
        m |= (np.abs(u) < a + 0.24) & (v >= -0.1) & (v < 2.5 - 0.4 * (u / a) ** 2)
    elif style == "afro":
        m = _ellipse(u, v, 0.0, -0.32, a + 0.55, b + 0.42) & (v < 0.45)
    elif style == "mohawk":
        m = (np.abs(u) < 0.2) & _ellipse(u, v, 0.0, -0.1, 0.6, b + 0.45) & (v < -0.3)
    else:  # pragma: no cover - ATTRIBUTES and this function are kept in sync by the tests
        raise ValueError(style)
    p.fill(sl, m, hair, HAIR)
    _hair_texture(p, sl, u, v, m, style, hair)


def _hair_texture(
    p: _Painter,
    sl: tuple[slice, slice],
    u: np.ndarray,
    v: np.ndarray,
    m: np.ndarray,
    style: str,
    hair: np.ndarray,
) -> None:
    # Curls for the afro, strands for longer styles: makes hair read as hair, not as a hat.
    if style == "afro":
        tex = m & ((np.sin(u * 22.0) * np.sin(v * 22.0)) > 0.55)
    elif style in ("bob", "long", "side part"):
        tex = m & (np.sin(u * 26.0 + 2.0 * v) > 0.8)
    else:
        return
    p.fill(sl, tex, hair * 0.8 + 12.0, HAIR)


# Hair over the face per style, as a mask of the face box: (u, v, x = u / a, b) -> bool.
_HAIRLINES: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]] = {
    "buzz": lambda u, v, x, b: v < -0.78 * b + 0.3 * x**2,
    "short": lambda u, v, x, b: v < -0.6 * b + 0.35 * x**2,
    "fringe": lambda u, v, x, b: v < -0.42 * b + 0.08 * x**2 + 0.03 * np.sin(u * 30.0),
    "side part": lambda u, v, x, b: v < -0.5 * b + 0.28 * x + 0.15 * x**2,
    "bob": lambda u, v, x, b: (v < -0.44 * b + 0.08 * x**2) | ((np.abs(x) > 0.8) & (v < 0.45)),
    "long": lambda u, v, x, b: (v < -0.58 * b + 0.4 * x**2) | ((np.abs(x) > 0.84) & (v < 0.35)),
    "afro": lambda u, v, x, b: v < -0.58 * b + 0.3 * x**2,
    "mohawk": lambda u, v, x, b: (np.abs(u) < 0.2) & (v < -0.66 * b),
}


def _hair_front(p: _Painter, style: str, a: float, b: float, hair: np.ndarray) -> None:
    """Hair over the face: the hairline, fringes, side curtains. Removes those pixels from the face."""
    if style == "bald":
        return
    res = p.box(-a - 0.1, -b - 0.1, a + 0.1, b + 0.1)
    if res is None:
        return
    sl, u, v = res
    if style not in _HAIRLINES:  # pragma: no cover
        raise ValueError(style)
    m = p.on_face(sl, _HAIRLINES[style](u, v, u / a, b))
    p.fill(sl, m, hair, HAIR)
    _hair_texture(p, sl, u, v, m, style, hair)
    p.face[sl] &= ~m


_EYE_Y = -0.08  # eye centre height (units)


def _draw_ears(p: _Painter, a: float, skin: np.ndarray) -> None:
    # Ears sit behind the face outline, half hidden.
    res = p.box(-a - 0.2, -0.3, a + 0.2, 0.3)
    if res is not None:
        sl, u, v = res
        ears = _ellipse(u, v, -a, -0.02, 0.15, 0.23) | _ellipse(u, v, a, -0.02, 0.15, 0.23)
        p.fill(sl, ears, skin * 0.92, EAR)


def _draw_skin(p: _Painter, shape: int, a: float, b: float, skin: np.ndarray) -> None:
    # Face outline, flat skin (no shading: pure-skin pixels keep the exact palette colour).
    res = p.box(-a, -b, a, b)
    assert res is not None
    sl, u, v = res
    face = _face_outline(u, v, shape)
    p.face[sl] = face
    p.fill(sl, face, skin, SKIN)


def _draw_facial_hair(p: _Painter, style: str, a: float, b: float, colour: np.ndarray) -> None:
    # Drawn before nose and mouth, which sit over a beard.
    res = p.box(-a, 0.0, a, b)
    if res is None or style == "none":
        return
    sl, u, v = res
    moustache = _ellipse(u, v, 0.0, 0.42, 0.27, 0.075)
    if style == "beard":
        m = (v > 0.08 + 0.32 * (1.0 - (u / a) ** 2)) | moustache
    elif style == "goatee":
        m = _ellipse(u, v, 0.0, b * 0.84, 0.24, 0.24) | moustache
    else:
        m = moustache
    p.fill(sl, p.on_face(sl, m), colour, FACIAL_HAIR)


def _draw_nose(p: _Painter, nose: str, skin: np.ndarray) -> None:
    res = p.box(-0.25, -0.05, 0.25, 0.4)
    assert res is not None
    sl, u, v = res
    if nose == "button":
        m = _ellipse(u, v, 0.0, 0.24, 0.1, 0.08)
    elif nose == "long":
        m = ((np.abs(u) < 0.05) & (v > -0.02) & (v < 0.32)) | _ellipse(u, v, 0.0, 0.32, 0.1, 0.05)
    elif nose == "wide":
        m = _ellipse(u, v, 0.0, 0.26, 0.22, 0.075)
    else:  # pointed: a triangle widening downwards
        m = (v > 0.02) & (v < 0.32) & (np.abs(u) < 0.16 * (v - 0.02) / 0.3)
    p.fill(sl, p.on_face(sl, m), skin * 0.7, NOSE)


def _draw_mouth(p: _Painter, mouth: str, skin: np.ndarray) -> None:
    res = p.box(-0.35, 0.3, 0.35, 0.75)
    assert res is not None
    sl, u, v = res
    lips = skin * 0.5 + np.asarray((175, 55, 65), np.float32) * 0.5
    if mouth == "smile":
        p.fill(sl, p.on_face(sl, _segment(u, v, (-0.22, 0.5), (0.0, 0.6), 0.05)), lips, MOUTH)
        p.fill(sl, p.on_face(sl, _segment(u, v, (0.0, 0.6), (0.22, 0.5), 0.05)), lips, MOUTH)
    elif mouth == "neutral":
        p.fill(sl, p.on_face(sl, (np.abs(u) < 0.2) & (np.abs(v - 0.56) < 0.045)), lips, MOUTH)
    elif mouth == "open":
        outer = _ellipse(u, v, 0.0, 0.56, 0.14, 0.12)
        p.fill(sl, p.on_face(sl, outer), lips, MOUTH)
        p.fill(sl, p.on_face(sl, _ellipse(u, v, 0.0, 0.56, 0.085, 0.07)), (90, 22, 32), MOUTH)
    else:  # grin: a wide half-moon of teeth with a lip border
        outer = _ellipse(u, v, 0.0, 0.48, 0.29, 0.2) & (v > 0.48)
        p.fill(sl, p.on_face(sl, outer), lips, MOUTH)
        teeth = _ellipse(u, v, 0.0, 0.48, 0.22, 0.13) & (v > 0.5)
        p.fill(sl, p.on_face(sl, teeth), (245, 245, 238), MOUTH)


def _draw_eyes(p: _Painter, box: _Box, d: float, iris: RGB) -> None:
    # White, iris in the eye colour, dark pupil; eye centres at (+-d, _EYE_Y).
    sl, u, v = box
    for sx in (-d, d):
        p.fill(sl, p.on_face(sl, _ellipse(u, v, sx, _EYE_Y, 0.2, 0.12)), (242, 242, 240), EYE)
        p.fill(sl, p.on_face(sl, _ellipse(u, v, sx, _EYE_Y, 0.11, 0.11)), iris, EYE)
        p.fill(sl, p.on_face(sl, _ellipse(u, v, sx, _EYE_Y, 0.036, 0.036)), (12, 12, 16), EYE)


def _draw_brows(p: _Painter, box: _Box, d: float, brows: str, colour: np.ndarray) -> None:
    sl, u, v = box
    by = _EYE_Y - 0.25
    for side in (-1.0, 1.0):
        sx = side * d
        b_in, b_out = sx - side * 0.18, sx + side * 0.2
        if brows == "thin":
            m = _segment(u, v, (b_in, by), (b_out, by - 0.01), 0.035)
        elif brows == "thick":
            m = _segment(u, v, (b_in, by), (b_out, by), 0.075)
        elif brows == "arched":
            m = _segment(u, v, (b_in, by + 0.02), (sx, by - 0.08), 0.045)
            m |= _segment(u, v, (sx, by - 0.08), (b_out, by + 0.03), 0.045)
        else:  # angled: rising towards the outside
            m = _segment(u, v, (b_in, by + 0.04), (b_out, by - 0.09), 0.055)
        p.fill(sl, p.on_face(sl, m), colour, BROW)


def _draw_glasses(p: _Painter, box: _Box, d: float, glasses: str) -> None:
    # Dark frames around both eyes and a bridge.
    if glasses == "none":
        return
    sl, u, v = box
    ey = _EYE_Y
    frame = (np.abs(u) < d - 0.2) & (np.abs(v - ey) < 0.04)  # the bridge between the lenses
    for sx in (-d, d):
        if glasses == "round":
            ring = _ellipse(u, v, sx, ey, 0.27, 0.25) & ~_ellipse(u, v, sx, ey, 0.2, 0.18)
        else:
            du, dv = np.abs(u - sx), np.abs(v - ey)
            ring = (du < 0.29) & (dv < 0.21) & ~((du < 0.22) & (dv < 0.14))
        frame = frame | ring
    p.fill(sl, p.on_face(sl, frame), (28, 28, 34), GLASSES)


def _draw_face(p: _Painter, ident: Identity) -> None:
    """Everything inside and on the face, back to front; hair over the face comes last."""
    a, b, _, _ = _FACE_GEOMETRY[ident.face_shape]
    skin = np.asarray(SKIN_RGB[ident.skin_tone], np.float32)
    hair = np.asarray(HAIR_RGB[ident.hair_colour], np.float32)
    n = ident.names()
    _draw_ears(p, a, skin)
    _draw_skin(p, ident.face_shape, a, b, skin)
    _draw_facial_hair(p, n["facial_hair"], a, b, hair * 0.92)
    _draw_nose(p, n["nose"], skin)
    _draw_mouth(p, n["mouth"], skin)
    # Eyes, brows and glasses share one box around both eyes.
    d = _EYE_SPACING[ident.eye_spacing] * a
    eyes = p.box(-d - 0.35, -0.55, d + 0.35, 0.2)
    assert eyes is not None
    _draw_eyes(p, eyes, d, EYE_RGB[ident.eye_colour])
    _draw_brows(p, eyes, d, n["brows"], hair * 0.72)  # a darker shade of the hair colour
    _draw_glasses(p, eyes, d, n["glasses"])
    _hair_front(p, n["hair_style"], a, b, hair)


def _draw_person(
    background: np.ndarray,
    ident: Identity,
    clothes: RGB,
    framing: int,
    position: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The person painted over `background`: planar (3, HI, HI) uint8 colour and (HI, HI) part labels."""
    layout = (_CENTRE_X[framing][position], _CENTRE_Y[framing], _SCALE[framing])
    return _paint_person(background, ident, clothes, layout, framing == 1, rng)


def _paint_person(
    background: np.ndarray,
    ident: Identity,
    clothes: RGB,
    layout: tuple[float, float, float],
    half_body: bool,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """`_draw_person` at an explicit layout: face centre x, y (final pixels) and pixels per face unit."""
    # Jitter: up to +-1 final pixel of offset (in supersamples) and +-3% scale.
    dx, dy = (int(v) for v in rng.integers(-SS, SS + 1, size=2))
    scale = layout[2] * SS * float(rng.uniform(0.97, 1.03))
    cx = layout[0] * SS + dx
    cy = layout[1] * SS + dy
    p = _Painter(cx, cy, scale)
    a, b, _, _ = _FACE_GEOMETRY[ident.face_shape]
    skin = np.asarray(SKIN_RGB[ident.skin_tone], np.float32)
    hair = np.asarray(HAIR_RGB[ident.hair_colour], np.float32)
    style = ATTRIBUTES["hair_style"][ident.hair_style]

    _draw_torso(p, np.asarray(clothes, np.float32), skin, half_body=half_body)
    _hair_back(p, style, a, b, hair)
    res = p.box(-0.4, 0.3, 0.4, 1.6)
    assert res is not None
    sl, u, v = res
    p.fill(sl, (np.abs(u) < 0.36) & (v > 0.3) & (v < 1.6), skin * 0.86, NECK)
    _draw_face(p, ident)
    return p.composite(background)


# Supersample -> final pixel block index, for counting labels per pixel with one bincount.
_BLOCK = ((np.arange(HI)[:, None] // SS) * SIZE + (np.arange(HI)[None, :] // SS)).ravel()
_NL = len(LABEL_NAMES)


def _downsample(planar: np.ndarray) -> np.ndarray:
    """Box filter SSxSS -> 1 of a planar (3, HI, HI) uint8 canvas, to (SIZE, SIZE, 3) float32.

    Explicit uint16 adds of contiguous slices: several times faster than a strided mean."""
    rows = planar.reshape(3, SIZE, SS, HI).astype(np.uint16)
    acc = rows[:, :, 0] + rows[:, :, 1]
    for k in range(2, SS):
        acc += rows[:, :, k]
    cols = acc.reshape(3, SIZE, SIZE, SS)
    out = cols[..., 0] + cols[..., 1]
    for k in range(2, SS):
        out += cols[..., k]
    return out.transpose(1, 2, 0).astype(np.float32) * np.float32(1.0 / (SS * SS))


def _block_counts(lab: np.ndarray) -> np.ndarray:
    """(SIZE * SIZE, labels) counts of each part label among a pixel's supersamples."""
    return np.bincount(_BLOCK * _NL + lab.ravel(), minlength=SIZE * SIZE * _NL).reshape(SIZE * SIZE, _NL)


def _pixel_labels(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(SIZE, SIZE) uint8 part labels and bool face mask of supersampled labels `lab`: a pixel is face when
    at least half of its supersamples are; it then carries its most frequent face part, else its most
    frequent non-face part."""
    counts = _block_counts(lab)
    face = counts[:, SKIN:].sum(axis=1) * 2 >= SS * SS
    labels = np.where(face, counts[:, SKIN:].argmax(axis=1) + SKIN, counts[:, :SKIN].argmax(axis=1))
    return labels.reshape(SIZE, SIZE).astype(np.uint8), face.reshape(SIZE, SIZE)


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a (SIZE, SIZE) bool mask, right/bottom exclusive; zeros when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1) if rows.size else (0, 0, 0, 0)


def _grown(covered: np.ndarray) -> np.ndarray:
    """`covered` (SIZE, SIZE) bool grown by one pixel in all 8 directions, read-only."""
    padded = np.pad(covered, 1)
    grown = np.zeros_like(covered)
    for dy in range(3):
        for dx in range(3):
            grown |= padded[dy : dy + SIZE, dx : dx + SIZE]
    grown.setflags(write=False)
    return grown


def _finish(
    rgb: np.ndarray,
    lab: np.ndarray,
    tint: tuple[float, float, float],
    background_rgb: np.ndarray,
    identity: Identity,
    scene: Scene | None,
    clothing_colour: int,
    backdrop: str | None,
) -> Render:
    t = np.asarray(tint, np.float32)
    image = np.clip(np.rint(_downsample(rgb) * t), 0, 255).astype(np.uint8)
    labels, face_mask = _pixel_labels(lab)
    bg_mean = tuple(float(c) for c in background_rgb * t)
    return Render(
        image=image,
        face_mask=face_mask,
        labels=labels,
        face_box=_tight_box(face_mask),
        identity=identity,
        scene=scene,
        background_rgb=(bg_mean[0], bg_mean[1], bg_mean[2]),
        clothing_colour=clothing_colour,
        backdrop=backdrop,
    )


def _scene_canvas(identity: Identity, scene: Scene, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng([int(seed), 0x5CE7E])
    background, background_rgb = bg.scene_crop(scene.background, rng)
    clothes = CLOTHING_COLOURS[CLOTHING_NAMES[scene.clothing_colour]]
    rgb, lab = _draw_person(background, identity, clothes, scene.framing, scene.position, rng)
    return rgb, lab, background_rgb


def render_layers(identity: Identity, scene: Scene, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The supersampled canvas of `render` before downsampling and tint: (256, 256, 3) uint8 colour and
    (256, 256) uint8 part labels. Exposed for tests and ground-truth tools."""
    rgb, lab, _ = _scene_canvas(identity, scene, seed)
    return rgb.transpose(1, 2, 0), lab


def render(identity: Identity, scene: Scene, seed: int = 0) -> Render:
    """Render `identity` in `scene`. Deterministic in (identity, scene, seed); `seed` only jitters the pose
    (<= 1 px offset, +-3% scale) and the background pattern's phase."""
    rgb, lab, background_rgb = _scene_canvas(identity, scene, seed)
    tint = LIGHTINGS[LIGHTING_NAMES[scene.lighting]]
    return _finish(rgb, lab, tint, background_rgb, identity, scene, scene.clothing_colour, None)


def reference_choice(seed: int) -> tuple[int, int]:
    """(backdrop index, clothing colour index) of the reference photo with `seed`."""
    rng = np.random.default_rng([int(seed), 0x8EF])
    return int(rng.integers(len(bg.BACKDROP_NAMES))), int(rng.integers(len(CLOTHING_NAMES)))


def render_reference(identity: Identity, seed: int = 0) -> Render:
    """A reference photo: close-up, centre, neutral light, on a random plain studio backdrop (not a scene)
    in random clothing, both drawn from `seed`. `Render.backdrop` names the backdrop and
    `Render.background_rgb` is its mean colour, for measuring how much of it a model drags along."""
    backdrop_index, clothing = reference_choice(seed)
    rng = np.random.default_rng([int(seed), 0x8EF, 1])
    background, background_rgb = bg.backdrop(backdrop_index)
    rgb, lab = _draw_person(background, identity, CLOTHING_COLOURS[CLOTHING_NAMES[clothing]], 0, 1, rng)
    return _finish(
        rgb,
        lab,
        LIGHTINGS["neutral"],
        background_rgb,
        identity,
        None,
        clothing,
        bg.BACKDROP_NAMES[backdrop_index],
    )


# ---------------------------------------------------------------------------------------------------------
# Casual photos of one person: varied pose, expression and lighting (several photos per identity).
# ---------------------------------------------------------------------------------------------------------
TURN_SHIFT = 0.8  # face units the features slide sideways per unit sin(turn): they sit in front of the axis


@dataclass(frozen=True)
class PhotoVariation:
    """How one casual photo of a person differs from a studio reference photo; the defaults change nothing.

    Pose: offset (x, y) moves the person by that many pixels; scale resizes them; turn (radians, + = to the
    image right) slides the eyes, brows, nose, mouth and facial hair sideways by TURN_SHIFT * sin(turn)
    face units and narrows them by cos(turn) (the hairline slides half as far), inside a face outline that
    stays; tilt (radians, + = clockwise) rolls the camera about the face centre.
    Expression: brow_raise lifts (+) or lowers (-) the brows, in face units; eye_open < 1 narrows the eyes
    with lids (1 = open). The mouth is not varied: its shape is an identity attribute here.
    Lighting: tint multiplies the colours (each <= 1); light_slope darkens one side, by up to |light_slope|
    at the far edge (+ = light from the right).
    """

    offset: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    turn: float = 0.0
    tilt: float = 0.0
    brow_raise: float = 0.0
    eye_open: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    light_slope: float = 0.0

    def __post_init__(self) -> None:
        if not 0.5 <= self.scale <= 1.5 or not 0.2 <= self.eye_open <= 1.0 or abs(self.light_slope) > 0.8:
            raise ValueError(f"PhotoVariation out of range: {self}")
        if abs(self.turn) > 0.8 or abs(self.tilt) > 0.5 or not all(0.2 <= c <= 1.0 for c in self.tint):
            raise ValueError(f"PhotoVariation out of range: {self}")

    @classmethod
    def random(cls, rng: np.random.Generator, strength: float = 1.0) -> PhotoVariation:
        """Every factor uniform in its range times `strength` (0 = none, 1 = the largest casual variation:
        +-3 px, +-10% size, +-29 degree turn, +-11 degree tilt, brows -0.05..+0.1, half the photos with eyes
        narrowed to 50-100%, up to 60% of a lighting tint, one side up to 35% darker)."""
        u = rng.uniform(-1.0, 1.0, size=6)
        squint, narrow = rng.random(), rng.random()
        tint = LIGHTINGS[LIGHTING_NAMES[int(rng.integers(1, len(LIGHTINGS)))]]  # any but neutral
        amount = rng.random()
        return cls(
            offset=(3.0 * strength * float(u[0]), 3.0 * strength * float(u[1])),
            scale=1.0 + 0.1 * strength * float(u[2]),
            turn=0.5 * strength * float(u[3]),
            tilt=0.2 * strength * float(u[4]),
            brow_raise=strength * (0.025 + 0.075 * float(u[5])),
            eye_open=1.0 - 0.5 * strength * narrow if squint < 0.5 else 1.0,
            tint=tuple(1.0 - 0.6 * strength * amount * (1.0 - c) for c in tint),  # type: ignore[arg-type]
            light_slope=0.35 * strength * float(rng.uniform(-1.0, 1.0)),
        )


class _PosedPainter(_Painter):
    """A painter whose shapes can be slid sideways (shift), narrowed (narrow) and lifted (lift), in face
    units: a shape drawn at (x, y) lands at (shift + narrow * x, y - lift). The identity at (0, 1, 0)."""

    def __init__(self, cx: float, cy: float, s: float) -> None:
        super().__init__(cx, cy, s)
        self.shift, self.narrow, self.lift = 0.0, 1.0, 0.0

    def box(self, x0: float, y0: float, x1: float, y1: float) -> _Box | None:
        res = super().box(
            self.shift + self.narrow * x0, y0 - self.lift, self.shift + self.narrow * x1, y1 - self.lift
        )
        if res is None:
            return None
        sl, u, v = res
        return sl, (u - self.shift) / self.narrow, v + self.lift


def _draw_lids(p: _Painter, box: _Box, d: float, eye_open: float, skin: np.ndarray) -> None:
    # Narrowed eyes: upper and lower lids cover the eye beyond eye_open of its half-height.
    if eye_open >= 1.0:
        return
    sl, u, v = box
    for sx in (-d, d):
        eye = _ellipse(u, v, sx, _EYE_Y, 0.21, 0.13)
        lid = eye & (np.abs(v - _EYE_Y) > 0.12 * eye_open)
        p.fill(sl, p.on_face(sl, lid), skin * 0.9, SKIN)


def _draw_varied_face(p: _PosedPainter, ident: Identity, variation: PhotoVariation) -> None:
    """`_draw_face` with the head turned and an expression; the same shapes at PhotoVariation()."""
    a, b, _, _ = _FACE_GEOMETRY[ident.face_shape]
    skin = np.asarray(SKIN_RGB[ident.skin_tone], np.float32)
    hair = np.asarray(HAIR_RGB[ident.hair_colour], np.float32)
    n = ident.names()
    _draw_ears(p, a, skin)
    _draw_skin(p, ident.face_shape, a, b, skin)
    p.shift, p.narrow = TURN_SHIFT * float(np.sin(variation.turn)), float(np.cos(variation.turn))
    _draw_facial_hair(p, n["facial_hair"], a, b, hair * 0.92)
    _draw_nose(p, n["nose"], skin)
    _draw_mouth(p, n["mouth"], skin)
    d = _EYE_SPACING[ident.eye_spacing] * a
    eyes = p.box(-d - 0.35, -0.55, d + 0.35, 0.2)
    assert eyes is not None
    _draw_eyes(p, eyes, d, EYE_RGB[ident.eye_colour])
    _draw_lids(p, eyes, d, variation.eye_open, skin)
    p.lift = variation.brow_raise
    brows = p.box(-d - 0.35, -0.55, d + 0.35, 0.2)
    assert brows is not None
    _draw_brows(p, brows, d, n["brows"], hair * 0.72)
    p.lift = 0.0
    _draw_glasses(p, eyes, d, n["glasses"])
    p.shift, p.narrow = p.shift * 0.5, 1.0  # the hairline sits further back on the head than the nose
    _hair_front(p, n["hair_style"], a, b, hair)


def _roll(
    planar: np.ndarray, labels: np.ndarray, cx: float, cy: float, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """The canvas rolled clockwise by `angle` about (cx, cy) in supersamples: nearest supersample, edges
    repeated."""
    c, s = np.cos(angle), np.sin(angle)
    x, y = _PIX[None, :] - cx, _PIX[:, None] - cy  # supersample centres, relative to the face
    src_x = np.clip(np.floor(cx + c * x + s * y), 0, HI - 1).astype(np.intp)
    src_y = np.clip(np.floor(cy - s * x + c * y), 0, HI - 1).astype(np.intp)
    return planar[:, src_y, src_x], labels[src_y, src_x]


def _draw_varied_person(
    background: np.ndarray, ident: Identity, clothes: RGB, variation: PhotoVariation, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`_draw_person` at close-up, centre, with `variation`; the same draws and canvas at PhotoVariation()."""
    dx, dy = (int(v) for v in rng.integers(-SS, SS + 1, size=2))
    scale = _SCALE[0] * SS * float(rng.uniform(0.97, 1.03)) * variation.scale
    cx = _CENTRE_X[0][1] * SS + dx + variation.offset[0] * SS
    cy = _CENTRE_Y[0] * SS + dy + variation.offset[1] * SS
    p = _PosedPainter(cx, cy, scale)
    a, b, _, _ = _FACE_GEOMETRY[ident.face_shape]
    skin = np.asarray(SKIN_RGB[ident.skin_tone], np.float32)
    hair = np.asarray(HAIR_RGB[ident.hair_colour], np.float32)
    _draw_torso(p, np.asarray(clothes, np.float32), skin, half_body=False)
    _hair_back(p, ATTRIBUTES["hair_style"][ident.hair_style], a, b, hair)
    res = p.box(-0.4, 0.3, 0.4, 1.6)
    assert res is not None
    sl, u, v = res
    p.fill(sl, (np.abs(u) < 0.36) & (v > 0.3) & (v < 1.6), skin * 0.86, NECK)
    _draw_varied_face(p, ident, variation)
    rgb, lab = p.composite(background)
    if variation.tilt:
        rgb, lab = _roll(rgb, lab, cx, cy, variation.tilt)
    return rgb, lab


def _side_light(image: np.ndarray, slope: float) -> np.ndarray:
    # Brightness 1 on the lit side, falling linearly to 1 - |slope| at the other edge.
    if not slope:
        return image
    x = (np.arange(SIZE, dtype=np.float32) + 0.5) / SIZE  # 0 at the left edge, 1 at the right
    lit = x if slope > 0 else 1.0 - x
    gain = 1.0 - abs(slope) * (1.0 - lit)
    return np.clip(np.rint(image * gain[None, :, None]), 0, 255).astype(np.uint8)


def photo_variation(seed: int, strength: float = 1.0) -> PhotoVariation:
    """The variation `render_photo(identity, seed, strength=strength)` draws."""
    return PhotoVariation.random(np.random.default_rng([int(seed), 0x9407]), strength)


def render_photo(
    identity: Identity, seed: int = 0, variation: PhotoVariation | None = None, strength: float = 1.0
) -> Render:
    """A casual photo of `identity`: close-up, on a studio backdrop in clothing drawn from `seed` as in
    `render_reference`, with `variation` (by default `PhotoVariation.random` of `strength`, also drawn from
    `seed`). With `PhotoVariation()` it is exactly `render_reference(identity, seed)`. Ground truth (face
    mask, labels, box) follows the pose; `background_rgb` is the backdrop's mean times the tint."""
    if variation is None:
        variation = photo_variation(seed, strength)
    backdrop_index, clothing = reference_choice(seed)
    rng = np.random.default_rng([int(seed), 0x8EF, 1])
    background, background_rgb = bg.backdrop(backdrop_index)
    clothes = CLOTHING_COLOURS[CLOTHING_NAMES[clothing]]
    rgb, lab = _draw_varied_person(background, identity, clothes, variation, rng)
    name = bg.BACKDROP_NAMES[backdrop_index]
    out = _finish(rgb, lab, variation.tint, background_rgb, identity, None, clothing, name)
    return (
        out
        if not variation.light_slope
        else replace(out, image=_side_light(out.image, variation.light_slope))
    )


PERSON_REGION_IDENTITIES = 300  # training identities whose renders make up `person_region`


@cache
def person_region(framing: int, position: int) -> np.ndarray:
    """(64, 64) bool, read-only: every pixel a person covers (hair, face, ears, neck, clothes) in a render
    with this framing and position, for any of the first PERSON_REGION_IDENTITIES training identities with
    its pose jitter, grown by one pixel. What lies outside is scene, whoever the person is: the renderer's
    exact part labels, not a segmenter's guess (held-out identities stay inside; a test checks)."""
    _check_index("person_region", "framing", framing, len(FRAMINGS))
    _check_index("person_region", "position", position, len(POSITIONS))
    scene = Scene(framing=framing, position=position)
    covered = np.zeros((SIZE, SIZE), dtype=bool)
    for k, identity in enumerate(train_identities()[:PERSON_REGION_IDENTITIES]):
        covered |= render(identity, scene, seed=k).labels != BACKGROUND
    return _grown(covered)


# ---------------------------------------------------------------------------------------------------------
# Two people in one scene.
# ---------------------------------------------------------------------------------------------------------
# Layout: faces at x = 15 and 49 px, 8 px per face unit (faces 12-16 px wide, a little smaller than a
# single half-body person's 9 px/unit), with the close-up torso, which does not widen downwards. The widest
# part of a person is that torso, 1.85 units to each side: with the +-3% scale and +-1 px offset jitter a
# person spans at most 15 + 16.3 = 31.3 px to the right (left person) and from 49 - 16.3 = 32.7 px (right
# person), so the two never touch and a gap of at least one pixel column separates them.
TWO_PEOPLE_CENTRE_X: tuple[float, float] = (15.0, 49.0)
TWO_PEOPLE_CENTRE_Y = 20.0
TWO_PEOPLE_SCALE = 8.0
SIDES: tuple[str, ...] = ("left", "right")  # side index 0 / 1; person index in TwoPeopleRender = side + 1


@dataclass(frozen=True)
class TwoPeopleScene:
    """The non-identity factors of a two-person image (indices into BACKGROUNDS, LIGHTING_NAMES and
    CLOTHING_NAMES): one background and lighting, and each person's clothing colour."""

    background: int = 0
    lighting: int = 0
    left_clothing: int = 0
    right_clothing: int = 1

    def __post_init__(self) -> None:
        _check_indices(
            self,
            background=len(BACKGROUNDS),
            lighting=len(LIGHTING_NAMES),
            left_clothing=len(CLOTHING_NAMES),
            right_clothing=len(CLOTHING_NAMES),
        )

    @classmethod
    def random(cls, rng: np.random.Generator) -> TwoPeopleScene:
        """Background and lighting uniform; two different clothing colours, uniform over ordered pairs."""
        background = int(rng.integers(len(BACKGROUNDS)))
        lighting = int(rng.integers(len(LIGHTING_NAMES)))
        left = int(rng.integers(len(CLOTHING_NAMES)))
        right = (left + 1 + int(rng.integers(len(CLOTHING_NAMES) - 1))) % len(CLOTHING_NAMES)
        return cls(background=background, lighting=lighting, left_clothing=left, right_clothing=right)

    @classmethod
    def from_names(
        cls,
        background: str = "beach",
        lighting: str = "neutral",
        left_clothing: str = "red",
        right_clothing: str = "blue",
    ) -> TwoPeopleScene:
        return cls(
            background=BACKGROUNDS.index(background),
            lighting=LIGHTING_NAMES.index(lighting),
            left_clothing=CLOTHING_NAMES.index(left_clothing),
            right_clothing=CLOTHING_NAMES.index(right_clothing),
        )

    @property
    def clothing(self) -> tuple[int, int]:
        """Clothing colour index per side (left, right)."""
        return self.left_clothing, self.right_clothing

    def to_dict(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}

    def names(self) -> dict[str, str]:
        return {
            "background": BACKGROUNDS[self.background],
            "lighting": LIGHTING_NAMES[self.lighting],
            "left_clothing": CLOTHING_NAMES[self.left_clothing],
            "right_clothing": CLOTHING_NAMES[self.right_clothing],
        }


@dataclass(frozen=True, eq=False)
class TwoPeopleRender:
    """One rendered two-person image with its ground truth; per-side tuples are (left, right).

    image: (64, 64, 3) uint8 RGB. labels: (64, 64) uint8 part labels of both people over the scene.
    person_index: (64, 64) uint8, 0 = scene, 1 = left person, 2 = right person (the person whose
    supersamples a pixel holds; 0 where labels is background). face_masks: per side, (64, 64) bool, the
    single-person face mask definition applied to that person alone; inside person_index == side + 1.
    face_boxes: per side, the tight box of its face mask (left, top, right, bottom), right/bottom exclusive.
    background_rgb: mean colour of the background layer (tint included).
    """

    image: np.ndarray
    labels: np.ndarray
    person_index: np.ndarray
    face_masks: tuple[np.ndarray, np.ndarray]
    face_boxes: tuple[tuple[int, int, int, int], tuple[int, int, int, int]]
    identities: tuple[Identity, Identity]
    scene: TwoPeopleScene
    background_rgb: tuple[float, float, float]


def two_people_layers(
    left: Identity, right: Identity, scene: TwoPeopleScene, seed: int = 0
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], np.ndarray]:
    """The supersampled canvas of `render_two_people` before downsampling and tint: planar (3, 256, 256)
    uint8 colour, each person's own (256, 256) part labels (left, right), and the background's mean colour."""
    rng = np.random.default_rng([int(seed), 0x2BE0])
    background, background_rgb = bg.scene_crop(scene.background, rng)
    canvas, labs = background, []
    for side, (ident, clothing) in enumerate(zip((left, right), scene.clothing, strict=True)):
        clothes = CLOTHING_COLOURS[CLOTHING_NAMES[clothing]]
        layout = (TWO_PEOPLE_CENTRE_X[side], TWO_PEOPLE_CENTRE_Y, TWO_PEOPLE_SCALE)
        canvas, lab = _paint_person(canvas, ident, clothes, layout, False, rng)
        labs.append(lab)
    return canvas, (labs[0], labs[1]), background_rgb


def render_two_people(
    left: Identity, right: Identity, scene: TwoPeopleScene, seed: int = 0
) -> TwoPeopleRender:
    """Render `left` and `right` side by side in `scene`. Deterministic in (identities, scene, seed); `seed`
    jitters each person's pose (<= 1 px offset, +-3% scale) and the background pattern's phase. The right
    person is painted onto the left one's canvas; the layout keeps them apart (see TWO_PEOPLE_SCALE)."""
    rgb, (lab_left, lab_right), background_rgb = two_people_layers(left, right, scene, seed)
    t = np.asarray(LIGHTINGS[LIGHTING_NAMES[scene.lighting]], np.float32)
    image = np.clip(np.rint(_downsample(rgb) * t), 0, 255).astype(np.uint8)
    labels, _ = _pixel_labels(np.where(lab_right != BACKGROUND, lab_right, lab_left))
    # A pixel belongs to the person with more of its supersamples (the layout leaves no pixel shared).
    on_left = _block_counts(lab_left)[:, BACKGROUND] < _block_counts(lab_right)[:, BACKGROUND]
    person = np.where(on_left.reshape(SIZE, SIZE), 1, 2).astype(np.uint8)
    person[labels == BACKGROUND] = 0
    # Each person's face mask by the one-person rule, from that person's own labels.
    mask_left, mask_right = _pixel_labels(lab_left)[1], _pixel_labels(lab_right)[1]
    bg_mean = tuple(float(c) for c in background_rgb * t)
    return TwoPeopleRender(
        image=image,
        labels=labels,
        person_index=person,
        face_masks=(mask_left, mask_right),
        face_boxes=(_tight_box(mask_left), _tight_box(mask_right)),
        identities=(left, right),
        scene=scene,
        background_rgb=(bg_mean[0], bg_mean[1], bg_mean[2]),
    )


@cache
def _two_people_regions() -> np.ndarray:
    # Renders of pairs of the first PERSON_REGION_IDENTITIES training identities, each on both sides.
    ids = train_identities()[:PERSON_REGION_IDENTITIES]
    covered = np.zeros((2, SIZE, SIZE), dtype=bool)
    for k, identity in enumerate(ids):
        other = ids[(k + PERSON_REGION_IDENTITIES // 2) % len(ids)]
        person = render_two_people(identity, other, TwoPeopleScene(), seed=k).person_index
        covered[0] |= person == 1
        covered[1] |= person == 2
    return covered


def two_people_region(side: int) -> np.ndarray:
    """(64, 64) bool, read-only: every pixel the person on `side` (0 = left, 1 = right) covers in a
    two-person render, for any of the first PERSON_REGION_IDENTITIES training identities with its pose
    jitter, grown by one pixel (as `person_region`). The two regions are disjoint."""
    _check_index("two_people_region", "side", side, len(SIDES))
    covered = _two_people_regions()[side]
    return _grown(covered)
