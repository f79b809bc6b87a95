import math

import pytest
import torch
from torch.testing import assert_close

from idgen.core.refine import (
    GridScaledRefiner,
    MaskRefiner,
    dilate,
    gaussian_blur,
    gaussian_kernel1d,
    nearest_odd,
    threshold_mask,
)
from idgen.errors import IdgenError

# The 5-tap, sigma 1.5 kernel by hand: taps exp(-d^2 / 4.5) at d = 0, 1, 2, normalised.
_E1, _E2 = math.exp(-1 / 4.5), math.exp(-4 / 4.5)
_S = 1 + 2 * _E1 + 2 * _E2
A, B, C = _E2 / _S, _E1 / _S, 1 / _S  # outer, inner, centre tap: ~0.1201, 0.2339, 0.2921
KERNEL = torch.tensor([A, B, C, B, A])


def test_gaussian_kernel1d_values():
    assert_close(gaussian_kernel1d(5, 1.5), KERNEL)
    assert_close(gaussian_kernel1d(5, 1.5).sum(), torch.tensor(1.0))
    assert torch.equal(gaussian_kernel1d(1, 0.3), torch.tensor([1.0]))


@pytest.mark.parametrize(("size", "sigma"), [(4, 1.5), (0, 1.5), (-3, 1.5), (5, 0.0), (5, -1.0)])
def test_gaussian_kernel1d_bad_args(size, sigma):
    with pytest.raises(IdgenError):
        gaussian_kernel1d(size, sigma)


def test_blur_hot_token_is_kernel_outer_product():
    masks = torch.zeros(1, 7, 7)
    masks[0, 3, 3] = 1.0
    expected = torch.zeros(1, 7, 7)
    expected[0, 1:6, 1:6] = torch.outer(KERNEL, KERNEL)
    assert_close(gaussian_blur(masks), expected)


def test_blur_reflects_at_the_border():
    masks = torch.zeros(1, 5, 5)
    masks[0, 0, 0] = 1.0
    # Reflect mirrors without the edge row, so a corner token keeps only its own half-kernel.
    profile = torch.tensor([C, B, A, 0.0, 0.0])
    assert_close(gaussian_blur(masks), torch.outer(profile, profile)[None])


def test_blur_non_square_3x5():
    masks = torch.zeros(2, 3, 5)
    masks[1, 1, 2] = 1.0
    # Reflect pad 2 on 3 rows: padded column [0,1,0,1,0,1,0] -> rows [2B, C+2A, 2B];
    # on 5 cols: padded row [1,0,0,0,1,0,0,0,1] -> cols [2A, B, C, B, 2A].
    rows = torch.tensor([2 * B, C + 2 * A, 2 * B])
    cols = torch.tensor([2 * A, B, C, B, 2 * A])
    out = gaussian_blur(masks)
    assert torch.equal(out[0], torch.zeros(3, 5))
    assert_close(out[1], torch.outer(rows, cols))


def test_blur_thin_grids_use_replicate():
    masks = torch.zeros(1, 1, 9)
    masks[0, 0, 4] = 1.0
    assert_close(gaussian_blur(masks), torch.tensor([[[0, 0, A, B, C, B, A, 0, 0]]]))
    column = torch.zeros(1, 9, 1)
    column[0, 4, 0] = 1.0
    assert_close(gaussian_blur(column), torch.tensor([0, 0, A, B, C, B, A, 0, 0]).view(1, 9, 1))
    assert_close(gaussian_blur(torch.full((1, 1, 1), 0.5)), torch.full((1, 1, 1), 0.5))


def test_threshold_uses_unbiased_std():
    masks = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    # mean 0.25; unbiased std 0.5 (biased would be 0.433).
    assert torch.equal(threshold_mask(masks, k=0.5), masks)
    assert torch.equal(threshold_mask(masks, k=1.5), torch.zeros(1, 2, 2))  # 1 > 0.25 + 0.75 is false
    assert torch.equal(threshold_mask(masks, k=1.4), masks)


def test_threshold_per_sample_and_flat():
    masks = torch.stack([torch.tensor([[0.0, 0.0], [0.0, 1.0]]), torch.full((2, 2), 0.3)])
    expected = torch.stack([torch.tensor([[0.0, 0.0], [0.0, 1.0]]), torch.zeros(2, 2)])
    assert torch.equal(threshold_mask(masks), expected)
    assert torch.equal(threshold_mask(torch.ones(1, 1, 1)), torch.zeros(1, 1, 1))


def test_dilate():
    binary = torch.zeros(2, 4, 7)
    binary[0, 0, 0] = 1.0
    binary[1, 2, 3] = 1.0
    expected = torch.zeros(2, 4, 7)
    expected[0, 0:2, 0:2] = 1.0
    expected[1, 1:4, 2:5] = 1.0
    assert torch.equal(dilate(binary), expected)
    row = torch.tensor([[[0.0, 0.0, 1.0, 0.0, 0.0]]])
    assert torch.equal(dilate(row), torch.tensor([[[0.0, 1.0, 1.0, 1.0, 0.0]]]))
    assert torch.equal(dilate(row, kernel_size=1), row)
    with pytest.raises(IdgenError):
        dilate(row, kernel_size=2)


def test_refiner_hot_token_7x7():
    masks = torch.zeros(1, 7, 7)
    masks[0, 3, 3] = 1.0
    soft = torch.zeros(7, 7)
    soft[1:6, 1:6] = torch.outer(KERNEL, KERNEL)
    # mean 1/49, std ~0.0248: threshold ~0.0328 keeps the diamond |dr| + |dc| <= 2
    # (its smallest member A*C ~0.0351; the next value B*B ~0.0547 is inside too, B*A ~0.0281 is not).
    hard = torch.tensor([[1.0 if abs(r - 3) + abs(c - 3) <= 2 else 0.0 for c in range(7)] for r in range(7)])
    assert torch.equal(threshold_mask(soft[None]), hard[None])
    # A 3x3 dilation of that diamond is the diamond |dr| + |dc| <= 4 inside the 7x7 grid.
    dilated = torch.tensor(
        [[1.0 if abs(r - 3) + abs(c - 3) <= 4 else 0.0 for c in range(7)] for r in range(7)]
    )
    assert torch.equal(dilate(hard[None]), dilated[None])
    assert_close(MaskRefiner()(masks), (0.7 * soft + 0.3 * dilated)[None])


def test_refiner_1xn_grid():
    masks = torch.zeros(1, 1, 9)
    masks[0, 0, 4] = 1.0
    soft = torch.tensor([0, 0, A, B, C, B, A, 0, 0])
    # mean 1/9, unbiased std ~0.1186: threshold ~0.170 keeps B and C; dilation adds their neighbours.
    hard = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    assert_close(MaskRefiner()(masks), (0.7 * soft + 0.3 * hard).view(1, 1, 9))


def test_refiner_4x7_grid_near_border():
    masks = torch.zeros(3, 4, 7)
    masks[:, 1, 2] = 1.0
    # Reflect folds the kernel back at the border: rows (4, pad 2) [2B, C+A, B, 2A],
    # cols (7, pad 2) [2A, B, C, B, A, 0, 0]. Row 0 ends up above the hot row 1, as in the reference.
    soft = torch.outer(torch.tensor([2 * B, C + A, B, 2 * A]), torch.tensor([2 * A, B, C, B, A, 0, 0]))
    # mean ~0.0542, unbiased std ~0.0437: threshold ~0.0760 keeps rows 0-1 x cols 0-3
    # (smallest kept ~0.0964; largest dropped (3, 2) ~0.0702).
    hard = torch.zeros(4, 7)
    hard[0:2, 0:4] = 1.0
    assert torch.equal(threshold_mask(gaussian_blur(masks)), hard.expand(3, 4, 7))
    dilated = torch.zeros(4, 7)
    dilated[0:3, 0:5] = 1.0
    out = MaskRefiner()(masks)
    assert out.shape == (3, 4, 7)
    assert out.dtype == torch.float32
    assert_close(out, (0.7 * soft + 0.3 * dilated).expand(3, 4, 7))


def test_refiner_constant_input():
    assert torch.equal(MaskRefiner()(torch.zeros(2, 3, 5)), torch.zeros(2, 3, 5))
    out = MaskRefiner()(torch.ones(2, 4, 7))
    assert not torch.isnan(out).any()
    # Blur keeps the constant; a flat map has no hard part, so only the soft 0.7 remains.
    assert_close(out, torch.full((2, 4, 7), 0.7))
    assert torch.unique(out).numel() == 1


def test_refiner_bf16_input_gives_float32():
    masks = torch.zeros(1, 7, 7, dtype=torch.bfloat16)
    masks[0, 3, 3] = 1.0
    assert torch.equal(MaskRefiner()(masks), MaskRefiner()(masks.float()))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 4},
        {"sigma": 0.0},
        {"dilation": 2},
        {"dilation": 0},
        {"soft_weight": 1.5},
        {"soft_weight": -0.1},
    ],
)
def test_refiner_bad_args(kwargs):
    with pytest.raises(IdgenError):
        MaskRefiner(**kwargs)


@pytest.mark.parametrize(
    ("x", "odd"), [(5, 5), (4.96, 5), (4, 5), (6, 7), (3, 3), (2.5, 3), (1.5, 1), (0.6, 1)]
)
def test_nearest_odd(x, odd):
    assert nearest_odd(x) == odd


def test_grid_scaled_refiner_is_the_authors_at_the_reference_grid():
    masks = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(0))
    scaled = GridScaledRefiner()
    assert scaled.for_grid((64, 64)) == MaskRefiner()
    assert torch.equal(scaled(masks), MaskRefiner()(masks))


def test_grid_scaled_refiner_scales_blur_and_dilation_with_the_grid():
    assert GridScaledRefiner().for_grid((32, 32)) == MaskRefiner(kernel_size=3, sigma=0.75, dilation=1)
    # 16x16 tokens per side is 1/4: kernel 5/4 -> 1, dilation 3/4 -> 1.
    assert GridScaledRefiner().for_grid((16, 16)) == MaskRefiner(kernel_size=1, sigma=0.375, dilation=1)
    # The geometric mean side counts: 32x128 has as many tokens as 64x64.
    assert GridScaledRefiner().for_grid((32, 128)) == MaskRefiner()
    assert GridScaledRefiner(reference_grid=(8, 8)).for_grid((16, 16)) == MaskRefiner(
        kernel_size=11, sigma=3.0, dilation=7
    )


def test_grid_scaled_refiner_on_an_8x8_grid_neither_blurs_nor_dilates():
    # No blur and no dilation: M = 0.7 * m + 0.3 * [m > mean + 0.5 std], by hand.
    m = torch.zeros(1, 8, 8)
    m[0, 2, 5], m[0, 3, 5] = 1.0, 0.5
    # mean = 1.5 / 64, std = sqrt((1 + 0.25 - 64 mean^2) / 63) ~ 0.1405: both tokens are above the threshold.
    expected = 0.7 * m + 0.3 * (m > 0).float()
    assert_close(GridScaledRefiner()(m), expected)
    with pytest.raises(IdgenError):
        GridScaledRefiner(reference_grid=(0, 64))
