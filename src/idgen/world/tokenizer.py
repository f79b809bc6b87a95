"""Word-level tokenizer of the demo world, saved as a standard `tokenizer.json` that transformers loads.

Ids: <pad>=0, </s>=1, <unk>=2, <s>=3, then `VOCABULARY` in sorted order. Text is lower-cased, split on
whitespace and into words / single punctuation marks ("close-up" -> "close", "-", "up"), and "</s>" is
appended (T5-style; no <s>). Both tiny text encoders (CLIP-text and T5 stand-ins) share it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

from idgen.world.captions import VOCABULARY

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK, BOS = "<pad>", "</s>", "<unk>", "<s>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, EOS, UNK, BOS)  # ids 0..3
# Longest grammar caption is 32 tokens + </s>; a little headroom for user prompts (longer ones truncate).
MODEL_MAX_LENGTH = 40


def build_backend() -> Tokenizer:
    """The raw `tokenizers.Tokenizer` (no transformers import needed)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in VOCABULARY:
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


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer as a transformers fast tokenizer (pads right with <pad>, truncates at 40)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=build_backend(),
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        bos_token=BOS,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
    )


def save_tokenizer(folder: str | Path) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `folder` (created), so
    `AutoTokenizer.from_pretrained(folder)` loads it offline. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save_pretrained(str(folder))
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
    return build_backend()


def unknown_words(text: str) -> list[str]:
    """Words of `text` outside the vocabulary (normalised as the tokenizer sees them), in order, unique."""
    tok = _backend()
    assert tok.normalizer is not None and tok.pre_tokenizer is not None
    pieces = tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))
    known = set(VOCABULARY)
    out: list[str] = []
    for word, _ in pieces:
        if word not in known and word not in out:
            out.append(word)
    return out


def words_past(text: str, max_tokens: int) -> list[str]:
    """Words of `text` that a `max_tokens` encoder window drops: truncation keeps the first max_tokens - 1
    tokens and the closing </s>, as FluxPipeline's T5 call does."""
    tokens = _backend().encode(text).tokens  # words..., </s>
    return tokens[max_tokens - 1 : -1] if len(tokens) > max_tokens else []
