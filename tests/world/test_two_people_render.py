"""Two people in one demo-world image: layout without overlap, ground truth consistent with the pixels, and
every single-person render unchanged."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from idgen.world import backgrounds as bg
from idgen.world.render import (
    BACKGROUND,
    CLOTHES,
    CLOTHING_COLOURS,
    CLOTHING_NAMES,
    FACE_LABELS,
    SKIN,
    Scene,
    TwoPeopleScene,
    render,
    render_reference,
    render_two_people,
    test_identities,
    train_identities,
    two_people_layers,
    two_people_region,
)

SS = bg.SS


def _single_person_digest() -> str:
    h = hashlib.sha256()
    ids = train_identities()
    rng = np.random.default_rng(7)
    for i in range(60):
        r = render(ids[int(rng.integers(1000))], Scene.random(rng), seed=i)
        for a in (r.image, r.face_mask, r.labels):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(repr((r.face_box, r.background_rgb)).encode())
    for i in range(8):
        r = render_reference(test_identities()[i], seed=i)
        for a in (r.image, r.face_mask, r.labels):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_single_person_renders_unchanged() -> None:
    # Digest of 60 scene renders and 8 reference photos taken before two-person rendering existed.
    assert _single_person_digest() == "1644b536fcfb4915ec0d45072d31a5e51e8863e77bb1c1b8b33ee459e759bad5"


def _pairs(n: int) -> list[tuple[int, int, TwoPeopleScene, int]]:
    rng = np.random.default_rng(321)
    return [
        (int(rng.integers(1000)), int(rng.integers(1000)), TwoPeopleScene.random(rng), i) for i in range(n)
    ]


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _face_mask(lab: np.ndarray) -> np.ndarray:
    # The module docstring's rule, restated: a pixel is face when >= 8 of its 16 supersamples are face.
    blocks = lab.reshape(64, SS, 64, SS).transpose(0, 2, 1, 3).reshape(64, 64, SS * SS)
    return np.isin(blocks, FACE_LABELS).sum(axis=2) >= 8


def test_render_shapes_and_determinism() -> None:
    ids = train_identities()
    scene = TwoPeopleScene.from_names("garden", "warm", "red", "blue")
    r = render_two_people(ids[0], ids[1], scene, seed=3)
    again = render_two_people(ids[0], ids[1], scene, seed=3)
    assert r.image.shape == (64, 64, 3) and r.image.dtype == np.uint8
    assert r.labels.shape == r.person_index.shape == (64, 64)
    assert r.person_index.dtype == np.uint8 and set(np.unique(r.person_index)) == {0, 1, 2}
    assert r.identities == (ids[0], ids[1]) and r.scene == scene
    for a, b in zip(
        (r.image, r.labels, r.person_index, *r.face_masks),
        (again.image, again.labels, again.person_index, *again.face_masks),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    other = render_two_people(ids[0], ids[1], scene, seed=4)
    assert not np.array_equal(r.image, other.image)


@pytest.mark.parametrize("left, right, scene, seed", _pairs(24))
def test_people_never_overlap_and_truth_is_consistent(
    left: int, right: int, scene: TwoPeopleScene, seed: int
) -> None:
    ids = train_identities()
    _, (lab_left, lab_right), _ = two_people_layers(ids[left], ids[right], scene, seed)
    on_left, on_right = lab_left != BACKGROUND, lab_right != BACKGROUND
    assert not (on_left & on_right).any()
    # Left person strictly left of the middle column, right person strictly right of it (in pixels).
    assert np.flatnonzero(on_left.any(axis=0)).max() < 31 * SS
    assert np.flatnonzero(on_right.any(axis=0)).min() >= 33 * SS
    r = render_two_people(ids[left], ids[right], scene, seed)
    np.testing.assert_array_equal(r.person_index == 0, r.labels == BACKGROUND)
    for side, lab in enumerate((lab_left, lab_right)):
        mask = r.face_masks[side]
        np.testing.assert_array_equal(mask, _face_mask(lab))
        assert mask.sum() > 60
        assert (r.person_index[mask] == side + 1).all()
        assert (r.labels[mask] >= SKIN).all()
        assert r.face_boxes[side] == _tight_box(mask)
    np.testing.assert_array_equal(r.labels >= SKIN, r.face_masks[0] | r.face_masks[1])


def test_clothes_show_each_side_colour() -> None:
    ids = train_identities()
    scene = TwoPeopleScene.from_names("beach", "neutral", "green", "purple")
    r = render_two_people(ids[5], ids[6], scene, seed=0)
    for side, name in enumerate(("green", "purple")):
        clothes = (r.labels == CLOTHES) & (r.person_index == side + 1)
        median = np.median(r.image[clothes].astype(float), axis=0)
        assert clothes.sum() > 100
        assert np.abs(median - np.asarray(CLOTHING_COLOURS[name])).max() <= 2


def test_scene_validation_and_random() -> None:
    with pytest.raises(ValueError, match=r"TwoPeopleScene\.left_clothing"):
        TwoPeopleScene(left_clothing=len(CLOTHING_NAMES))
    with pytest.raises(ValueError, match=r"TwoPeopleScene\.background"):
        TwoPeopleScene(background=-1)
    rng = np.random.default_rng(0)
    scenes = [TwoPeopleScene.random(rng) for _ in range(500)]
    assert all(s.left_clothing != s.right_clothing for s in scenes)
    assert {s.left_clothing for s in scenes} == set(range(len(CLOTHING_NAMES)))
    assert {s.right_clothing for s in scenes} == set(range(len(CLOTHING_NAMES)))
    s = TwoPeopleScene.from_names("library", "night", "white", "black")
    assert s.names() == {
        "background": "library",
        "lighting": "night",
        "left_clothing": "white",
        "right_clothing": "black",
    }
    assert TwoPeopleScene(**s.to_dict()) == s and s.clothing == (s.left_clothing, s.right_clothing)


def test_two_people_region_holds_held_out_people() -> None:
    left, right = two_people_region(0), two_people_region(1)
    assert not (left & right).any()
    assert not left.flags.writeable
    assert left[:, :20].any() and not left[:, 32:].any() and not right[:, :32].any()
    test = test_identities()
    rng = np.random.default_rng(5)
    for k in range(20):
        r = render_two_people(test[k], test[99 - k], TwoPeopleScene.random(rng), seed=1000 + k)
        assert left[r.person_index == 1].all() and right[r.person_index == 2].all()
    with pytest.raises(ValueError, match=r"two_people_region\.side"):
        two_people_region(2)
