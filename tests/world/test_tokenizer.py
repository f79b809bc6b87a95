"""The word-level tokenizer: standard files, offline round trip through transformers, unknown words."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import idgen.world.tokenizer as tokenizer_module
from idgen.world.captions import DEMO_PROMPT, VOCABULARY, train_captions, words
from idgen.world.tokenizer import (
    build_tokenizer,
    dropped_message,
    dropped_note,
    known_text,
    load_tokenizers,
    save_tokenizer,
    unknown_words,
    with_subject,
    words_past,
)


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


def test_demo_prompt_warnings_name_the_dropped_words_and_those_past_the_window(capsys) -> None:
    from idgen.cli.generate import warn_demo_prompt

    # 24 tokens ("close-up" is three) + </s>: the demo world's 24-token T5 window drops the last word.
    long = (
        "a close-up photo of a person in a night city in rosy light, wearing an orange shirt, in the centre"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_demo_prompt(long)
        assert capsys.readouterr().err == (
            "idgen: warning: the demo world's T5 reads 24 tokens; only CLIP sees: centre\n"
        )
        assert caught == []
        # Unknown words are dropped before the window is counted: "fluffy" pushes no other word out.
        warn_demo_prompt(long.replace("orange", "fluffy orange"))
        assert capsys.readouterr().err.endswith("only CLIP sees: centre\n")
        warn_demo_prompt("a person on a beach with a platypus")
        assert capsys.readouterr().err == ""
    assert [str(w.message) for w in caught] == [
        "dropped, not in the demo world's vocabulary: fluffy",
        "dropped, not in the demo world's vocabulary: platypus",
    ]
    assert {w.filename for w in caught} == {tokenizer_module.__file__}  # not a library's: the CLI shows it


def test_known_text_drops_exactly_the_unknown_tokens() -> None:
    assert known_text(DEMO_PROMPT) == DEMO_PROMPT  # nothing unknown: the text itself
    assert known_text("A Close-Up photo of a person") == "A Close-Up photo of a person"
    text = "A young woman in a red dress on a city street at night, cinematic lighting."
    assert known_text(text) == "a in a red on a city at night ,"
    tok = build_tokenizer()
    ids = tok(text)["input_ids"]
    assert tok(known_text(text))["input_ids"] == [i for i in ids if i != tok.unk_token_id]
    assert known_text("zebra giraffe") == ""


def test_the_subject_goes_first_only_when_dropped_words_took_it() -> None:
    text = "A young woman in a red dress on a city street at night, cinematic lighting."
    assert with_subject(text) == "a person a in a red on a city at night ,"
    assert with_subject("a man on a beach") == "a person a on a beach"
    assert with_subject("a happy person on a beach") == "a person on a beach"  # it has one
    assert with_subject("on a beach") == "on a beach"  # nothing dropped: as typed
    assert with_subject("zebra") == "a person"
    assert dropped_note("a man on a beach") == (
        "dropped, not in the demo world's vocabulary: man; 'a person' put first"
    )
    assert dropped_note("a happy person") == "dropped, not in the demo world's vocabulary: happy"
    assert dropped_note(DEMO_PROMPT) is None


def test_the_world_tokenizer_drops_unknown_words_and_warns_once(tmp_path: Path) -> None:
    folder = tmp_path / "flux"
    for name in ("tokenizer", "tokenizer_2"):
        save_tokenizer(folder / name)
    loaded = load_tokenizers(folder)
    plain = build_tokenizer()
    text = "a person on a beach holding a surfboard"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for tok in loaded.values():
            assert tok(text)["input_ids"] == plain("a person on a beach a")["input_ids"]
            assert tok("a surfer on a beach")["input_ids"] == plain("a person a on a beach")["input_ids"]
            batch = tok([text, DEMO_PROMPT], padding="max_length", max_length=24)["input_ids"]
            assert (
                batch
                == plain(["a person on a beach a", DEMO_PROMPT], padding="max_length", max_length=24)[
                    "input_ids"
                ]
            )
    assert [str(w.message) for w in caught] == [
        "dropped, not in the demo world's vocabulary: holding, surfboard",
        "dropped, not in the demo world's vocabulary: surfer; 'a person' put first",
    ]


def test_a_dropped_words_warning_is_one_short_line() -> None:
    words = [f"w{i}\x1b[2J" for i in range(4096)]
    message = dropped_message(words)
    assert "\n" not in message and "\x1b" not in message and len(message) < 600
    assert message.startswith("dropped, not in the demo world's vocabulary: w0\\x1b[2J, w1\\x1b[2J, ")
    assert message.endswith(", w19\\x1b[2J (and 4076 more)")
