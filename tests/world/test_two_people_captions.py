"""Two-person captions: the grammar fits the T5 window, keeps held-out pairs out of training, appends its
words after every existing token id, and leaves every single-person encoding bit-identical."""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from idgen.world.bundle import ASSETS, MAX_TEXT_TOKENS
from idgen.world.captions import (
    BACKGROUND_PHRASES,
    CLOTHING_WORDS,
    HELD_OUT_PAIRS,
    TWO_PEOPLE_VOCABULARY,
    VOCABULARY,
    is_two_people_held_out,
    test_prompts,
    train_captions,
    two_people_canonical_caption,
    two_people_test_prompts,
    two_people_train_captions,
    two_people_validation_prompts,
    words,
)
from idgen.world.render import BACKGROUNDS, CLOTHING_NAMES, LIGHTING_NAMES, TwoPeopleScene
from idgen.world.tokenizer import build_backend, build_tokenizer, known_text, with_subject

ALL_WORDS = set(VOCABULARY) | set(TWO_PEOPLE_VOCABULARY)


@cache
def _backend() -> Tokenizer:
    return build_backend(two_people=True)


def _tokens(text: str) -> list[str]:
    return _backend().encode(text).tokens


def _fits(text: str) -> bool:
    tokens = _tokens(text)
    return len(tokens) <= MAX_TEXT_TOKENS and "<unk>" not in tokens and tokens[-1] == "</s>"


def test_every_canonical_caption_fits_the_window() -> None:
    n = len(CLOTHING_NAMES)
    longest = 0
    for b in range(len(BACKGROUNDS)):
        for lighting in range(len(LIGHTING_NAMES)):
            for left in range(n):
                scene = TwoPeopleScene(b, lighting, left, (left + 1) % n)
                text = two_people_canonical_caption(scene)
                assert _fits(text), text
                longest = max(longest, len(_tokens(text)))
    assert longest == MAX_TEXT_TOKENS  # "in front of a brick wall in rosy light" uses the window exactly
    scene = TwoPeopleScene.from_names("garden", "warm", "red", "blue")
    assert two_people_canonical_caption(scene) == (
        "two people in a garden in warm light, the left one wearing red, the right one wearing blue"
    )


def test_train_captions_fit_name_both_people_and_never_use_held_out_pairs() -> None:
    pairs = two_people_train_captions(1500, seed=0)
    assert pairs[:100] == two_people_train_captions(100, seed=0)
    for scene, text in pairs:
        assert _fits(text) and set(words(text)) <= ALL_WORDS, text
        assert not is_two_people_held_out(scene)
        assert all((scene.background, c) not in HELD_OUT_PAIRS for c in scene.clothing)
        assert any(p in text for p in BACKGROUND_PHRASES[BACKGROUNDS[scene.background]]), text
        left_part, right_part = text.split("right", 1)  # the left person is always named first
        assert "left" in left_part
        assert set(words(left_part)) & set(CLOTHING_WORDS[CLOTHING_NAMES[scene.left_clothing]]), text
        assert set(words(right_part)) & set(CLOTHING_WORDS[CLOTHING_NAMES[scene.right_clothing]]), text
    assert len({t for _, t in pairs}) > 1400
    assert {s.background for s, _ in pairs} == set(range(len(BACKGROUNDS)))


def test_held_out_and_validation_prompts() -> None:
    test = two_people_test_prompts()
    assert len(test) == 48 and len({p.text for p in test}) == 48
    for p in test:
        assert all((p.scene.background, c) in HELD_OUT_PAIRS for c in p.scene.clothing)
        assert p.scene.left_clothing != p.scene.right_clothing
        assert p.text == two_people_canonical_caption(p.scene) and _fits(p.text)
    assert {(p.scene.background, p.scene.left_clothing) for p in test} == HELD_OUT_PAIRS
    validation = two_people_validation_prompts()
    assert len(validation) == 48 and validation == two_people_validation_prompts()
    assert not any(is_two_people_held_out(p.scene) for p in validation)
    assert len({p.scene for p in validation}) == 48


def test_vocabulary_ids_are_stable_and_new_words_come_last() -> None:
    # VOCABULARY as shipped before two-person captions, pinned: every single-person token id is unchanged.
    digest = hashlib.sha256(repr(VOCABULARY).encode()).hexdigest()
    assert digest == "e0dc1a1c585e4efdd18ee96fff2e5b2308689d692248b2d389c979eaa14ef965"
    assert TWO_PEOPLE_VOCABULARY == ("one", "people", "two")
    old, new = build_backend().get_vocab(), build_backend(two_people=True).get_vocab()
    assert len(old) == 4 + len(VOCABULARY) == 109
    assert {w: new[w] for w in old} == old
    assert [new[w] for w in TWO_PEOPLE_VOCABULARY] == [109, 110, 111]


def test_the_world_keeps_the_new_words_and_adds_no_single_subject() -> None:
    text = "two people in a garden, the left one wearing red, the right one wearing blue"
    assert known_text(text) == with_subject(text) == text
    assert with_subject("two happy people in a garden") == "two people in a garden"
    assert with_subject("a happy couple in a garden") == "a person a in a garden"  # no subject kept


def _shipped_encoders() -> tuple[Any, Any]:
    from transformers import CLIPTextModel, T5EncoderModel

    flux = ASSETS / "flux"
    return (
        CLIPTextModel.from_pretrained(str(flux / "text_encoder")).eval(),
        T5EncoderModel.from_pretrained(str(flux / "text_encoder_2")).eval(),
    )


@pytest.mark.slow
def test_shipped_encoders_are_the_base_ones_with_appended_rows() -> None:
    from types import SimpleNamespace

    from idgen.world.generator import extend_text_encoders, text_encoders

    clip, t5 = _shipped_encoders()
    base = SimpleNamespace(text_encoder=None, text_encoder_2=None)
    base.text_encoder, base.text_encoder_2 = text_encoders(4 + len(VOCABULARY))  # the base recipe's
    extend_text_encoders(base, 4 + len(VOCABULARY) + len(TWO_PEOPLE_VOCABULARY))
    for shipped, rebuilt in ((clip, base.text_encoder), (t5, base.text_encoder_2)):
        a, b = shipped.state_dict(), rebuilt.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert shipped.config.vocab_size == len(build_tokenizer(two_people=True))


@pytest.mark.slow
def test_single_person_captions_encode_bit_identically() -> None:
    from idgen.world.generator import text_encoders

    clip, t5 = _shipped_encoders()
    old_clip, old_t5 = text_encoders(4 + len(VOCABULARY))  # bit-identical to the encoders shipped before
    texts = [t for _, t in train_captions(64, seed=9)] + [p.text for p in test_prompts()] + [""]
    old_ids = build_tokenizer()(texts, padding="max_length", max_length=MAX_TEXT_TOKENS, truncation=True)
    new_ids = build_tokenizer(two_people=True)(
        texts, padding="max_length", max_length=MAX_TEXT_TOKENS, truncation=True
    )
    assert old_ids["input_ids"] == new_ids["input_ids"]
    ids = torch.tensor(new_ids["input_ids"])
    with torch.no_grad():
        assert torch.equal(clip(ids).pooler_output, old_clip(ids).pooler_output)
        assert torch.equal(t5(ids).last_hidden_state, old_t5(ids).last_hidden_state)
        two = torch.tensor(build_tokenizer(two_people=True)([two_people_test_prompts()[0].text])["input_ids"])
        assert np.isfinite(t5(two).last_hidden_state.numpy()).all()


def test_growing_an_encoder_keeps_rows_and_the_global_rng() -> None:
    from types import SimpleNamespace

    from idgen.world.generator import extend_text_encoders, text_encoders

    pipe = SimpleNamespace(text_encoder=None, text_encoder_2=None)
    pipe.text_encoder, pipe.text_encoder_2 = text_encoders(109)
    before = pipe.text_encoder_2.get_input_embeddings().weight.clone()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    extend_text_encoders(pipe, 112)
    assert torch.equal(torch.get_rng_state(), state)
    after = pipe.text_encoder_2.get_input_embeddings().weight
    assert after.shape == (112, 64) and torch.equal(after[:109], before)
    assert pipe.text_encoder_2.encoder.embed_tokens.weight is after  # still tied
    assert 0.5 < float(after[109:].std()) < 1.5  # T5's own init scale (initializer_factor 1)
    clip_rows = pipe.text_encoder.get_input_embeddings().weight[109:]
    assert 0.01 < float(clip_rows.std()) < 0.03  # CLIP's (initializer_range 0.02)
    with pytest.raises(ValueError, match="cannot shrink"):
        extend_text_encoders(pipe, 100)
