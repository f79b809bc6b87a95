import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from idgen.core.gate import AttentionAnchor, ConstantMask, SpatialMask, UniformMask, gate
from idgen.core.masks import AttentionEntropyExtractor, CANormExtractor, CAOutput, Grid
from idgen.core.refine import MaskRefiner
from idgen.core.schedule import TemporalSpatialScheduler, gaussian_prior
from idgen.errors import IdgenError


class SpyExtractor:
    """Returns a fixed (B, H, W) mask and counts its calls."""

    needs_attn_probs = False

    def __init__(self, mask: Tensor) -> None:
        self.mask = mask
        self.calls = 0

    def __call__(self, output: CAOutput, grid: Grid) -> Tensor:
        self.calls += 1
        return self.mask


def _identity(masks: Tensor) -> Tensor:
    return masks


def _random(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape))).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gate_ones_mask_is_bit_identical_to_uniform(dtype):
    hidden, residual = _random(2, 6, 8, dtype=dtype), _random(2, 6, 9, dtype=dtype)[..., :8]
    uniform = gate(hidden, residual, 0.8)
    assert uniform.dtype == dtype
    assert torch.equal(gate(hidden, residual, 0.8, torch.ones(2, 6, 1, dtype=dtype)), uniform)
    assert torch.equal(gate(hidden, residual, 0.8, torch.ones(2, 6, 1)), uniform)  # float32 mask too


def test_gate_zero_mask_or_weight_returns_hidden():
    hidden, residual = _random(2, 6, 8), _random(3, 6, 8)[:2]
    assert torch.equal(gate(hidden, residual, 1.0, torch.zeros(2, 6, 1)), hidden)
    assert torch.equal(gate(hidden, residual, 0.0), hidden)
    assert torch.equal(gate(hidden, residual, 0.0, torch.rand(2, 6, 1)), hidden)


def test_gate_mask_arithmetic():
    hidden = torch.zeros(1, 3, 2)
    residual = torch.ones(1, 3, 2)
    mask = torch.tensor([[[0.0], [0.5], [1.0]]])
    assert torch.equal(
        gate(hidden, residual, 2.0, mask), torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]])
    )


def test_uniform_and_constant_policies():
    output = CAOutput(torch.zeros(2, 15, 4, dtype=torch.bfloat16))
    assert UniformMask()(output, 0.5, (3, 5)) is None
    assert UniformMask.needs_attn_probs is False
    ones = ConstantMask(1.0)(output, 0.5, (3, 5))
    assert ones is not None and ones.dtype == torch.bfloat16
    assert torch.equal(ones, torch.ones(2, 15, 1, dtype=torch.bfloat16))
    zeros = ConstantMask(0.0)(output, 0.9, (3, 5))
    assert zeros is not None and torch.equal(zeros, torch.zeros(2, 15, 1, dtype=torch.bfloat16))
    assert ConstantMask(1.0).needs_attn_probs is False
    with pytest.raises(IdgenError):
        ConstantMask(1.5)


def test_spatial_mask_early_is_the_prior_without_extraction():
    spy = SpyExtractor(torch.rand(2, 3, 5))
    policy = SpatialMask(TemporalSpatialScheduler(), spy)
    output = CAOutput(torch.zeros(2, 15, 4))
    mask = policy(output, 0.9, (3, 5))
    assert spy.calls == 0
    assert mask is not None and mask.shape == (2, 15, 1)
    expected = gaussian_prior((3, 5), 0.3).reshape(1, 15, 1).expand(2, 15, 1)
    assert torch.equal(mask, expected)
    assert torch.equal(policy(output, 0.8, (3, 5)), expected)  # cached, same values
    assert spy.calls == 0


def test_spatial_mask_early_applies_global_floor():
    policy = SpatialMask(TemporalSpatialScheduler.from_preset("balanced"), SpyExtractor(torch.zeros(1, 4, 7)))
    mask = policy(CAOutput(torch.zeros(1, 28, 4)), 1.0, (4, 7))
    assert torch.equal(mask, gaussian_prior((4, 7), 0.7).clamp(min=0.3).reshape(1, 28, 1))


def test_spatial_mask_mid_is_refined_extraction_with_floor():
    heads_out = _random(2, 28, 6)
    output = CAOutput(heads_out)
    policy = SpatialMask(TemporalSpatialScheduler.from_preset("balanced"))
    mask = policy(output, 0.5, (4, 7))
    refined = MaskRefiner()(CANormExtractor()(output, (4, 7)))
    assert torch.equal(mask, refined.clamp(min=0.3).reshape(2, 28, 1))


def test_spatial_mask_mid_and_late_by_hand():
    raw = torch.tensor([[[0.0, 0.5, 1.0], [0.25, 0.75, 0.125]]])  # (1, 2, 3)
    spy = SpyExtractor(raw)
    policy = SpatialMask(TemporalSpatialScheduler(late_floor=0.5, global_floor=0.25), spy, _identity)
    output = CAOutput(torch.zeros(1, 6, 4))
    mid = policy(output, 0.7, (2, 3))
    assert torch.equal(mid, torch.tensor([0.25, 0.5, 1.0, 0.25, 0.75, 0.25]).view(1, 6, 1))
    late = policy(output, 0.3, (2, 3))
    assert torch.equal(late, torch.tensor([0.5, 0.75, 1.0, 0.625, 0.875, 0.5625]).view(1, 6, 1))
    assert spy.calls == 2


def test_spatial_mask_shape_and_dtype_on_non_square_grid():
    output = CAOutput(_random(3, 20, 8, dtype=torch.bfloat16))
    policy = SpatialMask(TemporalSpatialScheduler())
    for t in (0.9, 0.5, 0.1):
        mask = policy(output, t, (4, 5))
        assert mask is not None and mask.shape == (3, 20, 1) and mask.dtype == torch.bfloat16
        assert mask.min() >= 0.0 and mask.max() <= 1.0


def test_spatial_mask_needs_attn_probs_delegates():
    assert SpatialMask(TemporalSpatialScheduler()).needs_attn_probs is False
    assert SpatialMask(TemporalSpatialScheduler(), AttentionEntropyExtractor()).needs_attn_probs is True


def test_spatial_mask_rejects_a_wrong_grid():
    with pytest.raises(IdgenError, match="3x5"):
        SpatialMask(TemporalSpatialScheduler())(CAOutput(torch.zeros(1, 16, 4)), 0.5, (3, 5))


def test_attention_anchor_is_the_centroid_of_the_hard_mask():
    raw = torch.zeros(2, 3, 5)
    raw[0, 2, 3], raw[0, 2, 4] = 1.0, 0.9  # two standout tokens: x = (0.5 + 1) / 2, y = 1
    anchor = AttentionAnchor(SpyExtractor(raw))
    centers = anchor(CAOutput(torch.zeros(2, 15, 4)), (3, 5))
    assert_close(centers[0], torch.tensor([0.75, 1.0]))
    assert centers[1].isnan().all()  # flat: no hard mask, the default centre stays
    assert anchor.needs_attn_probs is False
    assert AttentionAnchor(AttentionEntropyExtractor()).needs_attn_probs is True


def test_spatial_mask_with_anchor_moves_the_early_prior_only():
    raw = torch.zeros(2, 3, 5)
    raw[0, 0, 0] = 1.0  # sample 0 peaks top-left; sample 1 is flat
    spy = SpyExtractor(raw)
    sched = TemporalSpatialScheduler.from_preset("balanced")
    policy = SpatialMask(sched, spy, _identity, anchor=AttentionAnchor(spy))
    output = CAOutput(torch.zeros(2, 15, 4))
    early = policy(output, 0.9, (3, 5))
    assert early is not None and early.shape == (2, 15, 1)
    assert torch.equal(early[0], gaussian_prior((3, 5), 0.7, center=(-1.0, -1.0)).clamp(min=0.3).view(15, 1))
    assert torch.equal(early[1], gaussian_prior((3, 5), 0.7).clamp(min=0.3).view(15, 1))
    # Mid and late are the anchor-free policy's.
    plain = SpatialMask(sched, spy, _identity)
    for t in (0.5, 0.2):
        assert torch.equal(policy(output, t, (3, 5)), plain(output, t, (3, 5)))


# A box of its own: the attention mask computed over the box's tokens, as if the box were the image.


def _norms_output(norms: list[float]) -> CAOutput:
    """A CA output whose token i has L2 norm norms[i] (one sample, 2-dim heads)."""
    values = torch.tensor(norms)
    return CAOutput(torch.stack([values * 0.6, values * 0.8], dim=-1)[None])  # (1, N, 2)


# 2x4 grid, rows [1 3 | 9 1] and [2 3 | 5 1]: the right half draws the most attention.
NORMS = [1.0, 3.0, 9.0, 1.0, 2.0, 3.0, 5.0, 1.0]
LEFT = (0.0, 0.0, 0.5, 1.0)


def test_attention_box_normalises_over_its_own_tokens_and_leaves_zeros_outside():
    scheduler = TemporalSpatialScheduler(late_floor=0.5)
    whole = SpatialMask(scheduler, refiner=_identity)
    boxed = SpatialMask(scheduler, refiner=_identity, attention_box=LEFT)
    output = _norms_output(NORMS)
    mid = boxed(output, 0.5, (2, 4))[0, :, 0].view(2, 4)
    assert_close(mid, torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.5, 1.0, 0.0, 0.0]]))  # (n - 1) / (3 - 1)
    late = boxed(output, 0.1, (2, 4))[0, :, 0].view(2, 4)
    assert_close(late, torch.tensor([[0.5, 1.0, 0.0, 0.0], [0.75, 1.0, 0.0, 0.0]]))
    # Over the whole image the right half's 9 sets the scale: (n - 1) / (9 - 1) on the left.
    assert_close(whole(output, 0.5, (2, 4))[0, :2, 0], torch.tensor([0.0, 0.25]))


def test_attention_box_keeps_the_early_prior_of_the_whole_image():
    scheduler = TemporalSpatialScheduler(prior_sigma=0.5, prior_box=LEFT)
    boxed = SpatialMask(scheduler, attention_box=LEFT)
    output = _norms_output(NORMS)
    assert torch.equal(boxed(output, 0.9, (2, 4)), SpatialMask(scheduler)(output, 0.9, (2, 4)))


def test_attention_box_refines_at_the_whole_grids_scale():
    from idgen.core.refine import GridScaledRefiner

    base = MaskRefiner(kernel_size=3, sigma=1.0, dilation=3)
    output = CAOutput(_random(2, 16, 5))
    scaled = SpatialMask(
        TemporalSpatialScheduler(), refiner=GridScaledRefiner(base, (4, 4)), attention_box=LEFT
    )
    plain = SpatialMask(TemporalSpatialScheduler(), refiner=base, attention_box=LEFT)
    # On the 4x2 crop alone the scaled refiner would shrink its kernel; at the 4x4 grid's scale it is `base`.
    assert torch.equal(scaled(output, 0.5, (4, 4)), plain(output, 0.5, (4, 4)))
    crop = output.heads_out.view(2, 4, 4, 5)[:, :, :2].reshape(2, 8, 5)
    expected = SpatialMask(TemporalSpatialScheduler(), refiner=base)(CAOutput(crop), 0.5, (4, 2))
    assert torch.equal(plain(output, 0.5, (4, 4)).view(2, 4, 4)[:, :, :2], expected.view(2, 4, 2))


def test_attention_box_crops_the_attention_probabilities_too():
    probs = torch.softmax(_random(1, 2, 8, 3), dim=-1)  # (B, heads, N, K)
    output = CAOutput(_random(1, 8, 4), probs)
    entropy = AttentionEntropyExtractor()
    boxed = SpatialMask(TemporalSpatialScheduler(), extractor=entropy, refiner=_identity, attention_box=LEFT)
    crop = CAOutput(
        output.heads_out.view(1, 2, 4, 4)[:, :, :2].reshape(1, 4, 4),
        probs.view(1, 2, 2, 4, 3)[:, :, :, :2].reshape(1, 2, 4, 3),
    )
    expected = entropy(crop, (2, 2))  # (1, 2, 2)
    assert torch.equal(boxed(output, 0.5, (2, 4)).view(1, 2, 4)[:, :, :2], expected)


def test_attention_box_without_a_token_inside_gives_zeros_and_a_fixed_mask_refuses_one():
    from idgen.core.masks import FixedMaskExtractor

    tiny = SpatialMask(TemporalSpatialScheduler(), attention_box=(0.3, 0.3, 0.35, 0.35))
    assert torch.equal(tiny(_norms_output(NORMS), 0.5, (2, 4)), torch.zeros(1, 8, 1))
    with pytest.raises(IdgenError, match="a fixed mask reads no attention"):
        fixed = FixedMaskExtractor(torch.ones(4, 4))
        SpatialMask(TemporalSpatialScheduler(), extractor=fixed, attention_box=LEFT)
