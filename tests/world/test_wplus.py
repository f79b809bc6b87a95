"""The demo world's W+ codec: shapes, level ranges, strict save/load, exact mixing, training smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from idgen.errors import CheckpointError, IdgenError
from idgen.world.render import ATTRIBUTES, render_reference, test_identities, train_identities
from idgen.world.wplus import (
    COARSE,
    COLOUR_ATTRIBUTES,
    CROP_SIZE,
    DEFAULT_ASSETS,
    FINE,
    NUM_LEVELS,
    QUICK_PLAN,
    SHAPE_ATTRIBUTES,
    TRAIN_SEED,
    W_DIM,
    WorldStyleCodec,
    _dataset,
    crop_photos,
    measure_edits,
    swap_identity,
    train_wplus_codec,
)


@pytest.fixture(scope="module")
def codec() -> WorldStyleCodec:
    torch.manual_seed(0)
    return WorldStyleCodec().eval()


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    people = train_identities()[:3]
    return crop_photos([render_reference(p, seed=k) for k, p in enumerate(people)])


def test_shapes(codec: WorldStyleCodec, crops: torch.Tensor) -> None:
    assert crops.shape == (3, 3, CROP_SIZE, CROP_SIZE)
    with torch.no_grad():
        w = codec.encode(crops)
        assert w.shape == (3, NUM_LEVELS, W_DIM)
        assert codec.decode(w).shape == (3, 3, CROP_SIZE, CROP_SIZE)
        assert codec.decode(w[0]).shape == (1, 3, CROP_SIZE, CROP_SIZE)  # one unbatched (L, D) code
        assert torch.equal(codec(crops), codec.decode(w))


def test_level_ranges(codec: WorldStyleCodec) -> None:
    assert (codec.num_levels, codec.size) == (NUM_LEVELS, CROP_SIZE)
    assert (codec.coarse, codec.fine) == (COARSE, FINE)
    assert [*COARSE, *FINE] == list(range(NUM_LEVELS))  # coarse first, together they cover every level
    assert codec.levels("coarse") == tuple(COARSE) and codec.levels("fine") == tuple(FINE)
    assert codec.levels("all") == tuple(range(NUM_LEVELS))
    assert codec.levels([5, 2, 5]) == (2, 5) and codec.levels(7) == (7,)
    assert sorted((*SHAPE_ATTRIBUTES, *COLOUR_ATTRIBUTES)) == sorted(ATTRIBUTES)
    assert set(COLOUR_ATTRIBUTES) == {"skin_tone", "hair_colour", "eye_colour"}


def test_save_load_round_trip_is_strict_and_bitwise(
    codec: WorldStyleCodec, crops: torch.Tensor, tmp_path: Path
) -> None:
    codec.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "world-style-codec"
    loaded = WorldStyleCodec.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(crops), codec(crops))
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "model.safetensors")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"extra\.weight"):
        WorldStyleCodec.from_pretrained(tmp_path)


def test_mixing_with_all_levels_from_a_is_exactly_a(codec: WorldStyleCodec, crops: torch.Tensor) -> None:
    with torch.no_grad():
        w = codec.encode(crops)
        w_a, w_b = w[:1], w[1:2]
        recon_a = codec.decode(w_a)
        coarse_a_fine_a = codec.mix(codec.mix(w_a, w_b, "fine"), w_a, "fine")  # fine out to B and back
        assert torch.equal(coarse_a_fine_a, w_a)
        assert torch.equal(codec.decode(coarse_a_fine_a), recon_a)
        assert torch.equal(codec.decode(codec.mix(w_a, w_a.clone(), "coarse")), recon_a)
        assert torch.equal(codec.mix(w_a, w_b, "all"), w_b)
        mixed = codec.mix(w_a, w_b, "fine")
        assert torch.equal(mixed[:, COARSE], w_a[:, COARSE]) and torch.equal(mixed[:, FINE], w_b[:, FINE])


def test_bad_inputs_name_the_problem(codec: WorldStyleCodec) -> None:
    with pytest.raises(IdgenError, match=r"got \(2, 9, 32\)"):
        codec.decode(torch.zeros(2, 9, W_DIM))
    with pytest.raises(IdgenError, match=r"got \(8, 16\)"):
        codec.mix(torch.zeros(8, 16), torch.zeros(8, W_DIM), "fine")
    with pytest.raises(IdgenError, match="level 8 is out of range 0-7"):
        codec.mix(torch.zeros(NUM_LEVELS, W_DIM), torch.zeros(NUM_LEVELS, W_DIM), [3, 8])
    with pytest.raises(IdgenError, match="'middle'"):
        codec.levels("middle")
    with pytest.raises(IdgenError, match=r"got \(1, 3, 64, 64\)"):
        codec.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(IdgenError, match="at least 2 identities"):
        measure_edits(codec, test_identities()[:1])


def test_swap_identity_and_its_photo_keep_the_context() -> None:
    a, b = train_identities()[:2]
    hybrid = swap_identity(a, b)
    for name in ATTRIBUTES:
        assert getattr(hybrid, name) == getattr(b if name in COLOUR_ATTRIBUTES else a, name)
    # Same seed: the same backdrop, clothes and pose, so the swap target is well defined.
    ra, rh = render_reference(a, seed=3), render_reference(hybrid, seed=3)
    assert ra.face_box == rh.face_box and ra.backdrop == rh.backdrop
    assert ra.clothing_colour == rh.clothing_colour
    assert np.array_equal(ra.image[:6, :6], rh.image[:6, :6])  # a backdrop corner


def test_quick_training_decreases_loss_and_writes_small_assets(tmp_path: Path) -> None:
    results = train_wplus_codec(tmp_path / "work", tmp_path / "assets", quick=True, progress=False)
    assert results["last_loss"]["loss"] < results["first_loss"]["loss"]
    assert results["weights_bytes"] < 2_000_000  # same architecture as the full run
    assert {"fine_swap", "coarse_swap", "recon_l1"} <= set(results)
    # On a fixed batch (all quick anchors): the trained codec reconstructs better than its initialisation.
    data = _dataset(tmp_path / "work", QUICK_PLAN)
    x = data["crops"].float() / 255
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TRAIN_SEED)
        initial = WorldStyleCodec().eval()
    trained = WorldStyleCodec.from_pretrained(tmp_path / "assets")
    with torch.no_grad():
        assert (trained(x) - x).abs().mean() < (initial(x) - x).abs().mean()


def test_shipped_weights_reconstruct_held_out_faces() -> None:
    if not (DEFAULT_ASSETS / "model.safetensors").is_file():
        pytest.skip(f"no shipped W+ codec (run `idgen world train --stage wplus`): {DEFAULT_ASSETS}")
    codec = WorldStyleCodec.from_pretrained(DEFAULT_ASSETS)
    x = crop_photos([render_reference(p, seed=k) for k, p in enumerate(test_identities()[:8])])
    with torch.no_grad():
        assert float((codec(x).clamp(0, 1) - x).abs().mean()) < 0.06


def test_fine_level_edits_change_colours_not_shapes() -> None:
    """Renderer ground truth on 20 held-out identities: a fine-level swap A<-B brings B's hair and skin
    colours (region colours near the true target, far from unedited) while the part layout stays A's."""
    from idgen.world.wplus import measure_edits

    codec = WorldStyleCodec.from_pretrained(DEFAULT_ASSETS)
    fine = measure_edits(codec, test_identities()[:20])["fine_swap"]
    for region in ("hair", "skin"):
        colour = fine["colour_per_region"][region]
        assert colour["colour_err_edit"] < 0.5 * colour["colour_err_no_edit"], region
    assert fine["edge_iou_edit"] > fine["edge_iou_wrong_layout"] + 0.05  # layout follows A, not B
    assert abs(fine["edge_iou_edit"] - fine["edge_iou_recon"]) < 0.03  # shapes as well kept as by recon
    assert fine["edit_l1"] < 0.6 * fine["layout_donor_input_l1"]
