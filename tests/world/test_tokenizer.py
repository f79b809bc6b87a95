"""The word-level tokenizer: standard files, offline round trip through transformers, unknown words."""

from __future__ import annotations

import json
import os
from pathlib import Path

from idgen.world.captions import DEMO_PROMPT, VOCABULARY, train_captions, words
from idgen.world.tokenizer import build_tokenizer, save_tokenizer, unknown_words, words_past


def test_round_trip_through_auto_tokenizer(tmp_path: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = save_tokenizer(tmp_path / "tok")
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= set(os.listdir(folder))
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    assert [vocab[t] for t in ("<pad>", "</s>", "<unk>", "<s>")] == [0, 1, 2, 3]
    assert len(vocab) == 4 + len(VOCABULARY)

    built = build_tokenizer()
    for loaded in (AutoTokenizer.from_pretrained(folder), PreTrainedTokenizerFast.from_pretrained(folder)):
        assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id, loaded.bos_token_id) == (
            0,
            1,
            2,
            3,
        )
        assert loaded.model_max_length == built.model_max_length
        texts = [DEMO_PROMPT.upper()] + [t for _, t in train_captions(50, seed=3)]
        ids = loaded(texts)["input_ids"]
        assert ids == built(texts)["input_ids"]
        for text, row in zip(texts, ids, strict=True):
            assert row[-1] == 1 and 2 not in row  # </s> appended, nothing unknown
            assert loaded.convert_ids_to_tokens(row[:-1]) == words(text)
        batch = loaded(texts[:2], padding="max_length", max_length=24)
        assert batch["input_ids"][0][-1] == 0 and len(batch["input_ids"][1]) == 24


def test_unknown_words() -> None:
    assert unknown_words(DEMO_PROMPT) == []
    assert unknown_words("A PERSON on a Beach, wearing a red shirt") == []
    assert unknown_words("a dragon on a beach with a dragon!") == ["dragon", "!"]
    ids = build_tokenizer()("a dragon")["input_ids"]
    assert ids[1] == 2  # <unk>


def test_words_past_the_encoder_window_match_truncation() -> None:
    text = "a person on a beach"  # 5 words + </s> = 6 tokens
    assert words_past(text, 6) == []
    assert words_past(text, 5) == ["beach"]
    assert words_past(text, 4) == ["a", "beach"]
    tok = build_tokenizer()
    kept = tok(text, max_length=4, truncation=True)["input_ids"]
    assert tok.convert_ids_to_tokens(kept) == ["a", "person", "on", "</s>"]


def test_demo_prompt_warnings_name_the_unknown_and_the_dropped_words(capsys) -> None:
    from idgen.cli.generate import warn_demo_prompt

    # 24 tokens ("close-up" is three) + </s>: the demo world's 24-token T5 window drops the last word.
    long = (
        "a close-up photo of a person in a night city in rosy light, wearing an orange shirt, in the centre"
    )
    warn_demo_prompt(long)
    assert capsys.readouterr().err == (
        "idgen: warning: the demo world's T5 reads 24 tokens; only CLIP sees: centre\n"
    )
    warn_demo_prompt("a person on a beach with a giraffe")
    assert capsys.readouterr().err == "idgen: warning: not in the demo world's vocabulary: giraffe\n"
