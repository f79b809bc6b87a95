"""The natural-prompt measurement: its prompts, pairs and table."""

from __future__ import annotations

from collections import Counter

from idgen.world.natural import ENCODINGS, MODES, NATURAL_PROMPTS, natural_pairs, summarise, table
from idgen.world.render import BACKGROUNDS
from idgen.world.tokenizer import unknown_words


def test_two_natural_prompts_per_scene_each_with_unknown_words() -> None:
    assert Counter(scene for _, scene in NATURAL_PROMPTS) == {name: 2 for name in BACKGROUNDS}
    assert all(unknown_words(text) for text, _ in NATURAL_PROMPTS)  # none is a grammar caption


def test_pairs_and_table() -> None:
    pairs = natural_pairs(2)
    assert pairs[:3] == [(0, 0, 700_000), (0, 1, 700_001), (1, 2, 701_000)]
    assert len(pairs) == 48 and len({who for _, who, _ in pairs}) == 48
    rows = []
    for p, _, _ in pairs[:4]:
        row = {f"scene_correct_{m}": p == 0 for m in MODES} | {f"face_{m}": m != "uniform" for m in MODES}
        rows.append(row)
    summary = summarise(rows)
    assert summary["none"]["scene_accuracy"][0] == 0.5 and summary["uniform"]["no_face"] == 4
    text = table({"pairs": 4, "summary": dict.fromkeys(ENCODINGS, summary)})
    assert "| unknown words dropped | uniform | 50.0% ± 56.6 | 4 of 4 |" in text
