"""The caption grammar: fixed vocabulary, held-out prompts disjoint from training, the demo prompt."""

from __future__ import annotations

import numpy as np

from idgen.world.captions import (
    BACKGROUND_PHRASES,
    CLOTHING_TEMPLATES,
    CLOTHING_WORDS,
    DEMO_PROMPT,
    HELD_OUT_PAIRS,
    LIGHTING_PHRASES,
    POSITION_PHRASES,
    SUBJECTS,
    TEMPLATES,
    VOCABULARY,
    canonical_caption,
    caption,
    is_held_out,
    scene_words,
    test_prompts,
    train_captions,
    words,
)
from idgen.world.render import BACKGROUNDS, CLOTHING_NAMES, LIGHTING_NAMES, POSITIONS, Scene
from idgen.world.tokenizer import MODEL_MAX_LENGTH

VOCAB = set(VOCABULARY)


def test_phrase_tables_cover_every_factor() -> None:
    assert set(BACKGROUND_PHRASES) == set(BACKGROUNDS)
    assert set(CLOTHING_WORDS) == set(CLOTHING_NAMES)
    assert set(LIGHTING_PHRASES) == set(LIGHTING_NAMES)
    assert set(POSITION_PHRASES) == set(POSITIONS)
    assert list(VOCABULARY) == sorted(VOCAB)


def test_train_captions_use_only_the_vocabulary() -> None:
    pairs = train_captions(3000, seed=0)
    assert pairs == train_captions(3000, seed=0)  # deterministic
    for scene, text in pairs:
        assert set(words(text)) <= VOCAB, text
        assert not is_held_out(scene)
        # The background is always named (one of its phrases appears verbatim).
        assert any(p in text for p in BACKGROUND_PHRASES[BACKGROUNDS[scene.background]]), text
    assert len({t for _, t in pairs}) > 2000  # plenty of phrasings


def test_held_out_prompts() -> None:
    prompts = test_prompts()
    assert len(prompts) == 48 and len({p.text for p in prompts}) == 48
    assert {(p.scene.background, p.scene.clothing_colour) for p in prompts} == HELD_OUT_PAIRS
    assert len(HELD_OUT_PAIRS) == 24
    for b in range(len(BACKGROUNDS)):
        assert sum(1 for pb, _ in HELD_OUT_PAIRS if pb == b) == 2
    assert {c for _, c in HELD_OUT_PAIRS} == set(range(len(CLOTHING_NAMES)))
    for p in prompts:
        assert is_held_out(p.scene) and set(words(p.text)) <= VOCAB
        assert p.text == canonical_caption(p.scene)
    train_texts = {t for _, t in train_captions(5000, seed=1)}
    assert not train_texts & {p.text for p in prompts}


def test_demo_prompt_is_in_the_grammar() -> None:
    assert set(words(DEMO_PROMPT)) <= VOCAB
    scene = Scene.from_names("snow", "red", "night", "close-up", "centre")
    # Template 2, framing not stated, position (centre) left out, snow as "a snowy forest".
    parts = {
        "S": SUBJECTS[None][1],
        "B": BACKGROUND_PHRASES["snow"][1],
        "L": LIGHTING_PHRASES["night"][0],
        "C": CLOTHING_TEMPLATES[0].format(a="a", c="red"),
        "P": None,
    }
    groups = [" ".join(p for k in g if (p := parts[k])) for g in TEMPLATES[2]]
    assert ", ".join(g for g in groups if g) == DEMO_PROMPT
    # Random training captions of that scene contain it (with or without framing and position words).
    rng = np.random.default_rng(0)
    texts = [caption(scene, rng) for _ in range(3000)]
    assert sum(" in a snowy forest at night, wearing a red shirt" in t for t in texts) >= 3


def test_scene_words_and_canonical_caption() -> None:
    scene = Scene.from_names("beach", "orange", "warm", "close-up", "left")
    w = scene_words(scene)
    assert w == {
        "subject": "a close-up photo of a person",
        "background": "on a beach",
        "clothing": "wearing an orange shirt",
        "lighting": "in warm light",
        "position": "on the left",
    }
    assert canonical_caption(scene) == (
        "a close-up photo of a person on a beach in warm light, wearing an orange shirt, on the left"
    )


def test_captions_fit_the_tokenizer_length() -> None:
    longest = sum(
        max(len(words(p)) for p in ps)
        for ps in (
            [p for v in SUBJECTS.values() for p in v],
            [p for v in BACKGROUND_PHRASES.values() for p in v],
            [t.format(a="an", c=w) for t in CLOTHING_TEMPLATES for v in CLOTHING_WORDS.values() for w in v],
            [p for v in LIGHTING_PHRASES.values() for p in v],
            [p for v in POSITION_PHRASES.values() for p in v],
        )
    )
    longest += max(len(t) for t in TEMPLATES) - 1  # commas between groups
    assert longest + 1 <= MODEL_MAX_LENGTH  # + </s>


def test_validation_prompts_are_training_distribution_and_fixed() -> None:
    from idgen.world.captions import validation_prompts

    prompts = validation_prompts()
    assert len(prompts) == 48 and prompts == validation_prompts()
    assert not any(is_held_out(p.scene) for p in prompts)
    assert all(p.text == canonical_caption(p.scene) for p in prompts)
