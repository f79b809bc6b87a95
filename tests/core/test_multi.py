"""Several identities' masks at one injection point: regions, the assignment rules, CompetingMasks."""

import pytest
import torch

from idgen.core import (
    ArgmaxAssignment,
    BoxRegion,
    CAOutput,
    CompetingMasks,
    ConstantMask,
    MaskRegion,
    PriorLayout,
    SpatialMask,
    SummedResiduals,
    TemporalSpatialScheduler,
    UniformMask,
    separated_boxes,
)
from idgen.core.masks import FixedMaskExtractor
from idgen.errors import IdgenError

GRID = (2, 3)


def output(batch: int = 1, seed: int = 0, tokens: int = GRID[0] * GRID[1]) -> CAOutput:
    g = torch.Generator().manual_seed(seed)
    return CAOutput(torch.randn(batch, tokens, 4, generator=g))


def fixed(values) -> SpatialMask:
    """A spatial policy whose mid-stage mask is exactly `values` (2x3), refiner and floor disabled."""
    scheduler = TemporalSpatialScheduler(global_floor=0.0)
    return SpatialMask(scheduler, extractor=FixedMaskExtractor(torch.tensor(values)), refiner=lambda m: m)


def test_separated_boxes_are_equal_vertical_strips():
    assert separated_boxes(1) == [(0.0, 0.0, 1.0, 1.0)]
    assert separated_boxes(2) == [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]
    with pytest.raises(IdgenError, match="at least one identity"):
        separated_boxes(0)


def test_box_region_marks_tokens_whose_centre_is_inside():
    # token centres: rows (0.25, 0.75), columns (1/6, 1/2, 5/6)
    region = BoxRegion((0.0, 0.0, 0.5, 1.0))(GRID, torch.device("cpu"))
    assert region.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    region = BoxRegion((0.6, 0.5, 1.0, 1.0))(GRID, torch.device("cpu"))
    assert region.tolist() == [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]


def test_mask_region_is_the_mask_resized_to_the_grid():
    mask = torch.tensor(
        [[1.0, 1.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]
    )  # 2x6 -> 2x3 by area
    assert MaskRegion(mask)(GRID, torch.device("cpu")).tolist() == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]


def test_argmax_keeps_the_largest_mask_per_token_and_ties_go_to_the_first():
    masks = torch.tensor([[[0.9, 0.2, 0.5, 0.0]], [[0.1, 0.8, 0.5, 0.0]]])  # (2, 1, 4)
    expected = torch.tensor([[[0.9, 0.0, 0.5, 0.0]], [[0.0, 0.8, 0.0, 0.0]]])
    assert torch.equal(ArgmaxAssignment()(masks), expected)


def test_argmax_with_one_identity_returns_the_mask_itself():
    masks = torch.rand(1, 2, 5)
    assert ArgmaxAssignment()(masks) is masks


def test_summed_residuals_keeps_every_mask():
    masks = torch.rand(3, 2, 5)
    assert torch.equal(SummedResiduals()(masks), masks)


def test_competing_masks_gives_each_token_to_one_identity():
    left = fixed([[0.9, 0.6, 0.1], [0.9, 0.6, 0.1]])
    right = fixed([[0.2, 0.7, 0.8], [0.2, 0.3, 0.8]])
    masks = CompetingMasks((left, right))([output(), output(seed=1)], 0.5, GRID)  # mid stage
    assert [m.shape for m in masks] == [(1, 6, 1), (1, 6, 1)]
    assert torch.equal(masks[0].flatten(), torch.tensor([0.9, 0.0, 0.0, 0.9, 0.6, 0.0]))
    assert torch.equal(masks[1].flatten(), torch.tensor([0.0, 0.7, 0.8, 0.0, 0.0, 0.8]))


def test_regions_limit_each_identity_before_the_competition():
    ones = ConstantMask(1.0)
    regions = (BoxRegion((0.0, 0.0, 0.5, 1.0)), BoxRegion((0.5, 0.0, 1.0, 1.0)))
    masks = CompetingMasks((ones, ones), ArgmaxAssignment(), regions)([output(), output()], 0.5, GRID)
    assert masks[0].flatten().tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    assert masks[1].flatten().tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]


def test_uniform_policies_summed_give_no_masks_and_with_regions_the_regions():
    uniform = UniformMask()
    assert CompetingMasks((uniform, uniform), SummedResiduals())([output(), output()], 0.5, GRID) == [
        None,
        None,
    ]
    regions = (BoxRegion((0.0, 0.0, 0.5, 1.0)), None)
    masks = CompetingMasks((uniform, uniform), SummedResiduals(), regions)([output(2), output(2)], 0.5, GRID)
    assert masks[0].shape == (2, 6, 1) and masks[0][1].flatten().tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    assert masks[1].flatten().tolist() == [1.0] * 12


def test_early_priors_centred_on_each_identity_split_the_image():
    def centred(box):
        return SpatialMask(TemporalSpatialScheduler(prior_box=box))

    policies = tuple(centred(b) for b in separated_boxes(2))
    masks = CompetingMasks(policies)(
        [output(tokens=8), output(tokens=8)], 0.9, (2, 4)
    )  # early stage, 2x4 grid
    assert (masks[0].view(2, 4)[:, :2] > 0).all() and (masks[0].view(2, 4)[:, 2:] == 0).all()
    assert (masks[1].view(2, 4)[:, 2:] > 0).all() and (masks[1].view(2, 4)[:, :2] == 0).all()


def test_a_layout_decides_who_wins_and_the_winner_keeps_its_own_mask():
    # Both identities' attention masks light up on both faces (columns 0 and 2), as without boxes.
    face = [[0.8, 0.1, 0.9], [0.8, 0.1, 0.9]]
    a, b = fixed(face), fixed([[0.6, 0.2, 0.7], [0.6, 0.2, 0.7]])
    plain = CompetingMasks((a, b))([output(), output()], 0.5, GRID)
    assert torch.equal(plain[0].flatten(), torch.tensor([0.8, 0.0, 0.9, 0.8, 0.0, 0.9]))  # both faces: a's
    layout = tuple(PriorLayout(TemporalSpatialScheduler(prior_box=box)) for box in separated_boxes(2))
    masks = CompetingMasks((a, b), layout=layout)([output(), output()], 0.5, GRID)
    # Weighted by the priors (left on column 0, right on column 2), each face goes to its side's identity,
    # with the mask it had; the middle column is nearer neither and goes to the larger mask (b's 0.2).
    assert torch.equal(masks[0].flatten(), torch.tensor([0.8, 0.0, 0.0, 0.8, 0.0, 0.0]))
    assert torch.equal(masks[1].flatten(), torch.tensor([0.0, 0.2, 0.7, 0.0, 0.2, 0.7]))


def test_the_layout_maps_are_built_once_per_grid():
    built = []

    def counted(grid, device):
        built.append(grid)
        return torch.ones(grid)

    competing = CompetingMasks(
        (fixed([[0.8, 0.1, 0.9]] * 2), fixed([[0.6, 0.2, 0.7]] * 2)), layout=(counted, counted)
    )
    for _ in range(3):  # three injection points or steps on one grid
        competing([output(), output()], 0.5, GRID)
    assert built == [GRID, GRID]  # once per identity


def test_a_prior_layout_is_the_schedulers_early_prior():
    scheduler = TemporalSpatialScheduler(prior_box=(0.0, 0.0, 0.5, 1.0))
    assert torch.equal(PriorLayout(scheduler)((2, 4), torch.device("cpu")), scheduler.prior((2, 4)))


def test_competing_masks_refuses_mismatched_inputs():
    with pytest.raises(IdgenError, match="at least one"):
        CompetingMasks(())
    with pytest.raises(IdgenError, match="1 regions for 2 identities"):
        CompetingMasks((UniformMask(), UniformMask()), regions=(None,))
    with pytest.raises(IdgenError, match="1 layout maps for 2 identities"):
        CompetingMasks((UniformMask(), UniformMask()), layout=(BoxRegion((0.0, 0.0, 1.0, 1.0)),))
    with pytest.raises(IdgenError, match="1 CA outputs for 2 identities"):
        CompetingMasks((UniformMask(), UniformMask()))([output()], 0.5, GRID)


def test_needs_attn_probs_if_any_policy_does():
    from idgen.core.masks import AttentionEntropyExtractor

    entropy = SpatialMask(TemporalSpatialScheduler(), extractor=AttentionEntropyExtractor())
    assert CompetingMasks((UniformMask(), entropy)).needs_attn_probs
    assert not CompetingMasks((UniformMask(), UniformMask())).needs_attn_probs
