"""The demo world's several-identities gates: two held-out people in one image, held-out two-person prompts.

    python -m idgen.world.multi_gates [--split test|validation] [--pairs 50] [--prompts-per-pair 8]
                                      [--json docs/world-multi-gates.json] [--threads 1]

People are paired in split order (0 with 1, 2 with 3, ...); the first of a pair is asked for on the left.
Each pair gets `--prompts-per-pair` two-person prompts of the split and one fixed seed per prompt. From the
same seed, every mode generates:

- `none`: no identity;
- `uniform`: both identities, every residual added to every token (PuLID run once per person): the naive
  baseline;
- `spatial`: SpatialID with competing masks (the demo world's SpatialMask, one early prior per person,
  `ArgmaxAssignment`), each person boxed to their half of the image (`--id-box 0,0,0.5,1 --id-box
  0.5,0,1,1`);
- `spatial_bounded`: the same with `bound_attention=True`: no image token of one half attends to the
  other half's (an option, off by default);
- `spatial_separated`: the same without boxes (priors on `separated_boxes(2)`, which also weigh the
  competition; no region);
- `uniform_boxes`: uniform with the same boxes, each residual kept inside its person's half: what the
  boxes alone do, without SpatialID's masks;
- `single`: each person alone, pointed at their own half as a user would do it (`--id-image A --id-box
  0,0,0.5,1`: the prior centred on the box and the residual kept inside it), once per person;
- `spatial_w2`, `single_w2`: `spatial` and `single` at id weight 2;
- `renders` (not generated): the renderer's own image of the two people in the prompt's scene, the
  ceiling of what the evaluators can read off a two-person image.

The world samples with true CFG, so each two-person mode's negative pass follows the library's default
(`negative_identity_rule`): the other person's id tokens in the spatial modes, PuLID's uncond tokens in
the uniform ones; `--negative-identity` sets one rule for all of them. The summary records each mode's.

Scoring (the evaluator models of `idgen.world.gates`): within each person's side of the image the
evaluator segmenter's largest face region is that person's face (none: a missing face, counted). The
evaluator recogniser embeds it; FaceSim is its cosine to the person's own reference, bleed its cosine to
the other person's reference, and the face is assigned correctly iff own > other. A `single` face is
scored in that person's own run. Scene adherence: the evaluator CLIP's scene class and CLIP-T, and each
person's clothing colour (the median of the pixels that are that side's clothes in the renders, nearest
to which colour under the prompt's lighting).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from idgen.backbones.run import InjectionRun
from idgen.core.gate import MaskPolicy, UniformMask
from idgen.core.multi import Box, BoxRegion, CompetingMasks
from idgen.eval.metrics.maths import mean_ci
from idgen.io import atomic_write_text
from idgen.pipelines.multi import (
    bounded_attention_kwargs,
    competing_masks,
    negative_id_tokens,
    negative_identity_rule,
)
from idgen.pipelines.names import NEGATIVE_IDENTITIES, NONE, PULID_NEGATIVE_IDENTITY, SPATIAL, UNIFORM
from idgen.world.captions import TwoPeoplePrompt, two_people_test_prompts, two_people_validation_prompts
from idgen.world.evaluators import largest_region_boxes
from idgen.world.gates import SPLITS, Evaluators, identity_tokens, references, split_people
from idgen.world.render import (
    CLOTHES,
    CLOTHING_COLOURS,
    CLOTHING_NAMES,
    LIGHTING_NAMES,
    LIGHTINGS,
    PERSON_REGION_IDENTITIES,
    TwoPeopleScene,
    render_two_people,
    train_identities,
)

SEPARATED, SINGLE, UNIFORM_BOXES, RENDERS = "spatial_separated", "single", "uniform_boxes", "renders"
SPATIAL_W2, SINGLE_W2, BOUNDED = "spatial_w2", "single_w2", "spatial_bounded"
MODES = (NONE, UNIFORM, UNIFORM_BOXES, SPATIAL, BOUNDED, SEPARATED, SINGLE, SPATIAL_W2, SINGLE_W2, RENDERS)
SINGLE_RUNS = (SINGLE, SINGLE_W2)  # each person in their own run: (2B, ...) images, left runs then right
TWO_PEOPLE_MODES = (UNIFORM, UNIFORM_BOXES, SPATIAL, BOUNDED, SEPARATED)  # both identities in one call
LABELS = {
    NONE: "none (no identity)",
    UNIFORM: "uniform, residuals summed",
    SPATIAL: "spatial, boxes = halves",
    BOUNDED: "spatial, boxes = halves, attention bounded",
    SEPARATED: "spatial, no boxes",
    UNIFORM_BOXES: "uniform, boxes = halves",
    SINGLE: "single person, its half",
    SPATIAL_W2: "spatial, boxes = halves, id weight 2",
    SINGLE_W2: "single person, its half, id weight 2",
    RENDERS: "the renderer's image (ceiling)",
}
SIDES = ("left", "right")
_SIDES = tuple(enumerate(SIDES))
HALVES: tuple[Box, Box] = ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0))  # what a user passes as --id-box
# Each mode with both people in one call, as the library call it is: its `mode=` and its boxes (None: none).
LIBRARY_CALLS: dict[str, tuple[str, tuple[Box, Box] | None]] = {
    UNIFORM: (UNIFORM, None),
    UNIFORM_BOXES: (UNIFORM, HALVES),
    SPATIAL: (SPATIAL, HALVES),
    BOUNDED: (SPATIAL, HALVES),
    SEPARATED: (SPATIAL, None),
    SPATIAL_W2: (SPATIAL, HALVES),  # spatial's call at id weight 2
}
SIZE = 64
# Seeds of the generations; validation's never coincide with the held-out ones.
_SEED_OFFSET = {"test": 700_000, "validation": 800_000}
WHAT = {
    "test": "held-out identity pairs x held-out two-person prompts",
    "validation": "validation identity pairs x validation two-person prompts",
}


@dataclass(frozen=True)
class Case:
    """One generated image: two people of the split (indices into `split_people`), a prompt, a seed."""

    left: int
    right: int
    prompt: TwoPeoplePrompt
    seed: int
    split: str = "test"


def two_people_prompts(split: str) -> list[TwoPeoplePrompt]:
    return two_people_test_prompts() if split == "test" else two_people_validation_prompts()


# 8 of the 48 two-person prompts per pair: 800 faces, so a 90% assignment is known to about ± 2 points
# (2 prompts, 200 faces: ± 4). The first 2 are the same as with 2.
PROMPTS_PER_PAIR = 8


def cases(pairs: int = 50, prompts_per_pair: int = PROMPTS_PER_PAIR, split: str = "test") -> list[Case]:
    """`pairs` identity pairs (people 2k and 2k + 1 of the split), each with `prompts_per_pair` prompts."""
    people = len(split_people(split))
    if not 1 <= pairs <= people // 2:
        raise ValueError(f"pairs must be in [1, {people // 2}], got {pairs}")
    if prompts_per_pair < 1:
        raise ValueError(f"prompts_per_pair must be >= 1, got {prompts_per_pair}")
    prompts = two_people_prompts(split)
    out = []
    for k in range(pairs):
        for r in range(prompts_per_pair):
            prompt = prompts[(k * 7 + r * 23) % len(prompts)]
            out.append(Case(2 * k, 2 * k + 1, prompt, _SEED_OFFSET[split] + 1000 * k + r, split))
    return out


def side_regions() -> Tensor:
    """(2, 64, 64) bool: where each person's face is looked for, the left and the right half."""
    columns = torch.arange(SIZE)
    left = (columns < SIZE // 2).expand(SIZE, SIZE)
    return torch.stack([left, ~left])


# ---------------------------------------------------------------------------------------------------------
# Generation: one batched FLUX call per mode, each row with its own people and seed.
# ---------------------------------------------------------------------------------------------------------
def flux_call(pipe: Any, prompts: list[str], seeds: list[int]) -> dict[str, Any]:
    """The FLUX pipeline's arguments with the demo world's sampling settings (as `gates.generate`)."""
    d = pipe.defaults
    return dict(
        prompt=prompts,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="pt",
        height=d["height"],
        width=d["width"],
        num_inference_steps=d["num_inference_steps"],
        guidance_scale=d["guidance_scale"],
        max_sequence_length=d["max_sequence_length"],
        true_cfg_scale=d["true_cfg_scale"],
        negative_prompt=[d["negative_prompt"] or ""] * len(prompts),
    )


@torch.no_grad()
def sample(
    pipe: Any, prompts: list[str], seeds: list[int], run: InjectionRun | None, bounds: Any = None
) -> Tensor:
    """(B, 3, 64, 64) in [0, 1]; run None: no identity. bounds: FLUX's joint_attention_kwargs."""
    call = flux_call(pipe, prompts, seeds)
    if run is None:
        return pipe.flux(**call).images
    with pipe.injector.run(run):
        return pipe.flux(
            **call, callback_on_step_end=run.step_end_callback, joint_attention_kwargs=bounds
        ).images


def attention(pipe: Any, mode: str) -> dict[str, Tensor] | None:
    """A two-person mode's joint_attention_kwargs as the library's call builds them: the halves bounding
    the image's attention in the mode that passes bound_attention=True; else None."""
    if mode != BOUNDED:
        return None
    grid = (SIZE // pipe.pixel_multiple, SIZE // pipe.pixel_multiple)
    halves = [BoxRegion(box) for box in HALVES]
    return bounded_attention_kwargs(halves, grid, pipe.defaults["max_sequence_length"], pipe.flux.device)


def competing_run(
    pipe: Any,
    feats: Any,
    people: Sequence[Sequence[int]],
    mode: Mode,
    weight: float = 1.0,
    negative: str = PULID_NEGATIVE_IDENTITY,
) -> InjectionRun:
    """An InjectionRun of n people per image: people[i][b] is identity i of image b. Tokens stack
    identity-major, (n * B, K, dim), as `pipelines.multi.competing_run` lays them out, and so do the
    negative pass's (`negative`, as the library's `negative_identity`)."""
    policy, competition = mode
    encoded = [identity_tokens(pipe, feats, list(who)) for who in people]
    return InjectionRun(
        id_tokens=torch.cat([tokens for tokens, _ in encoded]),
        uncond_id_tokens=negative_id_tokens([t for t, _ in encoded], [u for _, u in encoded], negative),
        id_weight=weight,
        id_weights=(weight,) * len(people),
        competition=competition,
        policy=policy,
        true_cfg_start_step=pipe.defaults["true_cfg_start_step"],
    )


Mode = tuple[MaskPolicy, CompetingMasks]  # a call's policy and its people's competition


def competitions(pipe: Any) -> dict[str, Mode]:
    """Each mode's policy and competition of the people, built by the library as a several-people call
    (`pipe(..., id_images=..., boxes=..., mode=...)`) builds them."""
    spatial, uniform = pipe.spatial, UniformMask()  # the model's own, as `idgen generate` runs it
    policies: dict[str, MaskPolicy] = {SPATIAL: spatial, UNIFORM: uniform}
    runs = {}
    for mode in TWO_PEOPLE_MODES:
        library, boxes = LIBRARY_CALLS[mode]
        policy = policies[library]
        runs[mode] = (policy, competing_masks(library, policy, 2, list(boxes) if boxes else None, None))
    for side, box in zip(SIDES, HALVES, strict=True):
        runs[f"single_{side}"] = (spatial, competing_masks(SPATIAL, spatial, 1, [box], None))
    return runs


def negative_rules(pipe: Any, negative: str | None = None) -> dict[str, str]:
    """Each two-person mode's negative pass: `negative`, or the library's default for its mode."""
    true_cfg = pipe.defaults["true_cfg_scale"] > 1.0
    return {
        mode: negative_identity_rule(negative, library, 2, true_cfg)
        for mode, (library, _) in LIBRARY_CALLS.items()
    }


def generate_modes(
    pipe: Any, chunk: list[Case], feats: Any, runs: dict[str, Mode], negative: str | None = None
) -> dict[str, Tensor]:
    """Every mode's images of a chunk, from the same seeds; `single` is (2B, ...): left runs, right runs."""
    prompts, seeds = [c.prompt.text for c in chunk], [c.seed for c in chunk]
    pair = ([c.left for c in chunk], [c.right for c in chunk])
    rules = negative_rules(pipe, negative)
    images = {NONE: sample(pipe, prompts, seeds, None)}
    for mode in TWO_PEOPLE_MODES:
        run = competing_run(pipe, feats, pair, runs[mode], 1.0, rules[mode])
        images[mode] = sample(pipe, prompts, seeds, run, attention(pipe, mode))
    two = competing_run(pipe, feats, pair, runs[SPATIAL], 2.0, rules[SPATIAL_W2])
    images[SPATIAL_W2] = sample(pipe, prompts, seeds, two)
    for mode, weight in ((SINGLE, 1.0), (SINGLE_W2, 2.0)):
        singles = [
            sample(pipe, prompts, seeds, competing_run(pipe, feats, [who], runs[f"single_{side}"], weight))
            for who, side in zip(pair, SIDES, strict=True)
        ]
        images[mode] = torch.cat(singles)
    images[RENDERS] = ground_truth(chunk)
    return images


def ground_truth(chunk: list[Case]) -> Tensor:
    """The renderer's image of each case (its people in its prompt's scene, its seed), (B, 3, 64, 64) in
    [0, 1]: what the evaluators make of a perfect two-person image."""
    images = []
    for c in chunk:
        people = split_people(c.split)
        image = render_two_people(people[c.left], people[c.right], c.prompt.scene, seed=c.seed).image
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    return torch.stack(images)


# ---------------------------------------------------------------------------------------------------------
# Scoring.
# ---------------------------------------------------------------------------------------------------------
def side_faces(
    segmenter: Any, images: Tensor, regions: Tensor
) -> list[list[tuple[int, int, int, int] | None]]:
    """Per image, per side: the box of the largest face region the segmenter finds inside that side, or
    None. images (B, 3, 64, 64); regions (2, 64, 64) bool."""
    masks = segmenter.masks(images)  # (B, 64, 64)
    per_side = [
        largest_region_boxes(masks & region, segmenter.config.min_pixels) for region in regions
    ]  # 2 x B
    return [list(boxes) for boxes in zip(*per_side, strict=True)]


def face_scores(
    ev: Evaluators, images: Tensor, owners: Sequence[tuple[int, int]], sides: Sequence[int]
) -> list[dict[str, Any]]:
    """Image b's face on side sides[b], scored against owners[b] = (own identity, other identity):
    {"face": bool, and where found "own", "other" (cosines) and "correct" (own > other)}."""
    found = side_faces(ev.segmenter, images, side_regions())
    boxes = [found[b][s] for b, s in enumerate(sides)]
    index = [b for b, box in enumerate(boxes) if box is not None]
    out: list[dict[str, Any]] = [{"face": False} for _ in boxes]
    if not index:
        return out
    embeds = ev.recognizer.embed(images[index], [boxes[b] for b in index])
    for b, embed in zip(index, embeds, strict=True):
        own, other = (float(embed @ ev.ref_embeds[who]) for who in owners[b])
        out[b] = {"face": True, "own": own, "other": other, "correct": own > other}
    return out


def _both_sides(ev: Evaluators, images: Tensor, chunk: list[Case]) -> list[dict[str, dict[str, Any]]]:
    """images (2B, ...): rows [0, B) are scored on the left face, rows [B, 2B) on the right one; per case
    {"left": scores, "right": scores}."""
    owners = [(c.left, c.right) for c in chunk] + [(c.right, c.left) for c in chunk]
    sides = [0] * len(chunk) + [1] * len(chunk)
    scores = face_scores(ev, images, owners, sides)
    return [{"left": scores[j], "right": scores[len(chunk) + j]} for j in range(len(chunk))]


def mode_faces(
    ev: Evaluators, mode: str, images: Tensor, chunk: list[Case]
) -> list[dict[str, dict[str, Any]]]:
    """Both people's faces of each case: in one image of the two, or (`single`) each in their own run."""
    return _both_sides(ev, images if mode in SINGLE_RUNS else torch.cat([images, images]), chunk)


# A pixel is a side's clothes when it is that person's clothes in at least this share of two-person renders.
CLOTHES_SHARE = 0.9


@cache
def clothes_regions() -> np.ndarray:
    """(2, 64, 64) bool, per side: the pixels that are that person's clothes in >= CLOTHES_SHARE of the
    renders of the first PERSON_REGION_IDENTITIES training identities (each once per side)."""
    people = train_identities()[:PERSON_REGION_IDENTITIES]
    count = np.zeros((2, SIZE, SIZE))
    half = len(people) // 2
    for k, person in enumerate(people):
        r = render_two_people(person, people[(k + half) % len(people)], TwoPeopleScene(), seed=k)
        for side in range(2):
            count[side] += (r.labels == CLOTHES) & (r.person_index == side + 1)
    return count >= CLOTHES_SHARE * len(people)


def clothing_colours(images: Tensor, lightings: Sequence[int]) -> list[tuple[int, int]]:
    """Per image, per side: the clothing colour (index into CLOTHING_NAMES) nearest to the median colour of
    that side's clothes pixels, under the image's lighting tint. images (B, 3, 64, 64) in [0, 1]."""
    pixels = (images.permute(0, 2, 3, 1) * 255).double().numpy()  # (B, 64, 64, 3)
    palette = np.asarray([CLOTHING_COLOURS[c] for c in CLOTHING_NAMES], np.float64)  # (C, 3)
    out = []
    for image, lighting in zip(pixels, lightings, strict=True):
        tinted = palette * np.asarray(LIGHTINGS[LIGHTING_NAMES[lighting]])
        medians = [np.median(image[region], axis=0) for region in clothes_regions()]
        nearest = [int(((tinted - m) ** 2).sum(axis=1).argmin()) for m in medians]
        out.append((nearest[0], nearest[1]))
    return out


def scene_scores(ev: Evaluators, images: Tensor, chunk: list[Case]) -> list[dict[str, Any]]:
    """Per image: CLIP-T (evaluator CLIP text-image cosine), whether its scene class is the prompt's, and
    whether each person's clothing colour is the prompt's."""
    text = ev.clip.text_embeds([c.prompt.text for c in chunk])
    image_embeds = ev.clip.image_embeds(images)
    scene = ev.clip.classify_scene(images)
    clothing = clothing_colours(images, [c.prompt.scene.lighting for c in chunk])
    return [
        {
            "clip_t": float(image_embeds[j] @ text[j]),
            "scene_correct": bool(scene[j] == c.prompt.scene.background),
            **{
                f"clothing_correct_{side}": clothing[j][k] == c.prompt.scene.clothing[k]
                for k, side in enumerate(SIDES)
            },
        }
        for j, c in enumerate(chunk)
    ]


def mode_scenes(ev: Evaluators, mode: str, images: Tensor, chunk: list[Case]) -> list[dict[str, Any]]:
    """Scene scores per case; for `single` (left runs, then right runs) the mean CLIP-T of the two images,
    the scene class correct only if it is in both, and each person's clothing in their own run."""
    if mode not in SINGLE_RUNS:
        return scene_scores(ev, images, chunk)
    n = len(chunk)
    left, right = (scene_scores(ev, images[k * n : (k + 1) * n], chunk) for k in range(2))
    return [
        {
            "clip_t": (a["clip_t"] + b["clip_t"]) / 2,
            "scene_correct": a["scene_correct"] and b["scene_correct"],
            "clothing_correct_left": a["clothing_correct_left"],
            "clothing_correct_right": b["clothing_correct_right"],
        }
        for a, b in zip(left, right, strict=True)
    ]


def _mode_key(key: str, mode: str) -> str:
    """clip_t -> clip_t_<mode>; clothing_correct_<side> -> clothing_correct_<mode>_<side>."""
    for side in SIDES:
        if key.endswith(f"_{side}"):
            return f"{key[: -len(side) - 1]}_{mode}_{side}"
    return f"{key}_{mode}"


def rows(ev: Evaluators, chunk: list[Case], images: dict[str, Tensor]) -> list[dict[str, Any]]:
    """One row per case: every mode's scene scores and face scores per side, flat keys."""
    faces = {m: mode_faces(ev, m, images[m], chunk) for m in MODES}
    scenes = {m: mode_scenes(ev, m, images[m], chunk) for m in MODES}
    out = []
    for j, c in enumerate(chunk):
        row: dict[str, Any] = {"left": c.left, "right": c.right, "prompt": c.prompt.text, "seed": c.seed}
        row["backdrops"] = [ev.backdrop_names[c.left], ev.backdrop_names[c.right]]
        for mode in MODES:
            row |= {_mode_key(key, mode): value for key, value in scenes[mode][j].items()}
            for side in SIDES:
                row |= {f"{key}_{mode}_{side}": v for key, v in faces[mode][j][side].items()}
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------------------
# Summary: per mode, per side, per backdrop relation; the gates.
# ---------------------------------------------------------------------------------------------------------
ASSIGNMENT_GATE, FACESIM_MARGIN = 0.90, 0.05
BACKDROP_GROUPS = ("same backdrop", "different backdrops")


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float, float, int]:
    """(proportion, lower, upper, n): the Wilson score interval (95% for z = 1.96); NaNs when n = 0."""
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(centre - half, 0.0), min(centre + half, 1.0), n


def backdrop_group(row: dict[str, Any]) -> str:
    """Whether the two people's reference photos share their studio backdrop colour."""
    return BACKDROP_GROUPS[0] if row["backdrops"][0] == row["backdrops"][1] else BACKDROP_GROUPS[1]


def faces(rows: Sequence[dict[str, Any]], mode: str, sides: Sequence[str] = SIDES) -> list[dict[str, Any]]:
    """Every face of `mode` on `sides`: {"face": found, and "own", "other", "correct" where found}."""
    out = []
    for r in rows:
        for side in sides:
            found = r[f"face_{mode}_{side}"]
            keys = ("own", "other", "correct") if found else ()
            out.append({"face": found, **{k: r[f"{k}_{mode}_{side}"] for k in keys}})
    return out


def face_summary(scored: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Assignment accuracy (Wilson interval; over found faces, and over all with a missing face counted
    wrong), FaceSim to the own reference, bleed (to the other one) and their margin (t intervals)."""
    found = [f for f in scored if f["face"]]
    right = sum(f["correct"] for f in found)
    return {
        "faces": len(scored),
        "missing_faces": len(scored) - len(found),
        "assignment": wilson(right, len(found)),
        "assignment_missing_wrong": wilson(right, len(scored)),
        "facesim": mean_ci([f["own"] for f in found]),
        "bleed": mean_ci([f["other"] for f in found]),
        "margin": mean_ci([f["own"] - f["other"] for f in found]),
    }


def paired(rows: Sequence[dict[str, Any]], key: str, a: str, b: str) -> tuple[float, float, int]:
    """Mean and 95% t interval of key(a) - key(b) over the faces found in both modes (paired by face)."""
    diffs = [
        r[f"{key}_{a}_{side}"] - r[f"{key}_{b}_{side}"]
        for r in rows
        for side in SIDES
        if r[f"face_{a}_{side}"] and r[f"face_{b}_{side}"]
    ]
    return mean_ci(diffs)


def mode_summary(rows: Sequence[dict[str, Any]], mode: str) -> dict[str, Any]:
    missing = sum(not (r[f"face_{mode}_left"] and r[f"face_{mode}_right"]) for r in rows)
    return {
        **face_summary(faces(rows, mode)),
        "images_missing_a_face": missing,
        "clip_t": mean_ci([r[f"clip_t_{mode}"] for r in rows]),
        "scene_accuracy": wilson(sum(r[f"scene_correct_{mode}"] for r in rows), len(rows)),
        "clothing_accuracy": wilson(
            sum(r[f"clothing_correct_{mode}_{side}"] for r in rows for side in SIDES), 2 * len(rows)
        ),
        "by_side": {side: face_summary(faces(rows, mode, [side])) for side in SIDES},
        "by_backdrop": {
            g: face_summary(faces([r for r in rows if backdrop_group(r) == g], mode)) for g in BACKDROP_GROUPS
        },
    }


def gates(s: dict[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The issue's three gates, for SpatialID with boxes (and without, as `_separated`)."""
    out: dict[str, Any] = {}
    for mode, suffix in ((SPATIAL, ""), (SEPARATED, "_separated")):
        facesim = paired(rows, "own", mode, SINGLE)
        bleed = paired(rows, "other", mode, UNIFORM)
        out |= {
            f"assignment{suffix}": s[mode]["assignment"][0] >= ASSIGNMENT_GATE,
            f"facesim_minus_single{suffix}": facesim,
            f"facesim{suffix}": facesim[0] >= -FACESIM_MARGIN,
            f"bleed_minus_uniform{suffix}": bleed,
            f"bleed{suffix}": bleed[0] + bleed[1] < 0,
        }
    out["facesim_minus_single_w2"] = paired(rows, "own", SPATIAL_W2, SINGLE_W2)  # reported, not a gate
    return out


def summarise(rows: Sequence[dict[str, Any]], split: str = "test") -> dict[str, Any]:
    modes = {mode: mode_summary(rows, mode) for mode in MODES}
    images = len(rows)
    return {
        "split": split,
        "images": images,
        "identity_pairs": len({(r["left"], r["right"]) for r in rows}),
        "modes": modes,
        "gates": gates(modes, rows),
        "rows": list(rows),
    }


# ---------------------------------------------------------------------------------------------------------
# Tables.
# ---------------------------------------------------------------------------------------------------------
def _ci(v: Sequence[float], digits: int = 3) -> str:
    return f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}" if v[2] else "–"


def _pct(v: Sequence[float]) -> str:
    """A proportion with its interval: 96.0% [90.1, 98.4]."""
    return f"{v[0] * 100:.1f}% [{v[1] * 100:.1f}, {v[2] * 100:.1f}]" if v[3] else "–"


# The modes table's columns: header -> the cell of one mode's summary.
COLUMNS: dict[str, Callable[[dict[str, Any]], str]] = {
    "assignment accuracy": lambda m: _pct(m["assignment"]),
    "FaceSim, own reference": lambda m: _ci(m["facesim"]),
    "bleed, other reference": lambda m: _ci(m["bleed"]),
    "own − other": lambda m: _ci(m["margin"]),
    "faces missing (images)": lambda m: f"{m['missing_faces']} ({m['images_missing_a_face']})",
    "CLIP-T": lambda m: _ci(m["clip_t"]),
    "scene class correct": lambda m: _pct(m["scene_accuracy"]),
    "clothing colour correct": lambda m: _pct(m["clothing_accuracy"]),
}


def modes_table(
    s: dict[str, Any], modes: Sequence[str] = MODES, columns: Sequence[str] = tuple(COLUMNS)
) -> list[str]:
    """One row per mode of `modes`, one column per name in `columns` (keys of COLUMNS)."""
    lines = ["| mode | " + " | ".join(columns) + " |", "|---" * (1 + len(columns)) + "|"]
    for mode in modes:
        m = s["modes"][mode]
        lines.append(f"| {LABELS[mode]} | " + " | ".join(COLUMNS[c](m) for c in columns) + " |")
    return lines


def groups_table(s: dict[str, Any], by: str, names: Sequence[str]) -> list[str]:
    """Assignment accuracy, FaceSim and bleed of each mode within each group (by_side or by_backdrop)."""
    head = " | ".join(f"{g}: assignment | {g}: FaceSim | {g}: bleed" for g in names)
    lines = [f"| mode | {head} |", "|---" * (1 + 3 * len(names)) + "|"]
    for mode in MODES:
        cells = []
        for g in names:
            m = s["modes"][mode][by][g]
            cells += [f"{_pct(m['assignment'])}", _ci(m["facesim"]), _ci(m["bleed"])]
        lines.append(f"| {LABELS[mode]} | " + " | ".join(cells) + " |")
    return lines


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def gate_lines(s: dict[str, Any]) -> list[str]:
    g, modes = s["gates"], s["modes"]
    lines = []
    for mode, suffix in ((SPATIAL, ""), (SEPARATED, "_separated")):
        lines += [
            f"- assignment, {LABELS[mode]}: {_pct(modes[mode]['assignment'])} against uniform "
            f"{_pct(modes[UNIFORM]['assignment'])} and single {_pct(modes[SINGLE]['assignment'])} "
            f"(gate: >= 90%; {_met(g[f'assignment{suffix}'])})",
            f"- FaceSim, {LABELS[mode]} − single, paired per face: {_ci(g[f'facesim_minus_single{suffix}'])} "
            f"(gate: >= −0.05; {_met(g[f'facesim{suffix}'])})",
            f"- bleed, {LABELS[mode]} − uniform, paired per face: {_ci(g[f'bleed_minus_uniform{suffix}'])} "
            f"(gate: below 0, interval included; {_met(g[f'bleed{suffix}'])})",
        ]
    return [
        *lines,
        f"- at id weight 2: assignment, spatial {_pct(modes[SPATIAL_W2]['assignment'])}, single "
        f"{_pct(modes[SINGLE_W2]['assignment'])}; FaceSim, spatial − single, paired per face: "
        f"{_ci(g['facesim_minus_single_w2'])}",
    ]


def counts_line(s: dict[str, Any]) -> str:
    """What was measured: images, identity pairs, faces per mode, the intervals, the minutes it took, and
    what each two-person mode's true-CFG negative pass took."""
    rules = s.get("negative_identity", {})
    negative = "; ".join(f"{LABELS[m]}: {r}" for m, r in rules.items() if m in TWO_PEOPLE_MODES)
    return (
        f"- {s['images']} images of {s['identity_pairs']} identity pairs ({WHAT[s['split']]}), "
        f"{s['images'] * 2} faces per mode; accuracies with 95% Wilson intervals over the faces found, "
        "means ± 95% t intervals"
        + (f"; {s['seconds'] / 60:.1f} min" if "seconds" in s else "")
        + (f"; each person's true-CFG negative pass ({negative})" if negative else "")
    )


def table(s: dict[str, Any]) -> str:
    return "\n".join(
        [
            *modes_table(s),
            "",
            counts_line(s),
            *gate_lines(s),
            "",
            *groups_table(s, "by_side", SIDES),
            "",
            *groups_table(s, "by_backdrop", BACKDROP_GROUPS),
        ]
    )


# ---------------------------------------------------------------------------------------------------------
# Running.
# ---------------------------------------------------------------------------------------------------------
def run(
    pairs: int = 50,
    prompts_per_pair: int = PROMPTS_PER_PAIR,
    split: str = "test",
    batch: int = 50,
    device: str = "cpu",
    assets: Path | None = None,
    negative_identity: str | None = None,
) -> dict[str, Any]:
    """The gates of the generator in `assets` (default: the shipped one) with the shipped evaluators;
    `negative_identity` as the library's, for the two-person modes (None: the library's default per mode)."""
    from tqdm.auto import tqdm

    from idgen.world.bundle import ASSETS, load_world

    todo = cases(pairs, prompts_per_pair, split)  # checked before any model loads
    started = time.perf_counter()
    pipe = load_world(device, assets or ASSETS)
    evaluators, ref_features = references(pipe, split)
    runs = competitions(pipe)
    out: list[dict[str, Any]] = []
    for start in tqdm(range(0, len(todo), batch), desc="multi-gates"):
        chunk = todo[start : start + batch]
        out += rows(evaluators, chunk, generate_modes(pipe, chunk, ref_features, runs, negative_identity))
    summary = {**summarise(out, split), "seconds": round(time.perf_counter() - started, 1)}
    return {**summary, "negative_identity": negative_rules(pipe, negative_identity)}


# ---------------------------------------------------------------------------------------------------------
# The README's two-person example.
# ---------------------------------------------------------------------------------------------------------
EXAMPLE = "two-people"
EXAMPLE_STEPS = (0, 4, 8, 12, 16, 19)  # the mask strip's frames the README shows
REFERENCES_FOLDER = "src/idgen/world/assets/references"


def example_arguments(out: str, mode: str = SPATIAL, references: str = REFERENCES_FOLDER) -> list[str]:
    """`idgen generate`'s arguments for the README example, by its rule: the first two shipped reference
    photos (the first two held-out people), the first held-out two-person prompt, each person boxed to
    their half, the CLI's default seed; the spatial run also writes the mask strip."""
    args = ["generate", "--prompt", two_people_test_prompts()[0].text]
    for k in range(2):
        args += ["--id-image", f"{references}/test_{k:03d}.png"]
    for box in HALVES:
        args += ["--id-box", ",".join(f"{v:g}" for v in box)]
    args += ["--mode", mode, "--out", out, "--overwrite"]
    return args + (["--mask-strip"] if mode == SPATIAL else [])


def readme_example(folder: Path, overwrite: bool = False) -> dict[str, str]:
    """Write the README's two-person example into `folder`: two-people.png (the CLI's spatial image as it
    wrote it), two-people.masks.png (EXAMPLE_STEPS of its mask strip) and two-people.compare.png (reference
    A | uniform | spatial | reference B). Returns each file's sha256."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from PIL import Image

    from idgen.io import atomic_save_image
    from idgen.viz import side_by_side
    from idgen.world.bundle import ASSETS, sha256

    names = [f"{EXAMPLE}.png", f"{EXAMPLE}.masks.png", f"{EXAMPLE}.compare.png"]
    taken = [n for n in names if (folder / n).exists()]
    if taken and not overwrite:
        raise SystemExit(f"multi_gates: {folder / taken[0]} exists; pass --overwrite to replace it")
    references = str(ASSETS / "references")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in (SPATIAL, UNIFORM):
            # The command a reader runs, in a process of its own: the world stays a client of the CLI.
            command = [
                sys.executable,
                "-m",
                "idgen.cli",
                *example_arguments(f"{tmp}/{mode}.png", mode, references),
            ]
            done = subprocess.run(command, check=False, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"multi_gates: idgen generate --mode {mode} failed: {done.stderr.strip()}")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f"{tmp}/{SPATIAL}.png", folder / names[0])
        strip = Image.open(f"{tmp}/{SPATIAL}.masks.png")
        width = strip.width // (EXAMPLE_STEPS[-1] + 1)
        frames = Image.new("RGB", (width * len(EXAMPLE_STEPS), strip.height), "white")
        for i, step in enumerate(EXAMPLE_STEPS):
            frames.paste(strip.crop((step * width, 0, (step + 1) * width, strip.height)), (i * width, 0))
        atomic_save_image(frames, folder / names[1], optimize=True)
        photos = [Image.open(f"{references}/test_{k:03d}.png") for k in range(2)]
        panels: dict[str, Image.Image] = {
            "reference A": photos[0],
            "uniform": Image.open(f"{tmp}/{UNIFORM}.png"),
        }
        panels |= {"spatial": Image.open(f"{tmp}/{SPATIAL}.png"), "reference B": photos[1]}
        atomic_save_image(side_by_side(panels, (SIZE, SIZE)), folder / names[2], optimize=True)
    return {n: sha256(folder / n) for n in names}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", choices=SPLITS, default="test", help="held-out (test) or validation")
    parser.add_argument("--pairs", type=int, default=50, help="identity pairs (at most 50)")
    parser.add_argument("--prompts-per-pair", type=int, default=PROMPTS_PER_PAIR)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--assets", type=Path, help="a generator assets folder (default: the shipped one)")
    parser.add_argument("--json", help="write the summary here")
    parser.add_argument("--rows", action="store_true", help="with --json: keep every image's scores in it")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared CPU)")
    parser.add_argument("--readme-example", type=Path, metavar="FOLDER",
                        help="write the README's two-person example images into FOLDER and exit")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="with --readme-example: replace its files")
    parser.add_argument(
        "--negative-identity",
        choices=NEGATIVE_IDENTITIES,
        help="each person's negative pass in the two-person modes (the library's option; default: the "
        "library's default for each mode)",
    )
    args = parser.parse_args(argv)
    if args.readme_example:
        for name, digest in readme_example(args.readme_example, args.overwrite).items():
            print(f"{digest}  {args.readme_example / name}")
        return
    from idgen.world.bundle import quiet_prompt_truncation

    torch.set_num_threads(args.threads)
    quiet_prompt_truncation()
    summary = run(
        args.pairs, args.prompts_per_pair, args.split, args.batch, assets=args.assets,
        negative_identity=args.negative_identity,
    )  # fmt: skip
    print(table(summary))
    if args.json:
        kept = summary if args.rows else {k: v for k, v in summary.items() if k != "rows"}
        atomic_write_text(args.json, json.dumps(kept, indent=1) + "\n")


if __name__ == "__main__":
    main()
