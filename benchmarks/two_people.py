"""Scene adherence of the demo world's base model on single-person and two-person prompts (no identity).

    python benchmarks/two_people.py [--assets FOLDER] [--seeds 4] [--split test|validation] [--json out.json]
        [--skip-single]

- single: the gates' "scene adherence of the base model" (`idgen.world.gates`): the evaluator CLIP's
  zero-shot scene class of the no-identity image, on the gates' 300 held-out (identity, prompt, seed) pairs;
- two people, on `two_people_test_prompts()` (or `--split validation`: `two_people_validation_prompts()`)
  x `--seeds` seeds:
  - both present: the evaluator segmenter finds a face region (>= its `min_pixels`) inside each side's
    `two_people_region`;
  - clothing: per side, the clothing colour the multi-identity gates read (`multi_gates.clothing_colours`:
    the nearest, under the prompt's lighting tint, to the median colour of that side's clothes pixels);
  - scene: the evaluator CLIP's scene class.
  The same measures on the renderer's own images of the prompts' scenes (`--truth`) show what they read
  when the picture is exactly right.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from idgen.world.captions import TwoPeoplePrompt, two_people_test_prompts, two_people_validation_prompts
from idgen.world.multi_gates import clothing_colours
from idgen.world.render import (
    render_two_people,
    test_identities,
    two_people_region,
)

SEED_BASE = 7_000_000


def two_people_rows(images: Tensor, prompts: list[TwoPeoplePrompt], clip: Any, segmenter: Any) -> list[dict]:
    from idgen.world.evaluators import largest_region_boxes

    masks, _ = segmenter.detect(images)
    scenes = clip.classify_scene(images)
    colours = clothing_colours(images, [prompt.scene.lighting for prompt in prompts])
    rows = []
    for j, prompt in enumerate(prompts):
        row: dict[str, Any] = {
            "prompt": prompt.text,
            "scene_correct": int(scenes[j]) == prompt.scene.background,
        }
        for side, name in enumerate(("left", "right")):
            region = torch.from_numpy(two_people_region(side).copy())
            box = largest_region_boxes((masks[j] & region)[None], segmenter.config.min_pixels)[0]
            row[f"face_{name}"] = box is not None
            row[f"clothing_{name}_correct"] = colours[j][side] == prompt.scene.clothing[side]
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict[str, float]:
    def rate(key: Any) -> float:
        return float(np.mean([key(r) for r in rows]))

    return {
        "n": len(rows),
        "both_present": rate(lambda r: r["face_left"] and r["face_right"]),
        "clothing_left": rate(lambda r: r["clothing_left_correct"]),
        "clothing_right": rate(lambda r: r["clothing_right_correct"]),
        "clothing_both": rate(lambda r: r["clothing_left_correct"] and r["clothing_right_correct"]),
        "scene": rate(lambda r: r["scene_correct"]),
        "all": rate(
            lambda r: (
                r["face_left"]
                and r["face_right"]
                and r["clothing_left_correct"]
                and r["clothing_right_correct"]
                and r["scene_correct"]
            )
        ),
    }


def truth_images(prompts: list[TwoPeoplePrompt]) -> Tensor:
    people = test_identities()
    images = [
        render_two_people(people[k % 100], people[(k + 37) % 100], p.scene, seed=SEED_BASE + k).image
        for k, p in enumerate(prompts)
    ]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def generated_images(pipe: Any, prompts: list[TwoPeoplePrompt], batch: int) -> Tensor:
    from idgen.world.gates import generate

    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        seeds = [SEED_BASE + i + j for j in range(len(chunk))]
        out.append(generate(pipe, [p.text for p in chunk], seeds, None, None))
    return torch.cat(out)


def single_adherence(pipe: Any, clip: Any, batch: int) -> float:
    """The gates' scene adherence of the base model: the no-identity image of each held-out pair."""
    from idgen.world.gates import generate, pairs

    todo = pairs(3, "test")
    correct = 0
    for i in range(0, len(todo), batch):
        chunk = todo[i : i + batch]
        images = generate(pipe, [p.prompt.text for p in chunk], [p.seed for p in chunk], None, None)
        pred = clip.classify_scene(images)
        correct += sum(int(pred[j]) == p.prompt.scene.background for j, p in enumerate(chunk))
    return correct / len(todo)


def main() -> None:
    from idgen.world.bundle import ASSETS, load_world, quiet_prompt_truncation
    from idgen.world.evaluators import FaceSegmenter, WorldCLIP

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--assets", type=Path, default=ASSETS)
    parser.add_argument("--seeds", type=int, default=4, help="seeds per two-person prompt")
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-single", action="store_true")
    parser.add_argument("--split", choices=("test", "validation"), default="test", help="two-person prompts")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_prompt_truncation()
    clip, segmenter = WorldCLIP.from_pretrained(), FaceSegmenter.from_pretrained()
    split = two_people_test_prompts if args.split == "test" else two_people_validation_prompts
    prompts = split() * args.seeds
    out: dict[str, Any] = {"truth": summary(two_people_rows(truth_images(prompts), prompts, clip, segmenter))}
    print("renderer's own images:", out["truth"])
    pipe = load_world("cpu", args.assets)
    images = generated_images(pipe, prompts, args.batch)
    out["two_people"] = summary(two_people_rows(images, prompts, clip, segmenter))
    print("two people, generated:", out["two_people"])
    if not args.skip_single:
        out["single_scene_adherence"] = single_adherence(pipe, clip, 50)
        print("single-person scene adherence:", out["single_scene_adherence"])
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
