"""W+ editing maths: layer selections, mixing and directions, checked against hand-computed values."""

import pytest
import torch

from idgen.core.wplus_edit import add_direction, check_w_plus, mix, parse_layers
from idgen.errors import IdgenError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("coarse", tuple(range(8))),
        ("fine", tuple(range(8, 18))),
        ("all", tuple(range(18))),
        ("0-3,8", (0, 1, 2, 3, 8)),
        (" 8 , 0-3 ", (0, 1, 2, 3, 8)),
        ("coarse,17", (*range(8), 17)),
        ("5-5", (5,)),
        (4, (4,)),
        ([9, 2, 2], (2, 9)),
    ],
)
def test_parse_layers(spec, expected):
    assert parse_layers(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("18", "W+ layer 18 is out of range 0-17"),
        ("0-20", "W+ layer 20 is out of range 0-17"),
        ("-1", "W+ layer -1 is out of range 0-17"),
        ("3-1", "W+ layer range '3-1' runs backwards"),
        ("middle", "unknown W+ layer name 'middle'"),
        ("1,,2", "empty item in W+ layer list '1,,2'"),
        ("2-x", "W+ layer 'x' is not a number"),
        ([0, 18], "W+ layer 18 is out of range 0-17"),
        ([], "selects no layer"),
    ],
)
def test_bad_layer_selections_are_named(spec, message):
    with pytest.raises(IdgenError) as info:
        parse_layers(spec)
    assert message in str(info.value)


def test_named_ranges_follow_the_configured_depth():
    assert parse_layers("fine", num_layers=14) == tuple(range(8, 14))
    with pytest.raises(IdgenError, match=r"W\+ layer 13 is out of range 0-11"):
        parse_layers("13", num_layers=12)


def test_mix_interpolates_only_the_chosen_layers():
    w_a = torch.full((18, 512), 1.0)
    w_b = torch.full((18, 512), 3.0)
    out = mix(w_a, w_b, "0-1,17", alpha=0.5)
    assert out.shape == (18, 512)
    expected = torch.ones(18, 512)
    expected[[0, 1, 17]] = 2.0  # halfway between 1 and 3
    assert torch.equal(out, expected)


def test_mix_with_alpha_one_swaps_layers_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    w_a, w_b = torch.randn(2, 18, 512, generator=g), torch.randn(1, 18, 512, generator=g)
    out = mix(w_a, w_b, "fine")
    assert out.shape == (2, 18, 512)
    assert torch.equal(out[:, 8:], w_b[:, 8:].expand(2, -1, -1))
    assert torch.equal(out[:, :8], w_a[:, :8])
    assert torch.equal(mix(w_a, w_b, "coarse", alpha=0.0), w_a)


def test_add_direction_on_chosen_layers():
    w = torch.zeros(18, 512)
    direction = torch.arange(512, dtype=torch.float32)
    out = add_direction(w, direction, "fine", alpha=2.0)
    assert torch.equal(out[:8], torch.zeros(8, 512))
    assert torch.equal(out[8:], (2.0 * direction).expand(10, -1))
    # A W+-shaped direction contributes only on the chosen layers.
    full = torch.ones(18, 512)
    out = add_direction(torch.full((3, 18, 512), 5.0), full, [0], alpha=-1.0)
    assert out.shape == (3, 18, 512)
    assert torch.equal(out[:, 0], torch.full((3, 512), 4.0))
    assert torch.equal(out[:, 1:], torch.full((3, 17, 512), 5.0))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((17, 512), "got (17, 512)"),
        ((2, 18, 511), "got (2, 18, 511)"),
        ((512,), "got (512,)"),
        ((1, 1, 18, 512), "got (1, 1, 18, 512)"),
    ],
)
def test_wrong_w_plus_shapes_are_named(shape, message):
    with pytest.raises(IdgenError) as info:
        mix(torch.zeros(shape), torch.zeros(18, 512), "all")
    assert "must have shape (18, 512) or (B, 18, 512)" in str(info.value)
    assert message in str(info.value)
    with pytest.raises(IdgenError, match="edit direction has width 7"):
        add_direction(torch.zeros(18, 512), torch.zeros(7), "all")
    with pytest.raises(IdgenError, match="edit direction has batch 2, the W\\+ code has batch 3"):
        add_direction(torch.zeros(3, 18, 512), torch.zeros(2, 18, 512))


def test_other_spaces_and_dtypes():
    assert check_w_plus(torch.zeros(14, 512), num_layers=14).shape == (1, 14, 512)
    with pytest.raises(IdgenError, match="must be a float tensor"):
        check_w_plus(torch.zeros(18, 512, dtype=torch.long))
