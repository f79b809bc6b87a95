"""The demo world's quality gates, measured on held-out identities and held-out prompts.

    python -m idgen.world.gates [--pairs-per-identity 3] [--split test|validation] [--json out.json]
                                [--assets DIR] [--preset v1|balanced]

For every (held-out identity, held-out prompt) pair it generates the image without identity, with
uniform injection (PuLID) and with SpatialID, from the same seed, and scores them with the
independent evaluator models:

- scene adherence: the evaluator CLIP's zero-shot scene class of the no-identity image;
- FaceSim: evaluator face recogniser, generated face vs reference face (faces found by the
  evaluator segmenter; images without a face are counted, not scored);
- contamination: how far the scene pixels moved towards the reference photo's backdrop colour, relative
  to the no-identity image, in 0-255 RGB units. Scene pixels lie outside the renderer's person region
  for the prompt's framing and position (`render.person_region`: hair, neck, clothes excluded) and
  outside both images' face masks; the measure before it, outside the face masks only, is kept as
  `contamination_outside_face`. Both are also reported per reference backdrop colour;
- CLIP-T: evaluator CLIP text-image cosine;
- attribute transfer: of the images with a face, the share whose identity attributes, read by the evaluator
  attribute classifier, equal the reference identity's true ones (renderer ground truth), per attribute;
  `none` is the chance-like baseline, and the classifier on the renderer's own image of each pair (`rendered`)
  is the ceiling any mode can reach on this measure.

`spatial` is SpatialID as the demo world runs it: the authors' `balanced` preset with the refiner scaled to
its 8x8 token grid. Two of the authors' settings as published run beside it: `spatial_paper`, the same
schedule with their refiner constants (written for FLUX's 64x64 token grid), and `spatial_v1`, their `v1`
preset (FLUX's default). Uniform and spatial also run at id weight 2 (`uniform_w2`, `spatial_w2`).

`--demo-pick GATES_JSON` prints `make demo`'s reference and prompt, chosen from a saved run by the
README's rule (`demo_pick`).

`--split validation` measures the same on 100 other identities and 48 training-distribution prompts, where
settings are chosen; the held-out split (`test`, the default) only reports.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from idgen.backbones.flux import InjectionRun
from idgen.core.gate import SpatialMask, UniformMask
from idgen.core.schedule import PRESETS, TemporalSpatialScheduler
from idgen.eval.metrics import REGISTRY, backdrop_shift
from idgen.eval.metrics import mean_ci_normal as mean_ci
from idgen.io import atomic_write_text
from idgen.pipelines.names import NONE, SPATIAL, UNIFORM
from idgen.world.backgrounds import BACKDROP_NAMES
from idgen.world.bundle import quiet_prompt_truncation
from idgen.world.captions import Prompt, test_prompts, validation_prompts
from idgen.world.render import (
    ATTRIBUTES,
    Identity,
    person_region,
    render,
    render_reference,
    test_identities,
    validation_identities,
)

# The gates' rows: the three modes, SpatialID as the authors published it, then uniform and
# spatial at id weight 2 (what `make demo`'s strip shows beside weight 1).
UNIFORM_W2, SPATIAL_W2 = "uniform_w2", "spatial_w2"
SPATIAL_PAPER, SPATIAL_V1 = "spatial_paper", "spatial_v1"
ROWS = (NONE, UNIFORM, SPATIAL, SPATIAL_PAPER, SPATIAL_V1, UNIFORM_W2, SPATIAL_W2)
SPATIAL_ROWS = (SPATIAL, SPATIAL_PAPER, SPATIAL_V1)  # each against uniform at the same weight
ID_WEIGHTS = {UNIFORM_W2: 2.0, SPATIAL_W2: 2.0}  # rows not named here: id weight 1
# The attribute table's extra row: the classifier on the renderer's own image of each pair (a perfect
# likeness), the ceiling of every mode's transfer. The five attributes a person names first when judging a
# likeness, summarised together as "transferred".
RENDERED = "rendered"
# The same renders encoded and decoded by the generator's VAE: the most any generator on it can show.
RENDERED_VAE = "rendered_vae"
ATTRIBUTE_ROWS = (RENDERED, RENDERED_VAE, *ROWS)
LIKENESS = ("hair_colour", "hair_style", "skin_tone", "glasses", "facial_hair")
# Coarser reads of two of them, as a person judges at a glance: glasses worn or not (whatever their shape),
# and the skin tone within one step of the 8 (a lightness); with their chance for uniform guesses.
COARSE = {"glasses_worn": 5 / 9, "skin_tone_within_one": 22 / 64}
_GLASSES, _SKIN = list(ATTRIBUTES).index("glasses"), list(ATTRIBUTES).index("skin_tone")
LABELS = {
    RENDERED: "rendered identity (the classifier's ceiling)",
    RENDERED_VAE: "rendered identity through the VAE (the generator's ceiling)",
    SPATIAL_PAPER: "spatial, the authors' refiner",
    SPATIAL_V1: "spatial, the authors' preset v1",
    UNIFORM_W2: "uniform, id weight 2",
    SPATIAL_W2: "spatial, id weight 2",
}


@dataclass
class Pair:
    identity: int
    prompt: Prompt
    seed: int


# The contamination measure before scene pixels: everything outside the two faces (hair, neck, clothes in).
OUTSIDE_FACE = "contamination_outside_face"
SPLITS = ("test", "validation")
WHAT = {
    "test": "held-out identities x held-out prompts",
    "validation": "validation identities x training-distribution prompts",
}
# Validation seeds (of references and of generations) never coincide with the held-out ones.
_SEED_OFFSET = {"test": 0, "validation": 500_000}


def split_people(split: str = "test") -> list[Identity]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return test_identities() if split == "test" else validation_identities()


def pairs(per_identity: int, split: str = "test") -> list[Pair]:
    people = split_people(split)
    prompts = test_prompts() if split == "test" else validation_prompts()
    offset = _SEED_OFFSET[split]
    out = []
    for i in range(len(people)):
        for r in range(per_identity):
            out.append(Pair(i, prompts[(i * 7 + r * 23) % len(prompts)], seed=offset + 1000 * i + r))
    return out


def reference_seed(identity: int, split: str = "test") -> int:
    return _SEED_OFFSET[split] + identity


@torch.no_grad()
def generate(
    pipe: Any,
    prompts: list[str],
    seeds: list[int],
    id_tokens: Tensor | None,
    policy: Any,
    uncond_tokens: Tensor | None = None,
    id_weight: float = 1.0,
) -> Tensor:
    """(B, 3, 64, 64) in [0, 1]: one batched FluxPipeline call, per-sample id tokens and seeds.

    With true CFG the negative pass gets PuLID's uncond id tokens, as IdentityFluxPipeline does."""
    call = dict(
        prompt=prompts,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="pt",
        height=pipe.defaults["height"],
        width=pipe.defaults["width"],
        num_inference_steps=pipe.defaults["num_inference_steps"],
        guidance_scale=pipe.defaults["guidance_scale"],
        max_sequence_length=pipe.defaults["max_sequence_length"],
        true_cfg_scale=pipe.defaults["true_cfg_scale"],
        negative_prompt=[pipe.defaults["negative_prompt"] or ""] * len(prompts),
    )
    if id_tokens is None:
        return pipe.flux(**call).images
    run = InjectionRun(
        id_tokens=id_tokens, policy=policy, uncond_id_tokens=uncond_tokens, id_weight=id_weight
    )
    with pipe.injector.run(run):
        return pipe.flux(**call, callback_on_step_end=run.step_end_callback).images


@dataclass
class Evaluators:
    """The shipped evaluator models and what they make of the reference photos."""

    clip: Any
    recognizer: Any
    segmenter: Any
    ref_embeds: Tensor  # (N, D) reference face embeddings
    backdrops: Tensor  # (N, 3) reference backdrop colours in [0, 1]
    backdrop_names: list[str]  # (N,) their names (render.BACKDROP_NAMES)
    attributes: Any = None  # the attribute classifier
    truth: Tensor | None = None  # (N, 11) the references' true attributes, render.ATTRIBUTES order


def references(pipe: Any, split: str) -> tuple[Evaluators, Any]:
    """Evaluators with the split's reference faces and backdrops, and the references' identity features."""
    from idgen.world.evaluators import AttributeClassifier, FaceRecognizer, FaceSegmenter, WorldCLIP

    clip, recognizer, segmenter = (
        WorldCLIP.from_pretrained(),
        FaceRecognizer.from_pretrained(),
        FaceSegmenter.from_pretrained(),
    )
    people = split_people(split)
    photos = [render_reference(p, seed=reference_seed(i, split)) for i, p in enumerate(people)]
    ref_images = torch.stack([torch.from_numpy(r.image).permute(2, 0, 1).float() / 255 for r in photos])
    ref_boxes = segmenter.face_boxes(ref_images)
    ref_embeds = recognizer.embed(ref_images, [b or (16, 16, 48, 48) for b in ref_boxes])
    backdrops = torch.tensor([r.background_rgb for r in photos], dtype=torch.float32) / 255
    ref_features = pipe.encoder.encode_batch(
        ref_images, torch.tensor([r.face_box for r in photos], dtype=torch.float32)
    )
    names = [str(r.backdrop) for r in photos]
    truth = torch.tensor([p.as_tuple() for p in people])
    evaluators = Evaluators(
        clip,
        recognizer,
        segmenter,
        ref_embeds,
        backdrops,
        names,
        AttributeClassifier.from_pretrained(),
        truth,
    )
    return evaluators, ref_features


def policies(pipe: Any, preset: str | None = None) -> dict[str, Any]:
    """Each row's mask policy: the spatial rows run the model's SpatialMask with `preset`'s schedule (None:
    its own, as `idgen generate` does); `spatial_paper` keeps that schedule with the authors' refiner and
    prior, and `spatial_v1` is the authors' code with their v1 preset."""
    schedule = pipe.spatial.scheduler if preset is None else TemporalSpatialScheduler.from_preset(preset)
    spatial = replace(pipe.spatial, scheduler=schedule)
    return {
        UNIFORM: UniformMask(),
        SPATIAL: spatial,
        SPATIAL_PAPER: SpatialMask(schedule),
        SPATIAL_V1: SpatialMask(TemporalSpatialScheduler.from_preset("v1")),
        UNIFORM_W2: UniformMask(),
        SPATIAL_W2: spatial,
    }


def identity_tokens(pipe: Any, feats: Any, identities: list[int]) -> tuple[Tensor, Tensor]:
    """The adapter's id tokens of the given references, and PuLID's uncond tokens for true CFG."""
    who = torch.tensor(identities)
    tokens = pipe.adapter.encode(feats.id_embedding[who], [h[who] for h in feats.vit_hidden])
    zeros = feats.zeros_like()
    return tokens, pipe.adapter.encode(zeros.id_embedding[who], [h[who] for h in zeros.vit_hidden])


def _generate_modes(pipe: Any, chunk: list[Pair], feats: Any, policies: dict[str, Any]) -> dict[str, Tensor]:
    """Every mode's images of one chunk of pairs, from the same seeds."""
    prompts, seeds = [p.prompt.text for p in chunk], [p.seed for p in chunk]
    tokens, uncond = identity_tokens(pipe, feats, [p.identity for p in chunk])
    images = {NONE: generate(pipe, prompts, seeds, None, None)}
    for mode in ROWS[1:]:
        images[mode] = generate(
            pipe, prompts, seeds, tokens, policies[mode], uncond, ID_WEIGHTS.get(mode, 1.0)
        )
    return images


def _observe(ev: Evaluators, images: Tensor) -> tuple[Any, Tensor, dict[int, Tensor], dict[int, Tensor]]:
    """One segmenter pass, one CLIP pass, one recogniser pass and one attribute pass: face masks, image
    embeddings, and the face embedding and classified attributes of each image with a face (by index)."""
    masks, boxes = ev.segmenter.detect(images)
    image_embeds = ev.clip.image_embeds(images)
    found = [(j, box) for j, box in enumerate(boxes) if box is not None]
    if not found:
        return masks, image_embeds, {}, {}
    index = [j for j, _ in found]
    embeds = ev.recognizer.embed(images[index], [box for _, box in found])
    return masks, image_embeds, dict(zip(index, embeds, strict=True)), _classify(ev, images[index], found)


def _classify(ev: Evaluators, images: Tensor, found: list[tuple[int, Any]]) -> dict[int, Tensor]:
    """The classified option of every attribute (render.ATTRIBUTES order) per found face, by image index."""
    if ev.attributes is None:
        return {}
    pred = ev.attributes.predict(images, [box for _, box in found])
    stacked = torch.stack([pred[name] for name in ATTRIBUTES], dim=1)  # (F, 11)
    return {j: stacked[k] for k, (j, _) in enumerate(found)}


def vae_round_trip(vae: Any) -> Callable[[Tensor], Tensor]:
    """Images in [0, 1] -> encoded by `vae` (the latent mean) and decoded, in [0, 1]."""

    def through(images: Tensor) -> Tensor:
        with torch.no_grad():
            z = vae.encode(images * 2 - 1).latent_dist.mean
            return ((vae.decode(z).sample + 1) / 2).clamp(0, 1)

    return through


def classify_faces(ev: Evaluators, images: Tensor) -> dict[int, Tensor]:
    """`_classify` of the images in which the segmenter finds a face."""
    found = [(j, box) for j, box in enumerate(ev.segmenter.face_boxes(images)) if box is not None]
    return _classify(ev, images[[j for j, _ in found]], found) if found else {}


def _rendered(
    ev: Evaluators,
    chunk: list[Pair],
    people: list[Identity],
    round_trip: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, dict[int, Tensor]]:
    """The attribute classifier on the renderer's own image of each pair (its identity in its prompt's scene,
    its seed): what the classifier reads when the likeness is perfect; and, given the generator's VAE round
    trip, on those renders after it: what a generator on that VAE could show at best."""
    images = torch.stack(
        [torch.from_numpy(render(people[p.identity], p.prompt.scene, seed=p.seed).image) for p in chunk]
    )
    images = images.permute(0, 3, 1, 2).float() / 255
    out = {RENDERED: classify_faces(ev, images)}
    if round_trip is not None:
        out[RENDERED_VAE] = classify_faces(ev, round_trip(images))
    return out


def attribute_pass(
    ev: Evaluators,
    chunk: list[Pair],
    classified: dict[str, dict[int, Tensor]],
    people: list[Identity] | None,
    round_trip: Callable[[Tensor], Tensor] | None = None,
) -> list[dict[str, Any]]:
    """`_attribute_hits` of every mode, and of the rendered identity (and its VAE round trip, given one) when
    `people` are given."""
    if ev.attributes is None:
        return [{} for _ in chunk]
    if people is not None:
        classified = {**_rendered(ev, chunk, people, round_trip), **classified}
    return _attribute_hits(ev, chunk, classified)


def _attribute_hits(
    ev: Evaluators, chunk: list[Pair], classified: dict[str, dict[int, Tensor]]
) -> list[dict]:
    """Per pair, per mode with a face: {attribute: classified option == the reference's true option}."""
    assert ev.truth is not None
    rows: list[dict[str, Any]] = [{} for _ in chunk]
    for mode, by_image in classified.items():
        for j, options in by_image.items():
            rows[j][f"attributes_{mode}"] = attribute_hits(options, ev.truth[chunk[j].identity])
    return rows


def attribute_hits(options: Tensor, truth: Tensor) -> dict[str, bool]:
    """Classified options (11,) against the true ones (11,), both in render.ATTRIBUTES order: a hit per
    attribute, and the `COARSE` reads."""
    hits = {name: bool(h) for name, h in zip(ATTRIBUTES, options == truth, strict=True)}
    hits["glasses_worn"] = bool((options[_GLASSES] > 0) == (truth[_GLASSES] > 0))  # option 0: "none"
    hits["skin_tone_within_one"] = bool((options[_SKIN] - truth[_SKIN]).abs() <= 1)
    return hits


def _contamination(
    ev: Evaluators, pair: Pair, j: int, images: dict[str, Tensor], faces: dict[str, Tensor]
) -> dict[str, Any]:
    """Each mode's backdrop shift on scene pixels (outside the renderer's person region of the prompt's
    framing and position, and outside both images' face masks), and on everything outside the faces."""
    scene = pair.prompt.scene
    person = torch.from_numpy(person_region(scene.framing, scene.position).copy())
    backdrop = ev.backdrops[pair.identity]
    out: dict[str, Any] = {
        "face_px_none": int(faces[NONE][j].sum()),
        "face_px_outside_person_region": int((faces[NONE][j] & ~person).sum()),
    }
    for mode in ROWS[1:]:
        outside_faces = ~(faces[mode][j] | faces[NONE][j])
        gen, base = images[mode][j], images[NONE][j]
        out[f"contamination_{mode}"] = backdrop_shift(gen, base, outside_faces & ~person, backdrop)
        out[f"{OUTSIDE_FACE}_{mode}"] = backdrop_shift(gen, base, outside_faces, backdrop)
    return out


def _rows(
    ev: Evaluators,
    chunk: list[Pair],
    images: dict[str, Tensor],
    people: list[Identity] | None = None,
    round_trip: Callable[[Tensor], Tensor] | None = None,
) -> list[dict[str, Any]]:
    seen = {m: _observe(ev, images[m]) for m in ROWS}
    hits = attribute_pass(ev, chunk, {m: seen[m][3] for m in ROWS}, people, round_trip)
    scene_pred = ev.clip.classify_scene(images[NONE])
    text = ev.clip.text_embeds([p.prompt.text for p in chunk])
    rows = []
    for j, pair in enumerate(chunk):
        row: dict[str, Any] = {"identity": pair.identity, "prompt": pair.prompt.text, "seed": pair.seed}
        row["backdrop"] = ev.backdrop_names[pair.identity]
        row["scene_correct"] = bool(scene_pred[j] == pair.prompt.scene.background)
        for mode in ROWS:
            _, image_embeds, face_embeds, _ = seen[mode]
            row[f"clip_t_{mode}"] = float(image_embeds[j] @ text[j])
            row[f"face_{mode}"] = j in face_embeds
            if j in face_embeds:
                row[f"facesim_{mode}"] = float(face_embeds[j] @ ev.ref_embeds[pair.identity])
        row.update(_contamination(ev, pair, j, images, {m: seen[m][0] for m in ROWS}))
        row.update(hits[j])
        rows.append(row)
    return rows


def run(
    per_identity: int = 1,
    batch: int = 50,
    device: str = "cpu",
    assets: Path | None = None,
    split: str = "test",
    preset: str | None = None,
) -> dict[str, Any]:
    """Gates of the generator in `assets` (default: the shipped one); evaluators are the shipped ones.
    `preset`: the spatial rows' SpatialID schedule (None: the model's own)."""
    from tqdm.auto import tqdm

    from idgen.world.bundle import ASSETS, load_world

    pipe = load_world(device, assets or ASSETS)
    evaluators, ref_features = references(pipe, split)
    modes = policies(pipe, preset)
    todo, people = pairs(per_identity, split), split_people(split)
    round_trip = vae_round_trip(pipe.flux.vae)
    rows: list[dict[str, Any]] = []
    for start in tqdm(range(0, len(todo), batch), desc="gates"):
        chunk = todo[start : start + batch]
        images = _generate_modes(pipe, chunk, ref_features, modes)
        rows += _rows(evaluators, chunk, images, people, round_trip)
    return {"split": split, "spatial_schedule": modes[SPATIAL].scheduler.preset_name(), **summarise(rows)}


def _spatial_vs_uniform(rows: list[dict[str, Any]], out: dict[str, Any], spatial: str, uniform: str) -> None:
    """FaceSim drop (paired) and contamination reduction of a spatial row against uniform at its weight."""
    both = [r for r in rows if f"facesim_{uniform}" in r and f"facesim_{spatial}" in r]
    out[f"facesim_drop_{spatial}_vs_{uniform}"] = mean_ci(
        [r[f"facesim_{uniform}"] - r[f"facesim_{spatial}"] for r in both]
    )
    cu, cs = out[f"contamination_{uniform}"][0], out[f"contamination_{spatial}"][0]
    out[f"contamination_reduction_{spatial}"] = _reduction(cs, cu)


def _facesim_differences(rows: list[dict[str, Any]], out: dict[str, Any]) -> None:
    for uniform in (UNIFORM, UNIFORM_W2):
        paired = [r for r in rows if f"facesim_{uniform}" in r and "facesim_none" in r]
        out[f"facesim_gain_{uniform}_vs_none"] = mean_ci(
            [r[f"facesim_{uniform}"] - r["facesim_none"] for r in paired]
        )
    for mode in SPATIAL_ROWS:
        _spatial_vs_uniform(rows, out, mode, UNIFORM)
    _spatial_vs_uniform(rows, out, SPATIAL_W2, UNIFORM_W2)
    old_u, old_s = out[f"{OUTSIDE_FACE}_{UNIFORM}"][0], out[f"{OUTSIDE_FACE}_{SPATIAL}"][0]
    out[f"{OUTSIDE_FACE}_reduction_{SPATIAL}"] = _reduction(old_s, old_u)


def _reduction(spatial: float, uniform: float) -> float:
    """1 - spatial / uniform; NaN when uniform moved nothing towards the backdrop (nothing to reduce)."""
    return 1 - spatial / uniform if uniform > 0 else math.nan


def _mode_summary(rows: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    out = {
        f"clip_t_{mode}": mean_ci([r[f"clip_t_{mode}"] for r in rows]),
        f"facesim_{mode}": mean_ci([r[f"facesim_{mode}"] for r in rows if f"facesim_{mode}" in r]),
        f"no_face_{mode}": sum(not r[f"face_{mode}"] for r in rows),
    }
    if mode != NONE:
        out[f"contamination_{mode}"] = mean_ci([r[f"contamination_{mode}"] for r in rows])
        out[f"{OUTSIDE_FACE}_{mode}"] = mean_ci([r[f"{OUTSIDE_FACE}_{mode}"] for r in rows])
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "pairs": len(rows),
        "scene_accuracy_none": mean_ci([float(r["scene_correct"]) for r in rows]),
    }
    for mode in ROWS:
        out.update(_mode_summary(rows, mode))
    _facesim_differences(rows, out)
    out["contamination_by_backdrop"] = by_backdrop(rows)
    face_px = sum(r["face_px_none"] for r in rows)
    outside = sum(r["face_px_outside_person_region"] for r in rows)
    out["face_px_outside_person_region"] = outside / max(face_px, 1)
    if any(key.startswith("attributes_") for r in rows for key in r):
        out["attribute_transfer"] = attribute_transfer(rows)
        out["likeness_gains"] = likeness_gains(rows)
    return out


# (mode, against): paired differences of the mean-of-five likeness share.
LIKENESS_PAIRS = ((UNIFORM, NONE), (SPATIAL, NONE), (UNIFORM_W2, UNIFORM), (SPATIAL_W2, SPATIAL))


def likeness_gains(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per `LIKENESS_PAIRS`, the paired mean difference (95% CI) of the share of the five likeness attributes
    transferred, over the pairs where both images have a face: what identity, or id weight 2, adds."""
    out = {}
    for mode, base in LIKENESS_PAIRS:
        both = [r for r in rows if f"attributes_{mode}" in r and f"attributes_{base}" in r]
        gains = [likeness(r[f"attributes_{mode}"]) - likeness(r[f"attributes_{base}"]) for r in both]
        out[f"{mode}_vs_{base}"] = mean_ci(gains)
    return out


def likeness(hits: dict[str, bool]) -> float:
    return sum(hits[name] for name in LIKENESS) / len(LIKENESS)


def attribute_transfer(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per mode (and the rendered identity): of the images with a face, the share whose classified attribute
    equals the reference identity's true one (renderer ground truth), per attribute, with a 95% CI;
    `transferred`: the mean share over the five `LIKENESS` attributes; `faces`: images scored;
    `identities_at_chance`: identities whose own `transferred` is no higher than `none`'s mean."""
    out: dict[str, dict[str, Any]] = {}
    for mode in ATTRIBUTE_ROWS:
        scored = [r[f"attributes_{mode}"] for r in rows if f"attributes_{mode}" in r]
        if not scored:
            continue
        group: dict[str, Any] = {n: mean_ci([float(h[n]) for h in scored]) for n in (*ATTRIBUTES, *COARSE)}
        group["transferred"] = mean_ci([likeness(h) for h in scored])
        group["faces"] = len(scored)
        out[mode] = group
    if NONE in out:
        for mode, group in out.items():
            group.update(_identities_at_chance(rows, mode, out[NONE]["transferred"][0]))
    return out


def _identities_at_chance(rows: list[dict[str, Any]], mode: str, chance: float) -> dict[str, int]:
    """Identities scored under `mode`, and those whose mean likeness share there is <= `chance`."""
    people: dict[int, list[float]] = {}
    for r in rows:
        if f"attributes_{mode}" in r:
            people.setdefault(r["identity"], []).append(likeness(r[f"attributes_{mode}"]))
    return {
        "identities": len(people),
        "identities_at_chance": sum(sum(v) / len(v) <= chance for v in people.values()),
    }


BACKDROP_ROWS = (UNIFORM, SPATIAL, UNIFORM_W2, SPATIAL_W2)


def by_backdrop(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Contamination per reference backdrop colour (every studio backdrop, in BACKDROP_NAMES order): scene
    pixels under uniform and spatial at id weights 1 and 2, and the outside-the-faces one under uniform."""
    out = {}
    for name in BACKDROP_NAMES:
        group = [r for r in rows if r["backdrop"] == name]
        out[name] = {
            "pairs": len(group),
            **{m: mean_ci([r[f"contamination_{m}"] for r in group]) for m in BACKDROP_ROWS},
            f"{OUTSIDE_FACE}_{UNIFORM}": mean_ci([r[f"{OUTSIDE_FACE}_{UNIFORM}"] for r in group]),
        }
    return out


def _f(v: tuple[float, ...], digits: int = 3) -> str:
    return f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"


def modes_table(s: dict[str, Any]) -> list[str]:
    """One row per mode: FaceSim, contamination on scene pixels and outside the faces, CLIP-T, no face."""
    facesim, clip_t = (REGISTRY[key].title for key in ("facesim", "clip_t"))
    lines = [
        f"| mode | {facesim} | contamination, scene pixels (RGB units) | contamination outside the faces "
        f"(RGB units) | {clip_t} | images without a face |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ROWS:
        scene = _f(s[f"contamination_{mode}"], 2) if mode != NONE else "0 (reference)"
        outside = _f(s[f"{OUTSIDE_FACE}_{mode}"], 2) if mode != NONE else "0 (reference)"
        lines.append(
            f"| {LABELS.get(mode, mode)} | {_f(s[f'facesim_{mode}'])} | {scene} | {outside} | "
            f"{_f(s[f'clip_t_{mode}'])} | {s[f'no_face_{mode}']} |"
        )
    return lines


def backdrop_table(s: dict[str, Any]) -> list[str]:
    """Contamination per reference backdrop colour, with each group's 95% CI."""
    keys = (*BACKDROP_ROWS, f"{OUTSIDE_FACE}_{UNIFORM}")
    lines = [
        "| reference backdrop | pairs | uniform | spatial | uniform, id weight 2 | spatial, id weight 2 "
        "| uniform, outside the faces |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, g in s["contamination_by_backdrop"].items():
        cells = [_f(g[key], 2) if g["pairs"] else "–" for key in keys]
        lines.append(f"| {name} | {g['pairs']} | " + " | ".join(cells) + " |")
    return lines


_OTHER_ATTRIBUTES = tuple(name for name in ATTRIBUTES if name not in LIKENESS)
_HEADS = {
    "transferred": "mean of the five",
    "glasses_worn": "glasses worn",
    "skin_tone_within_one": "skin tone ±1",
}


def percent(v: tuple[float, ...] | list[float]) -> str:
    return f"{v[0] * 100:.1f} ± {v[1] * 100:.1f}" if math.isfinite(v[1]) else f"{v[0] * 100:.1f}"


def attribute_table(s: dict[str, Any]) -> list[str]:
    """Attribute transfer per mode (%, 95% CI): the five likeness attributes, their mean, the coarse reads,
    the other attributes, identities at chance; a chance row (uniform guesses) and the rendered identity's row
    first."""
    names = [*LIKENESS, "transferred", *COARSE, *_OTHER_ATTRIBUTES]
    head = [_HEADS.get(n, n.replace("_", " ")) for n in names]
    lines = [
        "| mode | " + " | ".join(head) + " | identities at chance | faces |",
        "|---|" + "---|" * (len(names) + 2),
    ]
    chance = {n: [1 / len(ATTRIBUTES[n]), math.nan] for n in ATTRIBUTES}
    chance["transferred"] = [sum(1 / len(ATTRIBUTES[n]) for n in LIKENESS) / len(LIKENESS), math.nan]
    chance.update({n: [v, math.nan] for n, v in COARSE.items()})
    lines.append(
        "| chance (uniform guesses) | " + " | ".join(percent(chance[n]) for n in names) + " | – | – |"
    )
    for mode, g in s["attribute_transfer"].items():
        cells = " | ".join(percent(g[n]) for n in names)
        at_chance = f"{g['identities_at_chance']} of {g['identities']}" if "identities" in g else "–"
        lines.append(f"| {LABELS.get(mode, mode)} | {cells} | {at_chance} | {g['faces']} |")
    return lines


def summary_lines(s: dict[str, Any]) -> list[str]:
    """The list under the modes table: pairs, scene adherence, FaceSim margins, each spatial row against
    uniform (reduction and drop, with the gates), face pixels outside the person region."""
    acc = s["scene_accuracy_none"]
    lines = [
        f"- pairs: {s['pairs']} ({WHAT[s.get('split', 'test')]}); ± is a 95% CI of the mean",
        f"- scene adherence of the base model (no identity): {acc[0] * 100:.1f}% (gate: >= 90%)",
        f"- FaceSim margin, uniform - none (paired): {_f(s['facesim_gain_uniform_vs_none'])}; "
        f"at id weight 2: {_f(s[f'facesim_gain_{UNIFORM_W2}_vs_none'])}",
    ]
    for mode in SPATIAL_ROWS:
        gate = " (gate: >= 40%)" if mode == "spatial" else ""
        lines += [
            f"- contamination reduction (scene pixels), {LABELS.get(mode, mode)} vs uniform: "
            f"{s[f'contamination_reduction_{mode}'] * 100:.1f}%{gate}",
            f"- FaceSim drop, {LABELS.get(mode, mode)} vs uniform: {_f(s[f'facesim_drop_{mode}_vs_uniform'])}"
            + (" (gate: <= 0.03)" if mode == "spatial" else ""),
        ]
    lines += [
        f"- at id weight 2, spatial vs uniform: contamination reduction (scene pixels) "
        f"{s[f'contamination_reduction_{SPATIAL_W2}'] * 100:.1f}%, FaceSim drop "
        f"{_f(s[f'facesim_drop_{SPATIAL_W2}_vs_{UNIFORM_W2}'])}",
        f"- contamination reduction outside the faces, spatial vs uniform: "
        f"{s[f'{OUTSIDE_FACE}_reduction_{SPATIAL}'] * 100:.1f}%",
        f"- no-identity face pixels outside the renderer's person region: "
        f"{s['face_px_outside_person_region'] * 100:.2f}%",
    ]
    return lines


def attribute_lines(s: dict[str, Any]) -> list[str]:
    """What the attribute table means, the table, and the paired likeness gains under it."""
    return [
        "Attribute transfer: the share (%) of generated faces whose attribute, read by the evaluator "
        "attribute classifier, equals the reference identity's true one.",
        "",
        *attribute_table(s),
        "",
        "- mean of the five, paired differences (percentage points): "
        + "; ".join(
            f"{LABELS.get(m, m)} - {b} {percent(s['likeness_gains'][f'{m}_vs_{b}'])}"
            for m, b in LIKENESS_PAIRS
        ),
    ]


def table(s: dict[str, Any]) -> str:
    lines = [*modes_table(s), "", *summary_lines(s), "", *backdrop_table(s)]
    if "attribute_transfer" in s:
        lines += ["", *attribute_lines(s)]
    return "\n".join(lines)


def demo_pick(summary: dict[str, Any]) -> tuple[str, str]:
    """`make demo`'s reference photo (its file name) and prompt, by the README's rule, fixed before any gates
    result was seen: of the shipped reference photos (the first held-out identities), the first whose
    backdrop colour has the largest mean uniform contamination on scene pixels in `summary` (a test-split
    gates run); and that identity's first prompt in the gates' pairs."""
    from idgen.world.bundle import NUM_REFERENCES

    groups = summary["contamination_by_backdrop"]

    def leak(name: str) -> float:
        value = float(groups[name][UNIFORM][0])
        return value if math.isfinite(value) else -math.inf

    shipped = [
        str(render_reference(p, seed=i).backdrop) for i, p in enumerate(test_identities()[:NUM_REFERENCES])
    ]
    identity = max(range(len(shipped)), key=lambda i: leak(shipped[i]))  # max keeps the first of equals
    prompt = next(pair.prompt.text for pair in pairs(1) if pair.identity == identity)
    return f"test_{identity:03d}.png", prompt


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs-per-identity", type=int, default=3, help="held-out prompts per identity")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--split", choices=SPLITS, default="test", help="held-out (test) or validation")
    parser.add_argument("--json")
    parser.add_argument("--assets", type=Path, help="a generator assets folder (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared CPU)")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="the spatial rows' SpatialID schedule preset (default: the model's own)",
    )
    parser.add_argument("--demo-pick", type=Path, metavar="GATES_JSON",
                        help="print `make demo`'s reference and prompt, chosen by the README's rule from "
                        "this gates summary, and exit")  # fmt: skip
    args = parser.parse_args()
    if args.demo_pick:
        reference, prompt = demo_pick(json.loads(args.demo_pick.read_text()))
        print(f"reference: {reference}\nprompt: {prompt}")
        return
    torch.set_num_threads(args.threads)
    quiet_prompt_truncation()
    summary = run(
        args.pairs_per_identity, args.batch, assets=args.assets, split=args.split, preset=args.preset
    )
    print(table(summary))
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
