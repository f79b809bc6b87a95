import math

import pytest
import torch
from torch.testing import assert_close

from idgen.core.masks import (
    AttentionEntropyExtractor,
    CANormExtractor,
    CAOutput,
    FixedMaskExtractor,
    attention_entropy,
    ca_output_norm,
    grid_axis,
    minmax_normalize,
    resize_mask,
    token_centroid,
    tokens_to_grid,
)
from idgen.errors import IdgenError


def test_ca_output_norm_is_l2_over_last_dim_in_float32():
    heads_out = torch.tensor([[[3.0, 4.0, 0.0], [1.0, 2.0, 2.0], [0.0, 0.0, 0.0]]])  # (1, 3, 3)
    assert torch.equal(ca_output_norm(heads_out), torch.tensor([[5.0, 3.0, 0.0]]))
    out = ca_output_norm(heads_out.bfloat16())
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[5.0, 3.0, 0.0]]))


def test_minmax_normalize_per_sample():
    values = torch.tensor([[2.0, 4.0, 6.0], [10.0, 0.0, 5.0]])
    assert torch.equal(minmax_normalize(values), torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.0, 0.5]]))


def test_minmax_normalize_constant_gives_zeros():
    out = minmax_normalize(torch.full((2, 5), 3.0))
    assert torch.equal(out, torch.zeros(2, 5))


def test_minmax_normalize_min_spread_flattens_only_flat_samples():
    values = torch.tensor([[4.0, 5.0, 6.0], [0.0, 1.0, 2.0]])
    # sample 0: spread 2 < 0.5 * 6 -> flat; sample 1: spread 2 >= 0.5 * 2 -> kept.
    out = minmax_normalize(values, min_spread=0.5)
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.5, 1.0]]))
    # 2 >= 0.25 * 6: nothing is flat, reference behaviour.
    assert torch.equal(minmax_normalize(values, min_spread=0.25), minmax_normalize(values))


@pytest.mark.parametrize(("eps", "min_spread"), [(0.0, 0.0), (-1.0, 0.0), (1e-6, -0.1)])
def test_minmax_normalize_bad_args(eps, min_spread):
    with pytest.raises(IdgenError):
        minmax_normalize(torch.ones(1, 3), eps=eps, min_spread=min_spread)


def test_tokens_to_grid_row_major():
    values = torch.arange(12.0).view(2, 6)
    grid = tokens_to_grid(values, (2, 3))
    assert torch.equal(grid[0], torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]))
    assert torch.equal(grid[1], torch.tensor([[6.0, 7.0, 8.0], [9.0, 10.0, 11.0]]))
    with pytest.raises(IdgenError, match="2x4"):
        tokens_to_grid(values, (2, 4))


def test_attention_entropy_values():
    # (B=1, heads=2, N=2, K=4)
    probs = torch.tensor(
        [
            [
                [[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]],
                [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]],
            ]
        ]
    )
    out = attention_entropy(probs)
    assert not torch.isnan(out).any()
    assert_close(out, torch.tensor([[(math.log(4) + math.log(2)) / 2, 0.0]]))


def test_ca_norm_extractor():
    heads_out = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    extractor = CANormExtractor()
    assert extractor.needs_attn_probs is False
    out = extractor(CAOutput(heads_out), (2, 3))
    assert torch.equal(out, torch.tensor([[[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]]]))


def test_ca_norm_extractor_min_spread_no_face():
    # Every token answers about equally: reference forces the largest to 1, min_spread does not.
    heads_out = torch.tensor([[[3.0, 4.0], [3.0, 4.0], [3.0, 4.1], [3.0, 4.0]]])
    assert CANormExtractor()(CAOutput(heads_out), (2, 2)).max() == 1.0
    assert torch.equal(CANormExtractor(min_spread=0.05)(CAOutput(heads_out), (2, 2)), torch.zeros(1, 2, 2))


def test_attention_entropy_extractor_inverts():
    # (B=1, heads=1, N=4, K=2): one-hot tokens are focused -> 1, uniform ones -> 0.
    probs = torch.tensor([[[[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.5, 0.5]]]])
    extractor = AttentionEntropyExtractor()
    assert extractor.needs_attn_probs is True
    out = extractor(CAOutput(torch.zeros(1, 4, 2), probs), (2, 2))
    assert torch.equal(out, torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]))


def test_attention_entropy_extractor_flat():
    probs = torch.full((1, 2, 4, 2), 0.5)
    output = CAOutput(torch.zeros(1, 4, 2), probs)
    assert torch.equal(AttentionEntropyExtractor()(output, (2, 2)), torch.ones(1, 2, 2))
    assert torch.equal(AttentionEntropyExtractor(min_spread=0.1)(output, (2, 2)), torch.zeros(1, 2, 2))


def test_attention_entropy_extractor_needs_probs():
    with pytest.raises(IdgenError, match="attn_probs"):
        AttentionEntropyExtractor()(CAOutput(torch.zeros(1, 4, 2)), (2, 2))


def test_resize_mask_shrink_is_area():
    mask = torch.zeros(32, 32)
    mask[:, :16] = 1.0
    expected = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]])
    assert torch.equal(resize_mask(mask, (2, 4)), expected)


def test_resize_mask_shrink_non_square_averages_blocks():
    mask = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0],
            [1.0, 1.0, 0.5, 0.5],
            [1.0, 1.0, 0.5, 0.5],
            [0, 0, 0, 0],
            [0, 0, 0, 1],
        ]
    )  # (6, 4) -> (3, 2): means of 2x2 blocks
    expected = torch.tensor([[[0.5, 0.0], [1.0, 0.5], [0.0, 0.25]]])
    assert torch.equal(resize_mask(mask, (3, 2)), expected)


def test_resize_mask_enlarge_is_bilinear():
    mask = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # align_corners=False: source x = (j + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, edge-clamped.
    expected = torch.tensor([[[0.0, 0.25, 0.75, 1.0], [0.0, 0.25, 0.75, 1.0]]])
    assert torch.equal(resize_mask(mask, (2, 4)), expected)


def test_resize_mask_mixed_averages_then_interpolates():
    mask = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # (4, 2) -> (2, 4)
    # rows area-averaged: [[0, 0.5], [0, 1]]; then columns bilinear as above.
    expected = torch.tensor([[[0.0, 0.125, 0.375, 0.5], [0.0, 0.25, 0.75, 1.0]]])
    assert torch.equal(resize_mask(mask, (2, 4)), expected)


def test_resize_mask_identity_and_batch():
    mask = torch.rand(3, 4, 7)
    assert torch.equal(resize_mask(mask, (4, 7)), mask)
    assert resize_mask(mask[0], (4, 7)).shape == (1, 4, 7)
    with pytest.raises(IdgenError):
        resize_mask(torch.rand(1, 1, 4, 7), (4, 7))


def test_fixed_mask_extractor_broadcasts_to_batch():
    mask = torch.zeros(32, 32)
    mask[:, :16] = 1.0
    extractor = FixedMaskExtractor(mask)
    assert extractor.needs_attn_probs is False
    output = CAOutput(torch.zeros(3, 8, 5))
    out = extractor(output, (2, 4))
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]).expand(3, 2, 4)
    assert torch.equal(out, expected)
    assert torch.equal(extractor(output, (2, 4)), expected)  # cached path


def test_fixed_mask_extractor_per_sample_and_errors():
    mask = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])
    extractor = FixedMaskExtractor(mask)
    assert torch.equal(extractor(CAOutput(torch.zeros(2, 4, 1)), (2, 2)), mask)
    with pytest.raises(IdgenError, match="batch"):
        extractor(CAOutput(torch.zeros(3, 4, 1)), (2, 2))
    with pytest.raises(IdgenError, match=r"\[0, 1\]"):
        FixedMaskExtractor(torch.full((2, 2), 2.0))
    with pytest.raises(IdgenError):
        FixedMaskExtractor(torch.ones(4))


def test_grid_axis():
    assert torch.equal(grid_axis(1), torch.zeros(1))
    assert_close(grid_axis(5), torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))


def test_token_centroid_by_hand():
    w = torch.zeros(3, 3, 5)  # x = [-1, -0.5, 0, 0.5, 1], y = [-1, 0, 1]
    w[0, 0, 4] = 1.0  # one token: its coordinates
    w[1, 1, 0], w[1, 2, 1] = 1.0, 3.0  # weighted: x = (-1 + 3 * -0.5) / 4, y = (0 + 3 * 1) / 4
    centroid = token_centroid(w)
    assert_close(centroid[0], torch.tensor([1.0, -1.0]))
    assert_close(centroid[1], torch.tensor([-0.625, 0.75]))
    assert centroid[2].isnan().all()  # nothing to average


def test_box_token_span_takes_the_tokens_whose_centre_is_inside():
    from idgen.core.masks import box_token_span

    # 4 tokens per axis: centres 0.125, 0.375, 0.625, 0.875.
    assert box_token_span((0.0, 0.0, 0.5, 1.0), (4, 4)) == (slice(0, 4), slice(0, 2))
    assert box_token_span((0.3, 0.125, 0.4, 0.4), (4, 4)) == (slice(0, 2), slice(1, 2))  # edges included
    assert box_token_span((0.4, 0.0, 0.45, 1.0), (4, 4)) == (slice(0, 4), slice(0, 0))  # no centre inside
    assert box_token_span((0.5, 0.5, 1.0, 1.0), (3, 2)) == (slice(1, 3), slice(1, 2))  # centre 0.5: in
