"""Several photos of one person on the demo world: FaceSim with 3 photos against 1, per combination rule.

Each person of the split is photographed three times: as casual photos (--photos varied, the default:
close-up on a studio backdrop, each with its own backdrop, clothing, pose, expression and lighting, drawn
by `render_photo` at --strength), in different scenes (--photos scenes: close-up, centre, a different
background, clothing colour and lighting each, and the renderer's pose jitter), or as studio portraits
(--photos studio: a different backdrop and clothing each, neutral light; the varied photos at strength 0).
FaceSim is measured against the person's studio reference photo, which is never given to the model. The
1-photo runs use each of the three photos in turn (--singles each, the default) or the first only
(--singles first); every difference is paired (same person, prompt, seed).

    python benchmarks/several_photos.py --split validation            # choose the default rule
    python benchmarks/several_photos.py --split test --rules mean-all  # report it on held-out people

Prints a Markdown table (mean FaceSim, and the paired 3-minus-1 difference with its 95% t interval over
people, each person's --prompts prompts averaged first), then the same difference per subgroup: by how
the single photo varies, and by the prompt's framing and position.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from idgen.pipelines.multi import COMBINATIONS, combine_photos

PHOTOS = 3
CHUNK = 25
STUDIO_SEED = 900_000  # far from the gates' reference seeds (split offset + person index)
STRENGTH = 1.0  # varied photos: the largest variation at which the detector finds >= 99% of faces
PROMPTS = 3  # per person: averages out the generation noise of one prompt and seed


def photo_seed(index: int, k: int) -> int:
    """Seed of photo k of person `index`: never a FaceSim reference's seed."""
    return STUDIO_SEED + 1000 * index + k


def conditioning_photos(
    identity: Any, index: int, split: str, kind: str, strength: float
) -> list[Image.Image]:
    """PHOTOS renders of one person: casual photos (varied pose, expression and lighting at `strength`),
    studio portraits (each its own backdrop, clothing and pose jitter), or close-up scenes (each its own
    background, clothing and lighting). Varied and studio photos never use a FaceSim reference's seed."""
    from idgen.world.render import render_photo, render_reference

    seeds = [photo_seed(index, k) for k in range(PHOTOS)]
    if kind == "varied":
        return [Image.fromarray(render_photo(identity, s, strength=strength).image) for s in seeds]
    if kind == "studio":
        return [Image.fromarray(render_reference(identity, seed=s).image) for s in seeds]
    return scene_photos(identity, index, split)


def scene_photos(identity: Any, index: int, split: str) -> list[Image.Image]:
    """PHOTOS close-up, centred scene renders of one person, each its own background, clothing, lighting."""
    from idgen.world.render import BACKGROUNDS, CLOTHING_NAMES, LIGHTING_NAMES, Scene, render

    rng = np.random.default_rng([index, 0x5EE, len(split)])
    first_light = int(rng.integers(len(LIGHTING_NAMES)))
    photos = []
    for k in range(PHOTOS):
        scene = Scene(
            background=int(rng.integers(len(BACKGROUNDS))),
            clothing_colour=int(rng.integers(len(CLOTHING_NAMES))),
            lighting=(first_light + k) % len(LIGHTING_NAMES),
            framing=0,  # close-up
            position=1,  # centre
        )
        photos.append(Image.fromarray(render(identity, scene, seed=int(rng.integers(1 << 30))).image))
    return photos


def reference_embeddings(people: list[Any], split: str, recognizer: Any, segmenter: Any) -> torch.Tensor:
    """(N, D) face embeddings of the people's studio reference photos (the FaceSim references)."""
    from idgen.world.gates import reference_seed
    from idgen.world.render import render_reference

    refs = [render_reference(p, seed=reference_seed(i, split)).image for i, p in enumerate(people)]
    images = torch.stack([torch.from_numpy(r).permute(2, 0, 1).float() / 255 for r in refs])
    boxes = segmenter.face_boxes(images)
    return recognizer.embed(images, [b or (16, 16, 48, 48) for b in boxes])


def id_tokens(pipe: Any, features: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, D) id tokens, one row per person, and the uncond tokens for true CFG."""
    from idgen.backbones.flux import encode_id_tokens

    pairs = [encode_id_tokens(pipe.adapter, f, with_uncond=True) for f in features]
    return torch.cat([t for t, _ in pairs]), torch.cat([u for _, u in pairs])  # type: ignore[misc]


def face_sims(ev: dict[str, Any], images: torch.Tensor, people: list[int]) -> list[float]:
    """cos(face(image), face(reference)) per image; NaN where the segmenter finds no face."""
    _, boxes = ev["segmenter"].detect(images)
    out = [math.nan] * len(people)
    found = [j for j, box in enumerate(boxes) if box is not None]
    if found:
        embeds = ev["recognizer"].embed(images[found], [boxes[j] for j in found])
        for k, j in enumerate(found):
            out[j] = float(embeds[k] @ ev["references"][people[j]])
    return out


def run_condition(pipe: Any, ev: dict[str, Any], tokens: Any, todo: list[Any]) -> list[float]:
    """FaceSim of one condition over all (person, prompt, seed) pairs, generated in chunks (spatial mode,
    the model's policy); each pair gets its person's id tokens and is compared with its person's reference."""
    from dataclasses import replace

    from idgen.core.schedule import TemporalSpatialScheduler
    from idgen.world.gates import generate

    policy = replace(pipe.spatial, scheduler=TemporalSpatialScheduler.from_preset("v1"))
    cond, uncond = tokens
    sims: list[float] = []
    for start in range(0, len(todo), CHUNK):
        part = todo[start : start + CHUNK]
        who = [pair.identity for pair in part]
        prompts, seeds = [pair.prompt.text for pair in part], [pair.seed for pair in part]
        images = generate(pipe, prompts, seeds, cond[who], policy, uncond[who])
        sims += face_sims(ev, images, who)
    return sims


def paired(a: list[float], b: list[float], people: list[int] | None = None) -> dict[str, float]:
    """Mean of b - a with its 95% t interval over people: each person's differences (over the pairs with a
    face in both) are averaged first, as the person's photos are shared by all their prompts. Without
    `people` every pair is its own person."""
    from scipy import stats

    people = list(range(len(a))) if people is None else people
    per: dict[int, list[float]] = {}
    for x, y, who in zip(a, b, people, strict=True):
        if not (math.isnan(x) or math.isnan(y)):
            per.setdefault(who, []).append(y - x)
    d = np.array([np.mean(v) for v in per.values()])
    n = len(d)
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": float(d.mean()) if n else math.nan, "ci95": half, "n": n}


def measure(
    split: str,
    people: int,
    rules: list[str],
    kind: str,
    strength: float,
    prompts: int = 1,
    singles: int = 1,
) -> dict[str, Any]:
    """FaceSim per condition. The 1-photo baseline is generated from each of the first `singles` photos in
    turn; every 3-minus-1 difference is taken against each of them, so with singles = PHOTOS it is
    3 photos against the average single photo."""
    from idgen.pipelines.multi import encode_person
    from idgen.world.bundle import load_world, quiet_prompt_truncation
    from idgen.world.evaluators import FaceRecognizer, FaceSegmenter
    from idgen.world.gates import pairs, split_people

    quiet_prompt_truncation()
    pipe = load_world("cpu")
    chosen = split_people(split)[:people]
    ev: dict[str, Any] = {"recognizer": FaceRecognizer.from_pretrained()}
    ev["segmenter"] = FaceSegmenter.from_pretrained()
    ev["references"] = reference_embeddings(chosen, split, ev["recognizer"], ev["segmenter"])
    todo = pairs(prompts, split)[: people * prompts]
    photos = [conditioning_photos(person, i, split, kind, strength) for i, person in enumerate(chosen)]
    feats = [encode_person(pipe.encoder, ph, i) for i, ph in enumerate(photos)]  # skips faceless photos
    sims = run_conditions(pipe, ev, feats, todo, rules, singles)
    who = [pair.identity for pair in todo] * singles
    result = summarise(sims, split, people, who)
    for name, row in result["rows"].items():
        row["faces"] = row["faces"] if name == "1 photo" else row["faces"] // singles  # each once
    groups = subgroup_labels([p.prompt.scene for p in todo] * singles, who, kind, strength, singles)
    result["subgroups"] = subgroups(sims, groups, who)
    used = sum(len(f) for f in feats)
    extra = {"photos_kind": kind, "strength": strength, "prompts_per_person": prompts, "singles": singles}
    return {**result, **extra, "photos_without_face": PHOTOS * people - used}


def run_conditions(
    pipe: Any, ev: dict[str, Any], feats: list[Any], todo: list[Any], rules: list[str], singles: int
) -> dict[str, list[float]]:
    """FaceSim per condition, aligned: "1 photo" holds photo 1's pairs, then photo 2's, ...; each rule's
    3-photo values are repeated to match."""
    one = []
    for k in range(singles):
        one += run_condition(pipe, ev, id_tokens(pipe, [f[k % len(f)] for f in feats]), todo)
    sims = {"1 photo": one}
    for rule in rules:
        combined = [combine_photos(f, COMBINATIONS[rule]) for f in feats]
        sims[f"{PHOTOS} photos, {rule}"] = run_condition(pipe, ev, id_tokens(pipe, combined), todo) * singles
    return sims


def subgroup_labels(
    scenes: list[Any], who: list[int], kind: str, strength: float, singles: int = 1
) -> dict[str, list[bool]]:
    """Per entry of `scenes` and `who` (the (person, prompt) pairs with photo 1 as the single photo, then
    with photo 2, ...), membership of each subgroup: the prompt's framing and position, and how that
    single photo varies (varied photos only; a factor counts as strong in the upper half of its range)."""
    from idgen.world.render import FRAMINGS, POSITIONS, photo_variation

    groups = {f"prompt {name}": [s.framing == k for s in scenes] for k, name in enumerate(FRAMINGS)}
    groups |= {f"prompt {name}": [s.position == k for s in scenes] for k, name in enumerate(POSITIONS)}
    if kind != "varied" or strength <= 0:
        return groups
    per_photo = len(who) // singles
    photo = [j // per_photo for j in range(len(who))]  # which of the person's photos is the single one
    strong = {
        (i, k): strong_factors(photo_variation(photo_seed(i, k), strength), strength)
        for i, k in set(zip(who, photo, strict=True))
    }
    for name in strong[who[0], 0]:
        member = [strong[i, k][name] for i, k in zip(who, photo, strict=True)]
        groups[f"single photo: {name}"] = member
        groups[f"single photo: not {name.split(' >')[0]}"] = [not m for m in member]
    return groups


def strong_factors(v: Any, strength: float) -> dict[str, bool]:
    """Which factors of a PhotoVariation drawn at `strength` lie in the upper half of their range."""
    return {
        "head turned > half range": abs(v.turn) > 0.25 * strength,
        "camera rolled > half range": abs(v.tilt) > 0.1 * strength,
        "eyes narrowed": v.eye_open < 1.0,
        "side light > half range": abs(v.light_slope) > 0.175 * strength,
    }


def subgroups(
    sims: dict[str, list[float]], groups: dict[str, list[bool]], who: list[int] | None = None
) -> dict[str, Any]:
    """1-photo FaceSim and each rule's paired 3-minus-1 difference (per person) within each subgroup."""
    who = list(range(len(sims["1 photo"]))) if who is None else who
    out: dict[str, Any] = {}
    for group, member in groups.items():
        picked = {
            name: [v for v, m in zip(values, member, strict=True) if m] for name, values in sims.items()
        }
        people = [w for w, m in zip(who, member, strict=True) if m]
        base = picked["1 photo"]
        row: dict[str, Any] = {"people": len(set(people)), "1 photo": _nanmean(base)}
        row |= {name: paired(base, v, people) for name, v in picked.items() if name != "1 photo"}
        out[group] = row
    return out


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def summarise(
    sims: dict[str, list[float]], split: str, people: int, who: list[int] | None = None
) -> dict[str, Any]:
    base = sims["1 photo"]
    rows: dict[str, dict[str, Any]] = {}
    for name, values in sims.items():
        kept = [v for v in values if not math.isnan(v)]
        rows[name] = {"facesim": float(np.mean(kept)), "faces": len(kept)}
        if name != "1 photo":
            rows[name]["minus_1_photo"] = paired(base, values, who)
    return {"split": split, "people": people, "photos": PHOTOS, "rows": rows, "per_pair": sims, "person": who}


def _difference(diff: dict[str, float]) -> str:
    return f"{diff['mean']:+.4f} ± {diff['ci95']:.4f} (n={diff['n']})"


def table(result: dict[str, Any]) -> str:
    kind = result["photos_kind"]
    if kind == "varied":
        kind += f" (strength {result['strength']:g})"
    skipped = result.get("photos_without_face", 0)
    lines = [
        f"Demo world, {result['split']} split, {result['people']} people, {kind} photos "
        f"({skipped} without a face, skipped), {result.get('prompts_per_person', 1)} prompt(s) and seed(s) "
        "each; n counts people:",
        "",
        "| condition | FaceSim | faces found | 3 photos - 1 photo (paired, 95% CI) |",
        "|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        diff = row.get("minus_1_photo")
        shown = "" if diff is None else _difference(diff)
        lines.append(f"| {name} | {row['facesim']:.4f} | {row['faces']} | {shown} |")
    return "\n".join(lines + subgroup_table(result))


def subgroup_table(result: dict[str, Any]) -> list[str]:
    """Markdown rows of the per-subgroup differences (none when the result has no subgroups)."""
    rules = [name for name in result["rows"] if name != "1 photo"]
    groups = result.get("subgroups", {})
    if not groups:
        return []
    lines = ["", "| subgroup | people | 1 photo | " + " | ".join(f"{r} - 1 photo" for r in rules) + " |"]
    lines.append("|---|---|---|" + "---|" * len(rules))
    for group, row in groups.items():
        cells = [_difference(row[r]) for r in rules]
        lines.append(f"| {group} | {row['people']} | {row['1 photo']:.4f} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=["validation", "test"], default="validation")
    p.add_argument("--people", type=int, default=100)
    p.add_argument(
        "--photos", choices=["varied", "scenes", "studio"], default="varied", help="what the 3 photos are"
    )
    p.add_argument(
        "--strength", type=float, default=STRENGTH, help="how much varied photos vary, in [0, 1.5]"
    )
    p.add_argument(
        "--rules", default=",".join(COMBINATIONS), help=f"comma-separated: {', '.join(COMBINATIONS)}"
    )
    p.add_argument(
        "--prompts", type=int, default=PROMPTS, help="prompts (each with its seed) per person, in [1, 10]"
    )
    p.add_argument(
        "--singles",
        choices=["each", "first"],
        default="each",
        help="the 1-photo baseline: each of the 3 photos in turn (averaged), or the first only",
    )
    p.add_argument("--json", help="also write the numbers (and per-person FaceSim) to this file")
    args = p.parse_args(argv)
    rules = [r for r in args.rules.split(",") if r]
    unknown = [r for r in rules if r not in COMBINATIONS]
    problem = (
        f"unknown rule {unknown[0]!r}"
        if unknown
        else "--people must be in [1, 100]"
        if not 1 <= args.people <= 100
        else "--strength must be in [0, 1.5]"
        if not 0.0 <= args.strength <= 1.5
        else "--prompts must be in [1, 10]"
        if not 1 <= args.prompts <= 10
        else None
    )
    if problem:
        print(f"several_photos: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    singles = PHOTOS if args.singles == "each" else 1
    result = measure(args.split, args.people, rules, args.photos, args.strength, args.prompts, singles)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(table(result))
    if args.json:
        from idgen.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
