"""Word-level tokenizer of the demo world, saved as a standard `tokenizer.json` that transformers loads.

Ids: <pad>=0, </s>=1, <unk>=2, <s>=3, then `VOCABULARY` in sorted order; the two-person tokenizer (the
demo FLUX's, `two_people=True`) appends `TWO_PEOPLE_VOCABULARY` after those, so every id of the single-person
vocabulary is the same in both. Text is lower-cased, split on
whitespace and into words / single punctuation marks ("close-up" -> "close", "-", "up"), and "</s>" is
appended (T5-style; no <s>). Both tiny text encoders (CLIP-text and T5 stand-ins) share it.

A prompt's words outside the vocabulary would each become <unk>, which no training caption contains and
which pulls the picture off its scene; the demo world drops them before encoding instead
(`WorldTokenizer`, loaded by `load_tokenizers`), and a warning names them.
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

from idgen.validation import shown
from idgen.world.captions import TWO_PEOPLE_VOCABULARY, VOCABULARY

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK, BOS = "<pad>", "</s>", "<unk>", "<s>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, EOS, UNK, BOS)  # ids 0..3
# Longest grammar caption is 32 tokens + </s>; a little headroom for user prompts (longer ones truncate).
MODEL_MAX_LENGTH = 40
SUBJECT, SUBJECT_WORD = "a person", "person"  # the subject of the single-person captions
SUBJECT_WORDS = frozenset({SUBJECT_WORD, "people"})  # a kept word naming the subject: nothing is put first
MAX_NAMED_WORDS = 20  # words a dropped-words warning lists; the rest are counted


def vocabulary(two_people: bool = False) -> tuple[str, ...]:
    """The words after the special tokens, in id order: `VOCABULARY`, then (`two_people`) the new words."""
    return (*VOCABULARY, *TWO_PEOPLE_VOCABULARY) if two_people else VOCABULARY


def build_backend(two_people: bool = False) -> Tokenizer:
    """The raw `tokenizers.Tokenizer` (no transformers import needed); `two_people` appends the two-person
    words (the demo FLUX's tokenizer; the evaluator CLIP's keeps the single-person vocabulary)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in vocabulary(two_people):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # Same split as captions.words: runs of word characters, or one punctuation mark at a time.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\w+|[^\w\s]"), behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, vocab[EOS])]
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def build_tokenizer(two_people: bool = False) -> PreTrainedTokenizerFast:
    """The tokenizer as a transformers fast tokenizer (pads right with <pad>, truncates at 40)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=build_backend(two_people),
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        bos_token=BOS,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
    )


def save_tokenizer(folder: str | Path, two_people: bool = False) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `folder` (created), so
    `AutoTokenizer.from_pretrained(folder)` loads it offline. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer(two_people).save_pretrained(str(folder))
    # Portability: transformers 5 writes its own class name ("TokenizersBackend") and no special-tokens map;
    # transformers 4 needs "PreTrainedTokenizerFast", which 5 also accepts.
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return folder


@lru_cache(maxsize=1)
def _backend() -> Tokenizer:
    return build_backend(two_people=True)


@lru_cache(maxsize=1)
def _known() -> frozenset[str]:
    # The demo FLUX's vocabulary (two-person words included): what `WorldTokenizer` keeps.
    return frozenset(vocabulary(two_people=True))


def _pieces(text: str) -> list[str]:
    """Words and punctuation marks of `text`, normalised and split as the tokenizer does."""
    tok = _backend()
    assert tok.normalizer is not None and tok.pre_tokenizer is not None
    return [word for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))]


def unknown_words(text: str) -> list[str]:
    """Words of `text` outside the vocabulary (normalised as the tokenizer sees them), in order, unique."""
    out: list[str] = []
    for word in _pieces(text):
        if word not in _known() and word not in out:
            out.append(word)
    return out


def known_text(text: str) -> str:
    """`text` without its words outside the vocabulary: unchanged when every word is known, else its known
    words joined by spaces, which the tokenizer splits into the same tokens, less the <unk>s."""
    pieces = _pieces(text)
    if all(word in _known() for word in pieces):
        return text
    return " ".join(word for word in pieces if word in _known())


def with_subject(text: str) -> str:
    """`known_text(text)`, with the world's single subject, "a person", put first when words were dropped and
    none left names a subject ("person", or "people" of "two people"): natural prompts name their subject
    with words the world does not know ("a young woman", "an explorer"), and every caption it was trained
    on has one."""
    kept = known_text(text)
    if kept == text or SUBJECT_WORDS & set(_pieces(kept)):
        return kept
    return f"{SUBJECT} {kept}".strip()


def dropped_message(words: list[str], subject_added: bool = False) -> str:
    """One line naming the dropped words: at most MAX_NAMED_WORDS, each shown safely, then a count; and
    whether the world's subject was put first."""
    named = ", ".join(shown(w, 40) for w in words[:MAX_NAMED_WORDS])
    more = f" (and {len(words) - MAX_NAMED_WORDS} more)" if len(words) > MAX_NAMED_WORDS else ""
    subject = f"; {SUBJECT!r} put first" if subject_added else ""
    return shown(f"dropped, not in the demo world's vocabulary: {named}{more}{subject}", 400)


_WARNED: set[tuple[str, ...]] = set()  # word lists already named in this process


def dropped_note(text: str) -> str | None:
    """The one-line note on what the world drops from `text` (and whether it adds the subject), or None."""
    words = unknown_words(text)
    return dropped_message(words, with_subject(text) != known_text(text)) if words else None


def warn_unknown(text: str) -> None:
    """Warn (once per process for each list of words) that `text`'s unknown words are dropped. The warning
    is attributed to this module, so the CLI's filter on library warnings lets it through."""
    words = tuple(unknown_words(text))
    note = dropped_note(text)
    if note is not None and words not in _WARNED:
        _WARNED.add(words)
        warnings.warn(note, UserWarning, stacklevel=1)


def drop_unknown(text: str) -> str:
    """What the world encodes of `text` (`with_subject`), warning about what it drops (`warn_unknown`)."""
    warn_unknown(text)
    return with_subject(text)


def words_past(text: str, max_tokens: int) -> list[str]:
    """Words of `text` that a `max_tokens` encoder window drops: truncation keeps the first max_tokens - 1
    tokens and the closing </s>, as FluxPipeline's T5 call does."""
    tokens = _backend().encode(text).tokens  # words..., </s>
    return tokens[max_tokens - 1 : -1] if len(tokens) > max_tokens else []


@lru_cache(maxsize=1)
def world_tokenizer_class() -> type[PreTrainedTokenizerFast]:
    """`WorldTokenizer`: the fast tokenizer, dropping words outside the vocabulary (with a warning) before
    encoding. Built on first use, so that importing this module does not import transformers."""
    from transformers import PreTrainedTokenizerFast

    class WorldTokenizer(PreTrainedTokenizerFast):
        def __call__(self, text: Any = None, *args: Any, **kwargs: Any) -> Any:
            if isinstance(text, str):
                text = drop_unknown(text)
            elif isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
                text = [drop_unknown(t) for t in text]
            return super().__call__(text, *args, **kwargs)

    return WorldTokenizer


def load_tokenizers(flux_folder: str | Path) -> dict[str, PreTrainedTokenizerFast]:
    """The two tokenizers of a demo-world FluxPipeline folder as `WorldTokenizer`s, as keyword arguments for
    `FluxPipeline.from_pretrained`: every entry that samples the demo world encodes through them."""
    folder = Path(flux_folder)
    cls = world_tokenizer_class()
    return {name: cls.from_pretrained(str(folder / name)) for name in ("tokenizer", "tokenizer_2")}
