"""Captions of the demo world: a small template grammar over a fixed vocabulary.

A caption names the scene factors of a render (`Scene`): background, clothing colour, lighting, framing and
position, each through one of a few synonymous phrases, arranged by one of a few templates, e.g.

    "a close-up photo of a person on a beach, wearing a red shirt, in warm light, on the left"
    "a person in a snowy forest at night, wearing a red shirt"

Omitted factors (training captions leave some out, so short user prompts are in distribution) mean:
framing and clothing colour unspecified (any), lighting neutral, position centre.

"A snowy forest" is a phrase of the `snow` scene (its picture *is* a snowy pine forest) and "at night" is
the `night` lighting tint, so the demo prompt `DEMO_PROMPT` renders as snow + night tint + red clothing.

Held-out prompts (never used for training): 24 (background, clothing colour) pairs, two per background,
listed in `HELD_OUT_PAIRS`. Training scenes are drawn without them (`random_train_scene`), so no training
image shows such a pair and no training caption names one; `test_prompts()` gives 48 fixed prompts on
exactly those pairs (each pair once close-up, once half-body), in the canonical phrasing. The
background/clothing *words* are all seen in training, only their combinations are new.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np

from idgen.world.render import (
    BACKGROUNDS,
    CLOTHING_NAMES,
    FRAMINGS,
    LIGHTING_NAMES,
    POSITIONS,
    Scene,
    TwoPeopleScene,
)

DEMO_PROMPT = "a person in a snowy forest at night, wearing a red shirt"

# Subject phrase per framing; key None = framing not stated.
SUBJECTS: dict[int | None, tuple[str, ...]] = {
    None: ("a photo of a person", "a person", "a picture of a person"),
    0: ("a close-up photo of a person", "a close-up portrait of a person", "a headshot of a person"),
    1: ("a half-body photo of a person", "a waist-up photo of a person", "a medium shot of a person"),
}
# The first phrase of each list is the canonical one. No colour words here: they belong to clothing.
BACKGROUND_PHRASES: dict[str, tuple[str, ...]] = {
    "beach": ("on a beach", "on a sandy beach", "at the seaside"),
    "forest": ("in a forest", "in the woods", "among tall trees"),
    "night city": ("in a night city", "in a city after dark", "among city lights"),
    "snow": ("in the snow", "in a snowy forest", "on a snowy field", "in a winter landscape"),
    "desert": ("in a desert", "among sand dunes", "in a sandy desert"),
    "library": ("in a library", "in front of bookshelves", "among shelves of books"),
    "office": ("in an office", "at the office", "in a modern office"),
    "garden": ("in a garden", "in a flower garden", "on a lawn with flowers"),
    "mountain": ("in the mountains", "in front of mountains", "with mountains behind"),
    "underwater": ("underwater", "under the sea", "deep under water"),
    "brick wall": ("in front of a brick wall", "by a brick wall", "against a brick wall"),
    "lavender field": ("in a lavender field", "in a field of lavender", "among rows of lavender"),
}
CLOTHING_WORDS: dict[str, tuple[str, ...]] = {c: (c,) for c in CLOTHING_NAMES} | {"grey": ("grey", "gray")}
CLOTHING_TEMPLATES: tuple[str, ...] = (
    "wearing {a} {c} shirt",
    "in {a} {c} shirt",
    "wearing {a} {c} sweater",
    "wearing {a} {c} t-shirt",
    "dressed in {c}",
)
LIGHTING_PHRASES: dict[str, tuple[str, ...]] = {
    "neutral": ("in daylight", "in natural light", "in soft light"),
    "warm": ("in warm light", "in golden light", "at sunset"),
    "cool": ("in cool light", "in cold light", "in bluish light"),
    "rosy": ("in rosy light", "in a rosy glow", "in pinkish light"),
    "night": ("at night", "by night", "in moonlight"),
}
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "on the left side", "to the left"),
    "centre": ("in the centre", "in the middle", "in the center"),
    "right": ("on the right", "on the right side", "to the right"),
}
# Templates: groups of parts; parts inside a group are joined by spaces, groups by ", ". Parts:
# S subject (with framing), B background, C clothing, L lighting, P position. Omitted parts vanish.
TEMPLATES: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("S", "B"), ("C",), ("L",), ("P",)),
    (("S", "C", "B"), ("L",), ("P",)),
    (("S", "B", "L"), ("C",), ("P",)),
    (("S", "P"), ("B",), ("C",), ("L",)),
)
CANONICAL_TEMPLATE = 2  # the demo prompt's form: "<subject> <background> <lighting>, <clothing>, <position>"

# Probabilities of leaving a factor out of a training caption (lighting only when neutral, position only
# when centre: those are the defaults an omission stands for).
P_OMIT_FRAMING, P_OMIT_CLOTHING, P_OMIT_LIGHTING, P_OMIT_POSITION = 0.2, 0.1, 0.5, 0.5

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks, as the tokenizer splits them."""
    return _WORD.findall(text.lower())


def _phrases(table: Mapping[Any, tuple[str, ...]]) -> list[str]:
    return [p for ps in table.values() for p in ps]


def _all_phrases() -> list[str]:
    clothing = [clothing_phrase(t, w) for t in CLOTHING_TEMPLATES for w in _phrases(CLOTHING_WORDS)]
    return [
        *_phrases(SUBJECTS),
        *_phrases(BACKGROUND_PHRASES),
        *clothing,
        *_phrases(LIGHTING_PHRASES),
        *_phrases(POSITION_PHRASES),
        ",",
        DEMO_PROMPT,
    ]


def clothing_phrase(template: str, colour_word: str) -> str:
    """A clothing template filled with a colour word and its article ("wearing an orange shirt")."""
    return template.format(a="an" if colour_word[0] in "aeiou" else "a", c=colour_word)


def pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    """One of `options`, uniformly (one integer drawn from `rng`)."""
    return options[int(rng.integers(len(options)))]


VOCABULARY: tuple[str, ...] = tuple(sorted({w for p in _all_phrases() for w in words(p)}))
"""Every word (and punctuation mark) the grammar can produce, sorted; the tokenizer's vocabulary."""


def assemble(template: tuple[tuple[str, ...], ...], parts: dict[str, str | None]) -> str:
    """A caption from a template's groups of part keys; parts that are None are left out."""
    groups = [" ".join(p for k in group if (p := parts[k])) for group in template]
    return ", ".join(g for g in groups if g)


def caption(scene: Scene, rng: np.random.Generator, omit: bool = True) -> str:
    """A random caption of `scene`: random template and synonyms; with `omit`, factors are left out with the
    probabilities P_OMIT_* (only where the omission's meaning is consistent with the scene)."""
    n = scene.names()
    framing: int | None = scene.framing
    if omit and rng.random() < P_OMIT_FRAMING:
        framing = None
    parts: dict[str, str | None] = {
        "S": pick(SUBJECTS[framing], rng),
        "B": pick(BACKGROUND_PHRASES[n["background"]], rng),
        "C": clothing_phrase(pick(CLOTHING_TEMPLATES, rng), pick(CLOTHING_WORDS[n["clothing_colour"]], rng)),
        "L": pick(LIGHTING_PHRASES[n["lighting"]], rng),
        "P": pick(POSITION_PHRASES[n["position"]], rng),
    }
    if omit:
        if rng.random() < P_OMIT_CLOTHING:
            parts["C"] = None
        if n["lighting"] == "neutral" and rng.random() < P_OMIT_LIGHTING:
            parts["L"] = None
        if n["position"] == "centre" and rng.random() < P_OMIT_POSITION:
            parts["P"] = None
    return assemble(TEMPLATES[int(rng.integers(len(TEMPLATES)))], parts)


def scene_words(scene: Scene) -> dict[str, str]:
    """The canonical phrase of each factor, e.g. {"subject": "a close-up photo of a person",
    "background": "on a beach", "clothing": "wearing a red shirt", "lighting": "in daylight",
    "position": "on the left"}."""
    n = scene.names()
    return {
        "subject": SUBJECTS[scene.framing][0],
        "background": BACKGROUND_PHRASES[n["background"]][0],
        "clothing": clothing_phrase(CLOTHING_TEMPLATES[0], CLOTHING_WORDS[n["clothing_colour"]][0]),
        "lighting": LIGHTING_PHRASES[n["lighting"]][0],
        "position": POSITION_PHRASES[n["position"]][0],
    }


def canonical_caption(scene: Scene) -> str:
    """The one deterministic, fully explicit caption of `scene` (canonical phrases, canonical template)."""
    w = scene_words(scene)
    parts: dict[str, str | None] = {
        "S": w["subject"],
        "B": w["background"],
        "C": w["clothing"],
        "L": w["lighting"],
        "P": w["position"],
    }
    return assemble(TEMPLATES[CANONICAL_TEMPLATE], parts)


# Two clothing colours per background, spread so that every colour is held out with 2-3 backgrounds.
HELD_OUT_PAIRS: frozenset[tuple[int, int]] = frozenset(
    (b, (3 * b + k) % len(CLOTHING_NAMES)) for b in range(len(BACKGROUNDS)) for k in (0, 6)
)


def is_held_out(scene: Scene) -> bool:
    """True when the scene's (background, clothing colour) pair is reserved for evaluation."""
    return (scene.background, scene.clothing_colour) in HELD_OUT_PAIRS


def random_train_scene(rng: np.random.Generator) -> Scene:
    """A uniformly random scene that is not held out (rejection sampling)."""
    while True:
        scene = Scene.random(rng)
        if not is_held_out(scene):
            return scene


_S = TypeVar("_S")


def _captioned(
    n: int,
    rng: np.random.Generator,
    draw: Callable[[np.random.Generator], _S],
    describe: Callable[[_S, np.random.Generator], str],
) -> list[tuple[_S, str]]:
    """`n` scenes from `draw`, each followed by its caption from `describe`, both drawing from `rng`."""
    out = []
    for _ in range(n):
        scene = draw(rng)
        out.append((scene, describe(scene, rng)))
    return out


def train_captions(n: int, seed: int = 0) -> list[tuple[Scene, str]]:
    """`n` (scene, caption) pairs for training, deterministic in `seed`; never a held-out pair."""
    rng = np.random.default_rng([int(seed), 0xCA7])
    return _captioned(n, rng, random_train_scene, caption)


@dataclass(frozen=True)
class Prompt:
    """An evaluation prompt and the scene it asks for."""

    text: str
    scene: Scene


@lru_cache(maxsize=1)
def _test_prompts() -> tuple[Prompt, ...]:
    prompts = []
    for b, c in sorted(HELD_OUT_PAIRS):
        for framing in range(len(FRAMINGS)):
            scene = Scene(
                background=b,
                clothing_colour=c,
                lighting=(b + c + framing) % len(LIGHTING_NAMES),
                framing=framing,
                position=(b + 2 * c + framing) % len(POSITIONS),
            )
            prompts.append(Prompt(canonical_caption(scene), scene))
    return tuple(prompts)


def test_prompts() -> list[Prompt]:
    """The 48 fixed held-out evaluation prompts (see the module docstring)."""
    return list(_test_prompts())


@lru_cache(maxsize=1)
def validation_prompts() -> list[Prompt]:
    """48 fixed prompts on training-distribution scenes (no held-out pair), in the canonical phrasing, for
    choosing method settings without looking at the held-out prompts."""
    rng = np.random.default_rng([0xBA1, 48])
    scenes = [random_train_scene(rng) for _ in range(48)]
    return [Prompt(canonical_caption(scene), scene) for scene in scenes]


# Not a test: keeps pytest from collecting it in test modules that import it by name.
test_prompts.__test__ = False  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------------------
# Two people in one image (`render.TwoPeopleScene`): "two people in a garden in warm light, the left one
# wearing red, the right one wearing blue". The left person is always named first.
# ---------------------------------------------------------------------------------------------------------
TWO_PEOPLE_SUBJECTS: tuple[str, ...] = ("two people", "a photo of two people", "a picture of two people")
# One person's part: {side} is "left" or "right", {clothing} a clothing phrase. First = canonical.
TWO_PEOPLE_SIDE_TEMPLATES: tuple[str, ...] = (
    "the {side} one {clothing}",
    "the one on the {side} {clothing}",
    "the person on the {side} {clothing}",
)
TWO_PEOPLE_CLOTHING_TEMPLATES: tuple[str, ...] = (
    "wearing {c}",
    "in {c}",
    "dressed in {c}",
    "wearing {a} {c} shirt",
    "in {a} {c} shirt",
    "wearing {a} {c} sweater",
)
# Groups as in TEMPLATES; parts: S subject, B background, L lighting, 0 left person, 1 right person.
TWO_PEOPLE_TEMPLATES: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("S", "B", "L"), ("0",), ("1",)),
    (("S", "B"), ("0",), ("1",), ("L",)),
)
TWO_PEOPLE_MAX_WORDS = 23  # the T5 window (bundle.MAX_TEXT_TOKENS = 24) less the closing </s>


def _two_people_phrases() -> list[str]:
    clothing = [
        clothing_phrase(t, w) for t in TWO_PEOPLE_CLOTHING_TEMPLATES for w in _phrases(CLOTHING_WORDS)
    ]
    sides = [t.format(side=s, clothing="") for t in TWO_PEOPLE_SIDE_TEMPLATES for s in ("left", "right")]
    return [*TWO_PEOPLE_SUBJECTS, *clothing, *sides]


TWO_PEOPLE_VOCABULARY: tuple[str, ...] = tuple(
    sorted({w for p in _two_people_phrases() for w in words(p)} - set(VOCABULARY))
)
"""The words two-person captions add to `VOCABULARY`, sorted; the tokenizer appends them after it, so every
existing token id stays as it was."""


def _person_phrase(side: str, colour: str, rng: np.random.Generator) -> str:
    clothing = clothing_phrase(pick(TWO_PEOPLE_CLOTHING_TEMPLATES, rng), pick(CLOTHING_WORDS[colour], rng))
    return pick(TWO_PEOPLE_SIDE_TEMPLATES, rng).format(side=side, clothing=clothing)


def _two_people_parts(scene: TwoPeopleScene, rng: np.random.Generator, omit: bool) -> dict[str, str | None]:
    n = scene.names()
    parts: dict[str, str | None] = {
        "S": pick(TWO_PEOPLE_SUBJECTS, rng),
        "B": pick(BACKGROUND_PHRASES[n["background"]], rng),
        "L": pick(LIGHTING_PHRASES[n["lighting"]], rng),
        "0": _person_phrase("left", n["left_clothing"], rng),
        "1": _person_phrase("right", n["right_clothing"], rng),
    }
    if omit and n["lighting"] == "neutral" and rng.random() < P_OMIT_LIGHTING:
        parts["L"] = None
    return parts


def two_people_caption(scene: TwoPeopleScene, rng: np.random.Generator, omit: bool = True) -> str:
    """A random caption of a two-person scene (random template and synonyms; with `omit`, neutral lighting
    is left out with probability P_OMIT_LIGHTING). Drawn again until it fits TWO_PEOPLE_MAX_WORDS words;
    the canonical caption, which always fits, after 20 tries."""
    for _ in range(20):
        template = TWO_PEOPLE_TEMPLATES[int(rng.integers(len(TWO_PEOPLE_TEMPLATES)))]
        text = assemble(template, _two_people_parts(scene, rng, omit))
        if len(words(text)) <= TWO_PEOPLE_MAX_WORDS:
            return text
    return two_people_canonical_caption(scene)  # pragma: no cover - a short draw comes first in practice


def two_people_canonical_caption(scene: TwoPeopleScene) -> str:
    """The deterministic caption of a two-person scene: canonical phrases, the first template, lighting
    always named; at most TWO_PEOPLE_MAX_WORDS words for every scene (a test checks all of them)."""
    n = scene.names()

    def person(side: str, colour: str) -> str:
        clothing = clothing_phrase(TWO_PEOPLE_CLOTHING_TEMPLATES[0], CLOTHING_WORDS[colour][0])
        return TWO_PEOPLE_SIDE_TEMPLATES[0].format(side=side, clothing=clothing)

    parts: dict[str, str | None] = {
        "S": TWO_PEOPLE_SUBJECTS[0],
        "B": BACKGROUND_PHRASES[n["background"]][0],
        "L": LIGHTING_PHRASES[n["lighting"]][0],
        "0": person("left", n["left_clothing"]),
        "1": person("right", n["right_clothing"]),
    }
    return assemble(TWO_PEOPLE_TEMPLATES[0], parts)


def is_two_people_held_out(scene: TwoPeopleScene) -> bool:
    """True when either person's (background, clothing colour) pair is reserved for evaluation."""
    return any((scene.background, c) in HELD_OUT_PAIRS for c in scene.clothing)


def random_train_two_people_scene(rng: np.random.Generator) -> TwoPeopleScene:
    """A random two-person scene (`TwoPeopleScene.random`) with no held-out pair on either person."""
    while True:
        scene = TwoPeopleScene.random(rng)
        if not is_two_people_held_out(scene):
            return scene


def two_people_train_captions(n: int, seed: int = 0) -> list[tuple[TwoPeopleScene, str]]:
    """`n` (two-person scene, caption) pairs for training, deterministic in `seed`; never a held-out pair."""
    rng = np.random.default_rng([int(seed), 0x2CA7])
    return _captioned(n, rng, random_train_two_people_scene, two_people_caption)


@dataclass(frozen=True)
class TwoPeoplePrompt:
    """An evaluation prompt and the two-person scene it asks for."""

    text: str
    scene: TwoPeopleScene


@lru_cache(maxsize=1)
def _two_people_test_prompts() -> tuple[TwoPeoplePrompt, ...]:
    # Per background its two held-out colours, once in each order, each in two lightings.
    prompts = []
    for b in range(len(BACKGROUNDS)):
        first, second = sorted(c for bb, c in HELD_OUT_PAIRS if bb == b)
        for k, (left, right) in enumerate(((first, second), (second, first))):
            for j in range(2):
                lighting = (b + 2 * k + 3 * j) % len(LIGHTING_NAMES)
                scene = TwoPeopleScene(b, lighting, left, right)
                prompts.append(TwoPeoplePrompt(two_people_canonical_caption(scene), scene))
    return tuple(prompts)


def two_people_test_prompts() -> list[TwoPeoplePrompt]:
    """48 fixed held-out two-person prompts: both people wear a colour held out with the background
    (`HELD_OUT_PAIRS`); canonical phrasing."""
    return list(_two_people_test_prompts())


@lru_cache(maxsize=1)
def _two_people_validation_prompts() -> tuple[TwoPeoplePrompt, ...]:
    rng = np.random.default_rng([0xBA1, 2, 48])
    scenes: dict[TwoPeopleScene, None] = {}
    while len(scenes) < 48:
        scenes.setdefault(random_train_two_people_scene(rng))
    return tuple(TwoPeoplePrompt(two_people_canonical_caption(s), s) for s in scenes)


def two_people_validation_prompts() -> list[TwoPeoplePrompt]:
    """48 fixed, distinct two-person prompts on training-distribution scenes (no held-out pair), canonical
    phrasing, for choosing method settings without looking at the held-out prompts."""
    return list(_two_people_validation_prompts())


two_people_test_prompts.__test__ = False  # type: ignore[attr-defined]
