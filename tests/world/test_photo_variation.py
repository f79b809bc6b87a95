"""Casual photos of one person (`render_photo`, `PhotoVariation`): exact at no variation, deterministic,
each factor moves what it says, the identity encoder's detector still finds the face."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from idgen.world.render import (
    BROW,
    EYE,
    LIGHTINGS,
    NOSE,
    SKIN,
    TURN_SHIFT,
    PhotoVariation,
    photo_variation,
    render_photo,
    render_reference,
    train_identities,
    validation_identities,
)

PEOPLE = validation_identities()[:12]


def _same(a, b) -> bool:
    return (
        np.array_equal(a.image, b.image)
        and np.array_equal(a.labels, b.labels)
        and np.array_equal(a.face_mask, b.face_mask)
        and (a.face_box, a.background_rgb, a.clothing_colour, a.backdrop)
        == (b.face_box, b.background_rgb, b.clothing_colour, b.backdrop)
    )


def _centroid(render, label: int, columns: slice = slice(None)) -> tuple[float, float]:
    ys, xs = np.nonzero(render.labels[:, columns] == label)
    offset = columns.start or 0
    return float(xs.mean()) + offset, float(ys.mean())


def _glasses_free(count: int = 6, brows: tuple[int, ...] = (0, 1, 2, 3)):
    """People whose eyes, brows and nose nothing covers: no glasses, short or no hair."""
    people = train_identities()
    return [p for p in people if p.glasses == 0 and p.hair_style in (0, 1, 8) and p.brows in brows][:count]


def test_no_variation_is_the_reference_photo_exactly():
    for k, person in enumerate(PEOPLE):
        seed = 900_000 + k
        reference = render_reference(person, seed=seed)
        assert _same(render_photo(person, seed, PhotoVariation()), reference)
        assert photo_variation(seed, 0.0) == PhotoVariation()
        assert _same(render_photo(person, seed, strength=0.0), reference)


def test_variation_is_deterministic_in_the_seed():
    person = PEOPLE[0]
    assert photo_variation(7) == photo_variation(7) != photo_variation(8)
    assert _same(render_photo(person, 7), render_photo(person, 7))
    assert not np.array_equal(render_photo(person, 7).image, render_photo(person, 8).image)
    assert _same(render_photo(person, 7), render_photo(person, 7, photo_variation(7)))


def test_random_variation_stays_in_its_documented_ranges():
    draws = [photo_variation(seed, 1.0) for seed in range(2000)]
    assert max(abs(v.offset[0]) for v in draws) <= 3.0 and max(abs(v.offset[1]) for v in draws) <= 3.0
    assert all(0.9 <= v.scale <= 1.1 and abs(v.turn) <= 0.5 and abs(v.tilt) <= 0.2 for v in draws)
    assert all(-0.05 <= v.brow_raise <= 0.1 and 0.5 <= v.eye_open <= 1.0 for v in draws)
    assert all(abs(v.light_slope) <= 0.35 and all(0.4 <= c <= 1.0 for c in v.tint) for v in draws)
    narrowed = sum(v.eye_open < 1.0 for v in draws) / len(draws)
    assert 0.45 < narrowed < 0.55  # half the photos
    assert max(abs(v.turn) for v in draws) > 0.49 and max(abs(v.tilt) for v in draws) > 0.19
    half = [photo_variation(seed, 0.5) for seed in range(200)]
    assert all(abs(h.turn) == pytest.approx(abs(v.turn) / 2) for h, v in zip(half, draws, strict=False))


def test_out_of_range_variation_is_refused():
    for bad in ({"scale": 2.0}, {"eye_open": 1.5}, {"turn": 1.0}, {"tilt": -0.6}, {"tint": (1.2, 1, 1)}):
        with pytest.raises(ValueError, match="PhotoVariation out of range"):
            PhotoVariation(**bad)


def test_head_turn_slides_the_features_and_keeps_the_face_outline():
    for k, person in enumerate(_glasses_free()):
        seed = 50 + k
        plain = render_photo(person, seed, PhotoVariation())
        turned = render_photo(person, seed, PhotoVariation(turn=0.4))
        shift = TURN_SHIFT * math.sin(0.4) * 15.0  # face units -> pixels at close-up (jitter: +-3%)
        nose_x = _centroid(turned, NOSE)[0] - _centroid(plain, NOSE)[0]
        assert shift * 0.9 < nose_x < shift * 1.1
        assert _centroid(turned, NOSE)[1] == pytest.approx(_centroid(plain, NOSE)[1], abs=0.35)
        assert turned.face_box[3] == plain.face_box[3]  # the outline stays (the hairline slides a little)
        if person.hair_style == 0:  # bald: nothing covers the outline
            assert turned.face_box == plain.face_box
        left = render_photo(person, seed, PhotoVariation(turn=-0.4))
        assert _centroid(left, NOSE)[0] - _centroid(plain, NOSE)[0] == pytest.approx(-nose_x, abs=0.3)


def test_raised_brows_and_narrowed_eyes():
    lifts, eye_pixels = [], []
    for k, person in enumerate(_glasses_free(brows=(1,))):  # thick brows: enough pixels for a centroid
        seed = 70 + k
        plain = render_photo(person, seed, PhotoVariation())
        raised = render_photo(person, seed, PhotoVariation(brow_raise=0.1))
        lifts.append(_centroid(plain, BROW)[1] - _centroid(raised, BROW)[1])
        assert np.array_equal(raised.labels == EYE, plain.labels == EYE)  # only the brows moved
        narrowed = render_photo(person, seed, PhotoVariation(eye_open=0.5))
        eye_plain, eye_narrow = int((plain.labels == EYE).sum()), int((narrowed.labels == EYE).sum())
        assert eye_narrow < 0.8 * eye_plain
        eye_pixels += [(eye_plain, eye_narrow)]
        assert np.array_equal(narrowed.face_mask, plain.face_mask)  # lids are skin: still face
        assert ((narrowed.labels == SKIN) & (plain.labels == EYE)).any()
    assert sum(n for _, n in eye_pixels) < 0.65 * sum(n for n, _ in eye_pixels)  # lids cover half the height
    # 0.1 face units at 15 px per unit: 1.5 px, each measured on whole-pixel labels of thin brows
    assert np.mean(lifts) == pytest.approx(1.5, abs=0.3) and all(0.5 <= lift <= 2.5 for lift in lifts)


def test_camera_roll_tilts_the_line_between_the_eyes():
    for k, person in enumerate(_glasses_free()):
        seed = 90 + k
        rolled = render_photo(person, seed, PhotoVariation(tilt=0.2))
        plain = render_photo(person, seed, PhotoVariation())
        mid = round(_centroid(plain, NOSE)[0])
        (lx, ly), (rx, ry) = _centroid(rolled, EYE, slice(0, mid)), _centroid(rolled, EYE, slice(mid, 64))
        assert math.atan2(ry - ly, rx - lx) == pytest.approx(0.2, abs=0.06)  # clockwise: right eye lower
        (lx, ly), (rx, ry) = _centroid(plain, EYE, slice(0, mid)), _centroid(plain, EYE, slice(mid, 64))
        assert abs(math.atan2(ry - ly, rx - lx)) < 0.03
        assert np.array_equal(rolled.face_mask, rolled.labels >= SKIN)


def test_lighting_tint_and_side_light_are_exact():
    person, seed = PEOPLE[3], 11
    plain = render_photo(person, seed, PhotoVariation()).image.astype(np.float64)
    warm = LIGHTINGS["warm"]
    tinted = render_photo(person, seed, PhotoVariation(tint=warm)).image.astype(np.float64)
    # The same canvas, tinted before rounding: off by at most the two roundings (0.5 each)
    assert np.abs(tinted - plain * np.asarray(warm)).max() <= 1.0
    assert np.abs(tinted - plain * np.asarray(warm)).mean() < 0.3
    lit = render_photo(person, seed, PhotoVariation(light_slope=0.3)).image
    gain = 1.0 - 0.3 * (1.0 - (np.arange(64) + 0.5) / 64)  # light from the right
    expected = np.clip(np.rint(plain * gain[None, :, None].astype(np.float32)), 0, 255)
    assert np.array_equal(lit, expected.astype(np.uint8))
    shade = render_photo(person, seed, PhotoVariation(light_slope=-0.3)).image
    assert np.array_equal(shade[:, ::-1], np.clip(np.rint(plain[:, ::-1] * gain[None, :, None]), 0, 255))


@pytest.mark.slow
def test_the_identity_encoders_detector_finds_the_face_in_varied_photos():
    import torch

    from idgen.world.identity import WorldIdentityEncoder

    detector = WorldIdentityEncoder.from_pretrained().detector
    people = validation_identities() + train_identities()[:100]
    renders = [render_photo(p, 900_000 + 1000 * i + k) for i, p in enumerate(people) for k in range(2)]
    images = torch.stack([torch.from_numpy(r.image).permute(2, 0, 1).float() / 255 for r in renders])
    with torch.no_grad():
        boxes, probs = detector.detect(images)
    truth = torch.tensor([r.face_box for r in renders], dtype=torch.float32)
    inter = (torch.minimum(boxes[:, 2:], truth[:, 2:]) - torch.maximum(boxes[:, :2], truth[:, :2])).clamp(
        min=0
    )
    area = lambda b: (b[:, 2:] - b[:, :2]).prod(-1)  # noqa: E731
    iou = inter.prod(-1) / (area(boxes) + area(truth) - inter.prod(-1))
    assert float(((probs >= 0.5) & (iou > 0.5)).float().mean()) >= 0.99


def _benchmark():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "several_photos.py"
    spec = importlib.util.spec_from_file_location("several_photos", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_varied_photos_and_subgroups():
    from idgen.world.gates import pairs

    bench = _benchmark()
    person = PEOPLE[0]
    photos = bench.conditioning_photos(person, 4, "validation", "varied", 1.0)
    seeds = [900_000 + 4000 + k for k in range(3)]
    assert [np.asarray(p).tobytes() for p in photos] == [
        render_photo(person, s).image.tobytes() for s in seeds
    ]
    studio = bench.conditioning_photos(person, 4, "validation", "studio", 1.0)
    assert [np.asarray(p).tobytes() for p in studio] == [
        render_photo(person, s, strength=0.0).image.tobytes() for s in seeds
    ]
    sims = {"1 photo": [0.1, 0.2, 0.3, math.nan], "3 photos, mean-all": [0.2, 0.2, 0.5, 0.4]}
    groups = {"odd": [True, False, True, False], "even": [False, True, False, True]}
    rows = bench.subgroups(sims, groups)
    assert rows["odd"]["people"] == 2 and rows["odd"]["1 photo"] == pytest.approx(0.2)
    assert rows["odd"]["3 photos, mean-all"]["mean"] == pytest.approx(0.15)
    assert rows["even"]["3 photos, mean-all"]["n"] == 1  # the person without a face in run 1 is left out
    result = {**bench.summarise(sims, "validation", 4), "photos_kind": "varied", "strength": 1.0}
    shown = bench.table({**result, "subgroups": rows, "photos_without_face": 0})
    assert "varied (strength 1) photos (0 without a face, skipped)" in shown
    assert "| odd | 2 | 0.2000 | +0.1500 ± " in shown
    todo = pairs(1, "validation")[:8]
    scenes, who = [p.prompt.scene for p in todo], [p.identity for p in todo]
    labels = bench.subgroup_labels(scenes, who, "varied", 1.0)
    turned = [abs(photo_variation(900_000 + 1000 * i, 1.0).turn) > 0.25 for i in range(8)]
    assert labels["single photo: head turned > half range"] == turned
    assert labels["single photo: not head turned"] == [not t for t in turned]
    assert sum(labels["prompt left"]) + sum(labels["prompt centre"]) + sum(labels["prompt right"]) == 8
    assert "single photo: eyes narrowed" not in bench.subgroup_labels(scenes, who, "studio", 1.0)
    # With each photo as the single one in turn: entries are photo 1's pairs, then photo 2's, then photo 3's
    each = bench.subgroup_labels(scenes * 3, who * 3, "varied", 1.0, singles=3)
    expected = [
        abs(photo_variation(900_000 + 1000 * i + k, 1.0).turn) > 0.25 for k in range(3) for i in range(8)
    ]
    assert each["single photo: head turned > half range"] == expected
    assert each["prompt left"] == labels["prompt left"] * 3


def test_benchmark_averages_each_persons_prompts_before_the_interval():
    bench = _benchmark()
    # person 0: differences 0.1 and 0.3 (mean 0.2); person 1: 0.4 and a pair without a face; person 2: 0.0
    one = [0.1, 0.2, 0.3, math.nan, 0.5, 0.5]
    three = [0.2, 0.5, 0.7, 0.9, 0.5, 0.5]
    diff = bench.paired(one, three, [0, 0, 1, 1, 2, 2])
    assert diff["n"] == 3 and diff["mean"] == pytest.approx(0.2)
    # t(0.975, 2 dof) = 4.302653; sample std of (0.2, 0.4, 0.0) = 0.2
    assert diff["ci95"] == pytest.approx(4.3026527 * 0.2 / math.sqrt(3), rel=1e-6)
    assert bench.paired(one, three)["n"] == 5  # without people, every pair is its own person
    result = bench.summarise({"1 photo": one, "3 photos, mean-all": three}, "test", 3, [0, 0, 1, 1, 2, 2])
    assert result["rows"]["3 photos, mean-all"]["minus_1_photo"] == diff
    assert result["rows"]["1 photo"] == {"facesim": pytest.approx(0.32), "faces": 5}
