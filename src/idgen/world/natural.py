"""Natural prompts on the demo world: scene accuracy and faceless images, as typed, with the words
outside the vocabulary dropped, and with the world's subject put first where the dropped words held it.

    python -m idgen.world.natural [--per-prompt 4] [--json out.json]

A user writes "a young woman in a red dress on a city street at night, cinematic lighting", not the
grammar's captions. `NATURAL_PROMPTS` are 24 such prompts, two per scene, written once, before any was
measured, and never tuned. Each is generated for held-out identities (no identity, uniform and spatial,
same seeds) in three encodings: as typed through the plain tokenizer, where every unknown word becomes
<unk>; with those words dropped (`tokenizer.known_text`); and as the world's own tokenizer encodes it
(`tokenizer.with_subject`: dropped, and "a person" first when no kept word names the subject). The
evaluator CLIP's zero-shot scene class is compared with the scene the prompt names, and the evaluator
segmenter counts the images in which it finds no face.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor

from idgen.eval.metrics import mean_ci_normal as mean_ci
from idgen.io import atomic_write_text
from idgen.pipelines.names import NONE, SPATIAL, UNIFORM
from idgen.world.render import BACKGROUNDS

# (prompt, the scene it names). Written before measuring; the first is the example users reported.
NATURAL_PROMPTS: tuple[tuple[str, str], ...] = (
    ("a young woman in a red dress on a city street at night, cinematic lighting", "night city"),
    ("a tired nurse walking home through the city lights, rainy evening", "night city"),
    ("portrait of an old man with a grey beard standing on a sandy beach at sunset", "beach"),
    ("a teenager taking a selfie on the beach, summer vibes", "beach"),
    ("a smiling girl walking through a dense forest, soft morning light", "forest"),
    ("a man strolling in the woods in autumn, golden hour", "forest"),
    ("a man in a blue jacket skiing in the snow, bright winter day", "snow"),
    ("a girl in a white sweater in a winter landscape, snowflakes falling", "snow"),
    ("an explorer crossing the desert under a scorching sun, wide shot", "desert"),
    ("a fashion model posing among sand dunes, editorial shot", "desert"),
    ("a student reading quietly in an old library, warm lamplight", "library"),
    ("a librarian stacking books in front of bookshelves, cosy atmosphere", "library"),
    ("a businesswoman in a grey suit sitting at her desk in a modern office", "office"),
    ("headshot of a bearded man in an office, corporate photo, sharp focus", "office"),
    ("a child playing in a garden full of roses, spring afternoon", "garden"),
    ("an elderly woman gardening in a flower garden, wearing a green apron", "garden"),
    ("a hiker with a backpack resting in the mountains, dramatic clouds", "mountain"),
    ("a climber on a rocky summit with mountains behind, clear blue sky", "mountain"),
    ("a diver swimming underwater near a coral reef, rays of light", "underwater"),
    ("a scuba diver deep under the sea, surrounded by fish", "underwater"),
    ("a skateboarder leaning against a brick wall, street photography", "brick wall"),
    ("a young man in a hoodie standing by a brick wall, overcast day", "brick wall"),
    ("a woman in a straw hat walking through a lavender field in provence", "lavender field"),
    ("a painter sitting in a field of lavender at dusk, impressionist mood", "lavender field"),
)
MODES = (NONE, UNIFORM, SPATIAL)
ENCODINGS = ("as typed", "unknown words dropped", "dropped, subject added")
SEED_OFFSET = 700_000  # seeds of their own: never those of the gates' pairs


def natural_pairs(per_prompt: int) -> list[tuple[int, int, int]]:
    """(prompt index, held-out identity, seed) for every prompt, `per_prompt` identities each."""
    n_people = 100
    return [
        (p, (p * per_prompt + k) % n_people, SEED_OFFSET + 1000 * p + k)
        for p in range(len(NATURAL_PROMPTS))
        for k in range(per_prompt)
    ]


@contextmanager
def plain_tokenizers(pipe: Any) -> Iterator[None]:
    """Encode with the plain word-level tokenizer (unknown words become <unk>), as before dropping."""
    from idgen.world.tokenizer import build_tokenizer

    saved = pipe.flux.tokenizer, pipe.flux.tokenizer_2
    pipe.flux.tokenizer, pipe.flux.tokenizer_2 = build_tokenizer(), build_tokenizer()
    try:
        yield
    finally:
        pipe.flux.tokenizer, pipe.flux.tokenizer_2 = saved


def encode(text: str, encoding: str) -> str:
    """The prompt as each encoding passes it to the world (whose tokenizer leaves known words alone)."""
    from idgen.world.tokenizer import known_text, with_subject

    return {ENCODINGS[0]: text, ENCODINGS[1]: known_text(text), ENCODINGS[2]: with_subject(text)}[encoding]


def _images(pipe: Any, feats: Any, chunk: list[tuple[int, int, int]], encoding: str) -> dict[str, Tensor]:
    from idgen.world.gates import generate, identity_tokens, policies

    prompts = [encode(NATURAL_PROMPTS[p][0], encoding) for p, _, _ in chunk]
    seeds = [s for _, _, s in chunk]
    tokens, uncond = identity_tokens(pipe, feats, [who for _, who, _ in chunk])
    modes = policies(pipe)
    out = {NONE: generate(pipe, prompts, seeds, None, None)}
    for mode in MODES[1:]:
        out[mode] = generate(pipe, prompts, seeds, tokens, modes[mode], uncond)
    return out


def _rows(ev: Any, chunk: list[tuple[int, int, int]], images: dict[str, Tensor]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"prompt": p, "identity": who, "seed": s} for p, who, s in chunk]
    for mode in MODES:
        scenes = ev.clip.classify_scene(images[mode])
        _, boxes = ev.segmenter.detect(images[mode])
        for j, (p, _, _) in enumerate(chunk):
            rows[j][f"scene_{mode}"] = BACKGROUNDS[int(scenes[j])]
            rows[j][f"scene_correct_{mode}"] = rows[j][f"scene_{mode}"] == NATURAL_PROMPTS[p][1]
            rows[j][f"face_{mode}"] = boxes[j] is not None
    return rows


def run(per_prompt: int = 4, batch: int = 48, encodings: tuple[str, ...] = ENCODINGS) -> dict[str, Any]:
    """Rows and summary of every natural pair, for both encodings."""
    from idgen.world.bundle import load_world
    from idgen.world.gates import references

    pipe = load_world()
    evaluators, feats = references(pipe, "test")
    todo = natural_pairs(per_prompt)
    result: dict[str, Any] = {"pairs": len(todo), "rows": {}, "summary": {}}
    for encoding in encodings:
        rows: list[dict[str, Any]] = []
        with warnings.catch_warnings(), plain_tokenizers(pipe) if encoding == ENCODINGS[0] else nullcontext():
            warnings.filterwarnings("ignore", message="dropped, not in the demo world's vocabulary")
            for start in range(0, len(todo), batch):
                chunk = todo[start : start + batch]
                rows += _rows(evaluators, chunk, _images(pipe, feats, chunk, encoding))
        result["rows"][encoding] = rows
        result["summary"][encoding] = summarise(rows)
    return result


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        mode: {
            "scene_accuracy": mean_ci([float(r[f"scene_correct_{mode}"]) for r in rows]),
            "no_face": sum(not r[f"face_{mode}"] for r in rows),
        }
        for mode in MODES
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| prompt words | mode | scene accuracy | images without a face |",
        "|---|---|---|---|",
    ]
    for encoding in result["summary"]:
        for mode in MODES:
            s = result["summary"][encoding][mode]
            acc = s["scene_accuracy"]
            lines.append(
                f"| {encoding} | {mode} | {acc[0] * 100:.1f}% ± {acc[1] * 100:.1f} | "
                f"{s['no_face']} of {result['pairs']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-prompt", type=int, default=4, help="held-out identities per prompt")
    parser.add_argument("--json", help="write the rows and the summary here")
    parser.add_argument("--encoding", choices=ENCODINGS, action="append", help="only these (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from idgen.world.bundle import quiet_prompt_truncation

    quiet_prompt_truncation()
    result = run(args.per_prompt, encodings=tuple(args.encoding or ENCODINGS))
    print(table(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
