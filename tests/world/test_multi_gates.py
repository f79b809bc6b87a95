"""The several-identities gates: face scoring on ground-truth two-person renders, the summary, the table."""

from __future__ import annotations

import json
import math
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch

from idgen.identity.base import IdentityFeatures
from idgen.world.captions import TwoPeoplePrompt
from idgen.world.gates import Evaluators, reference_seed
from idgen.world.multi_gates import (
    BACKDROP_GROUPS,
    BOUNDED,
    HALVES,
    LABELS,
    MODES,
    NONE,
    RENDERS,
    SEPARATED,
    SIDES,
    SINGLE,
    SINGLE_W2,
    SPATIAL,
    SPATIAL_W2,
    UNIFORM,
    UNIFORM_BOXES,
    Case,
    cases,
    clothes_regions,
    clothing_colours,
    competitions,
    counts_line,
    example_arguments,
    generate_modes,
    mode_faces,
    negative_rules,
    readme_example,
    rows,
    side_regions,
    summarise,
    table,
    wilson,
)
from idgen.world.render import (
    TwoPeopleScene,
    render_reference,
    render_two_people,
    test_identities,
    two_people_region,
)

PAIRS = 12


_PROMPT = TwoPeoplePrompt("", TwoPeopleScene())


@cache
def _evaluators() -> Evaluators:
    """The shipped recogniser and segmenter with the test split's reference faces (no generator)."""
    from idgen.world.evaluators import FaceRecognizer, FaceSegmenter

    recognizer, segmenter = FaceRecognizer.from_pretrained(), FaceSegmenter.from_pretrained()
    photos = [render_reference(p, seed=reference_seed(i)) for i, p in enumerate(test_identities())]
    images = torch.stack([torch.from_numpy(r.image).permute(2, 0, 1).float() / 255 for r in photos])
    embeds = recognizer.embed(images, [b or (16, 16, 48, 48) for b in segmenter.face_boxes(images)])
    names = [str(r.backdrop) for r in photos]
    return Evaluators(None, recognizer, segmenter, embeds, torch.zeros(len(photos), 3), names)


def _ground_truth(chunk: list[Case]) -> torch.Tensor:
    """Two-person renders of each case's people, used as if generated: (B, 3, 64, 64) in [0, 1]."""
    people = test_identities()
    images = []
    for k, c in enumerate(chunk):
        scene = TwoPeopleScene(
            background=k % 12, lighting=k % 5, left_clothing=k % 11, right_clothing=(k + 3) % 11
        )
        image = render_two_people(people[c.left], people[c.right], scene, seed=k).image
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    return torch.stack(images)


def _cases(swap: bool = False) -> list[Case]:
    pairs = [(2 * k, 2 * k + 1) for k in range(PAIRS)]
    return [Case(*(pair[::-1] if swap else pair), _PROMPT, seed=k) for k, pair in enumerate(pairs)]


def test_the_halves_hold_each_rendered_person() -> None:
    regions = side_regions()
    assert regions.shape == (2, 64, 64) and regions.dtype == torch.bool
    assert int(regions[0].sum()) == int(regions[1].sum()) == 64 * 32 and not (regions[0] & regions[1]).any()
    for side in range(2):
        assert not (torch.from_numpy(two_people_region(side).copy()) & ~regions[side]).any()


def test_ground_truth_faces_are_assigned_to_their_own_reference() -> None:
    ev, chunk = _evaluators(), _cases()
    scores = mode_faces(ev, UNIFORM, _ground_truth(chunk), chunk)
    faces = [s[side] for s in scores for side in SIDES]
    assert all(f["face"] for f in faces)  # the segmenter finds both people's faces in every render
    assert sum(f["correct"] for f in faces) == 2 * PAIRS  # every face is closer to its own reference
    own, other = (sum(f[k] for f in faces) / len(faces) for k in ("own", "other"))
    assert (own, other) == pytest.approx((0.7806, 0.0226), abs=1e-3)  # bleed far below FaceSim


def test_swapping_the_references_flips_every_assignment() -> None:
    ev, chunk, swapped = _evaluators(), _cases(), _cases(swap=True)
    images = _ground_truth(chunk)
    straight = mode_faces(ev, UNIFORM, images, chunk)
    flipped = mode_faces(ev, UNIFORM, images, [Case(c.left, c.right, c.prompt, c.seed) for c in swapped])
    for a, b in zip(straight, flipped, strict=True):
        for side in SIDES:
            assert b[side]["correct"] is not a[side]["correct"]
            assert (b[side]["own"], b[side]["other"]) == (a[side]["other"], a[side]["own"])


def test_single_mode_scores_each_person_in_their_own_image() -> None:
    ev, chunk = _evaluators(), _cases()
    images = _ground_truth(chunk)
    both = mode_faces(ev, UNIFORM, images, chunk)
    # left runs, then right runs: here the same renders twice, so the scores equal the two-person ones
    single = mode_faces(ev, SINGLE, torch.cat([images, images]), chunk)
    assert single == both
    blank = mode_faces(ev, SINGLE, torch.cat([images, torch.zeros_like(images)]), chunk)
    for s, b in zip(blank, both, strict=True):
        # The recogniser embeds only the faces found, so here a smaller batch: on CPUs whose kernels
        # depend on the batch size (AVX512-BF16), the cosines move in the 7th digit.
        assert (
            s["left"] == pytest.approx(b["left"], abs=1e-6) and s["left"]["correct"] is b["left"]["correct"]
        )
        assert s["right"] == {"face": False}


def test_clothing_colours_of_ground_truth_renders_are_the_scenes() -> None:
    people, images, scenes = test_identities(), [], []
    for k in range(24):  # every lighting, every clothing colour on both sides
        scene = TwoPeopleScene(
            background=k % 12, lighting=k % 5, left_clothing=k % 11, right_clothing=(k + 5) % 11
        )
        image = render_two_people(people[k], people[k + 50], scene, seed=k).image
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
        scenes.append(scene)
    found = clothing_colours(torch.stack(images), [s.lighting for s in scenes])
    assert found == [s.clothing for s in scenes]
    regions = clothes_regions()
    assert regions.shape == (2, 64, 64) and regions[0].any() and regions[1].any()
    assert not regions[0][:, 32:].any() and not regions[1][:, :32].any()


def test_wilson_interval() -> None:
    p, lo, hi, n = wilson(9, 10)
    assert (p, n) == (0.9, 10)
    assert (lo, hi) == pytest.approx((0.59585, 0.98212), abs=1e-5)
    assert wilson(0, 4)[:3] == (0.0, 0.0, pytest.approx(0.48990, abs=1e-5))
    assert all(math.isnan(v) for v in wilson(0, 0)[:3])


def _row(k: int, backdrops: list[str], faces: dict[str, tuple[float, float] | None]) -> dict[str, Any]:
    """A result row: each mode's (own, other) per face (None: missing), the same on both sides."""
    row: dict[str, Any] = {
        "left": 2 * k,
        "right": 2 * k + 1,
        "prompt": "p",
        "seed": k,
        "backdrops": backdrops,
    }
    for mode in MODES:
        row |= {f"clip_t_{mode}": 0.5 + 0.1 * k, f"scene_correct_{mode}": k != 1}
        row |= {f"clothing_correct_{mode}_left": True, f"clothing_correct_{mode}_right": k == 0}
        for side in SIDES:
            score = faces.get(mode, (0.2, 0.1))
            if score is None:
                row[f"face_{mode}_{side}"] = False
                continue
            own, other = score
            row |= {
                f"face_{mode}_{side}": True,
                f"own_{mode}_{side}": own,
                f"other_{mode}_{side}": other,
                f"correct_{mode}_{side}": own > other,
            }
    return row


def test_summary_gates_and_table() -> None:
    rows = [
        _row(0, ["cyan", "cyan"], {SPATIAL: (0.5, 0.1), SINGLE: (0.52, 0.1), UNIFORM: (0.3, 0.4)}),
        _row(1, ["cyan", "lime"], {SPATIAL: (0.4, 0.2), SINGLE: (0.5, 0.1), UNIFORM: (0.3, 0.3)}),
        _row(2, ["lime", "cyan"], {SPATIAL: None, SINGLE: (0.6, 0.0), UNIFORM: (0.2, 0.3)}),
    ]
    s = summarise(rows, "test")
    assert (s["images"], s["identity_pairs"], s["split"]) == (3, 3, "test")
    spatial, uniform = s["modes"][SPATIAL], s["modes"][UNIFORM]
    assert spatial["faces"] == 6 and spatial["missing_faces"] == 2 and spatial["images_missing_a_face"] == 1
    assert spatial["assignment"][0] == 1.0 and spatial["assignment"][3] == 4
    assert spatial["assignment_missing_wrong"][0] == pytest.approx(4 / 6)
    assert uniform["assignment"][:2] == (0.0, 0.0) and uniform["assignment"][3] == 6
    assert spatial["facesim"][0] == pytest.approx(0.45) and spatial["bleed"][0] == pytest.approx(0.15)
    assert spatial["clip_t"][0] == pytest.approx(0.6) and spatial["scene_accuracy"][0] == pytest.approx(2 / 3)
    assert spatial["clothing_accuracy"][0] == pytest.approx(4 / 6)
    assert spatial["by_side"]["left"]["facesim"][0] == pytest.approx(0.45)
    assert spatial["by_backdrop"][BACKDROP_GROUPS[0]]["faces"] == 2
    assert spatial["by_backdrop"][BACKDROP_GROUPS[1]]["assignment"][3] == 2
    g = s["gates"]
    # FaceSim spatial - single on the 4 faces found in both: -0.02 twice, -0.1 twice
    assert g["facesim_minus_single"][0] == pytest.approx(-0.06) and g["facesim_minus_single"][2] == 4
    assert g["facesim"] is False  # -0.06 < -0.05
    # bleed spatial - uniform: -0.3 twice, -0.1 twice; its 95% t interval ends below 0
    assert g["bleed_minus_uniform"][0] == pytest.approx(-0.2) and g["bleed"] is True
    assert g["bleed_minus_uniform"][1] == pytest.approx(3.1824 * math.sqrt(0.04 / 3) / 2, abs=1e-4)
    assert g["assignment"] is True and g["assignment_separated"] is True  # separated: (0.2, 0.1) everywhere
    assert g["facesim_minus_single_separated"][0] == pytest.approx(-0.34) and g["facesim_separated"] is False
    text = table(s)
    lines = text.splitlines()
    assert lines[0].startswith("| mode | assignment accuracy |")
    assert [line.split(" | ")[0] for line in lines[2 : 2 + len(MODES)]] == [f"| {LABELS[m]}" for m in MODES]
    assert lines[2 + len(MODES)] == ""
    assert lines[2 + MODES.index(SPATIAL)].startswith(
        f"| {LABELS[SPATIAL]} | 100.0% [51.0, 100.0] | 0.450 ± "
    )
    assert "| 2 (1) |" in lines[2 + MODES.index(SPATIAL)]
    assert "(gate: >= −0.05; **not met**)" in text and "(gate: >= 90%; met)" in text
    assert json.loads(json.dumps(s))["modes"][SPATIAL]["missing_faces"] == 2
    assert "negative pass" not in counts_line(s)
    rules = {UNIFORM: "uncond", SPATIAL: "others", SPATIAL_W2: "others"}
    assert counts_line({**s, "negative_identity": rules}).endswith(
        f"; each person's true-CFG negative pass ({LABELS[UNIFORM]}: uncond; {LABELS[SPATIAL]}: others)"
    )


def _person(feats: IdentityFeatures, i: int) -> IdentityFeatures:
    return IdentityFeatures(feats.id_embedding[i : i + 1], [h[i : i + 1] for h in feats.vit_hidden])


@pytest.mark.slow
def test_batched_modes_are_the_library_calls_and_a_tiny_run_summarises() -> None:
    """Each mode's batched generation equals the several-people call a user makes (same people, boxes and
    seed), and one pair with one prompt goes through scoring, summary and table."""
    from idgen.world.bundle import load_world
    from idgen.world.gates import references

    pipe = load_world()
    ev, feats = references(pipe, "test")
    chunk = cases(1, 1)
    images = generate_modes(pipe, chunk, feats, competitions(pipe))
    c = chunk[0]
    a, b = _person(feats, c.left), _person(feats, c.right)

    def call(
        people: list[IdentityFeatures],
        mode: str,
        boxes: list[Any] | None = None,
        w: float = 1.0,
        bound: bool | None = None,
    ) -> Any:
        out = pipe(
            c.prompt.text,
            id_features=people,
            mode=mode,
            boxes=boxes,
            id_weight=w,
            seed=c.seed,
            output_type="pt",
            bound_attention=bound,
        )
        return out.images

    expected = {
        NONE: pipe(c.prompt.text, mode=NONE, seed=c.seed, output_type="pt").images,
        UNIFORM: call([a, b], UNIFORM),
        SPATIAL: call([a, b], SPATIAL, list(HALVES)),
        BOUNDED: call([a, b], SPATIAL, list(HALVES), bound=True),
        SEPARATED: call([a, b], SPATIAL),
        UNIFORM_BOXES: call([a, b], UNIFORM, list(HALVES)),
        SINGLE: torch.cat([call([a], SPATIAL, [HALVES[0]]), call([b], SPATIAL, [HALVES[1]])]),
        SPATIAL_W2: call([a, b], SPATIAL, list(HALVES), 2.0),
        SINGLE_W2: torch.cat([call([a], SPATIAL, [HALVES[0]], 2.0), call([b], SPATIAL, [HALVES[1]], 2.0)]),
    }
    for mode in MODES[:-1]:
        torch.testing.assert_close(images[mode], expected[mode], atol=1e-5, rtol=0)
    # The world samples with true CFG: the spatial modes' negative pass takes the other person's tokens.
    spatial_rules = {SPATIAL: "others", BOUNDED: "others", SEPARATED: "others", SPATIAL_W2: "others"}
    assert negative_rules(pipe) == {UNIFORM: "uncond", UNIFORM_BOXES: "uncond", **spatial_rules}
    assert set(negative_rules(pipe, "uncond").values()) == {"uncond"}
    assert MODES[-1] == RENDERS and images[RENDERS].shape == (1, 3, 64, 64)
    assert not torch.allclose(images[SPATIAL], images[UNIFORM], atol=1e-2)
    assert not torch.allclose(images[SPATIAL], images[BOUNDED], atol=1e-2)  # the boxes bound the attention

    s = summarise(rows(ev, chunk, images), "test")
    assert (s["images"], s["identity_pairs"]) == (1, 1) and set(s["modes"]) == set(MODES)
    assert all(s["modes"][m]["faces"] == 2 for m in MODES)
    assert s["modes"][RENDERS]["assignment"][:1] == (1.0,) and s["modes"][RENDERS]["missing_faces"] == 0
    assert set(s["rows"][0]) >= {f"face_{m}_{side}" for m in MODES for side in SIDES}
    assert len(table(s).splitlines()) == 2 + len(MODES) + 1 + 1 + 7 + 1 + 2 + len(MODES) + 1 + 2 + len(MODES)


def test_cases_are_fixed_and_checked() -> None:
    todo = cases(50, 2)
    assert len(todo) == 100 and len({c.seed for c in todo}) == 100
    assert [(c.left, c.right) for c in todo[:4]] == [(0, 1), (0, 1), (2, 3), (2, 3)]
    assert todo[0].prompt != todo[1].prompt and cases(50, 2) == todo
    gated = cases()  # the gates' default: 8 prompts per pair, 800 faces, the first 2 of each pair as above
    assert len(gated) == 400 and len({c.seed for c in gated}) == 400
    assert [c for k, c in enumerate(gated) if k % 8 < 2] == todo
    assert all(len({c.prompt for c in gated[8 * k : 8 * k + 8]}) == 8 for k in range(50))
    validation = cases(3, 1, "validation")
    assert not {c.seed for c in validation} & {c.seed for c in todo}
    for bad in (0, 51):
        with pytest.raises(ValueError, match="pairs must be in"):
            cases(bad, 1)
    with pytest.raises(ValueError, match="prompts_per_pair"):
        cases(1, 0)


def test_the_readme_example_follows_its_rule() -> None:
    from idgen.world.captions import two_people_test_prompts

    args = example_arguments("outputs/two-people.png")
    assert args == [
        "generate",
        "--prompt",
        two_people_test_prompts()[0].text,
        "--id-image",
        "src/idgen/world/assets/references/test_000.png",
        "--id-image",
        "src/idgen/world/assets/references/test_001.png",
        "--id-box",
        "0,0,0.5,1",
        "--id-box",
        "0.5,0,1,1",
        "--mode",
        "spatial",
        "--out",
        "outputs/two-people.png",
        "--overwrite",
        "--mask-strip",
    ]
    assert "--mask-strip" not in example_arguments("u.png", UNIFORM)


def test_the_readme_example_keeps_existing_files(tmp_path: Path) -> None:
    (tmp_path / "two-people.masks.png").write_bytes(b"mine")
    with pytest.raises(SystemExit, match=r"two-people\.masks\.png exists; pass --overwrite"):
        readme_example(tmp_path)
    assert (tmp_path / "two-people.masks.png").read_bytes() == b"mine"


def test_the_documented_example_is_the_rule_s() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "multi-identity.md").read_text()
    block = docs.split("### Example\n\n```\n", 1)[1].split("```", 1)[0]
    documented = shlex.split(block.replace("\\\n", " "))
    args = example_arguments("outputs/two-people.png")
    # the same arguments (the documented order reads better; --overwrite is the script's own)
    assert sorted(documented) == sorted(["idgen", *(a for a in args if a != "--overwrite")])
    assert documented[:3] == ["idgen", "generate", "--prompt"]
