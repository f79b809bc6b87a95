import math

import pytest
import torch
from torch.testing import assert_close

from idgen.core.schedule import PRESETS, Stage, TemporalSpatialScheduler, gaussian_prior, gaussian_priors
from idgen.errors import IdgenError


def test_stage_boundaries():
    sched = TemporalSpatialScheduler()
    assert sched.stage(1.0) is Stage.EARLY
    assert sched.stage(0.7000001) is Stage.EARLY
    assert sched.stage(0.7) is Stage.MID
    assert sched.stage(0.3000001) is Stage.MID
    assert sched.stage(0.3) is Stage.LATE
    assert sched.stage(0.0) is Stage.LATE


def test_prior_has_the_given_sigma():
    # linspace(-1, 1, 5) = [-1, -0.5, 0, 0.5, 1]: with sigma 0.5 the grid hits 1 and 2 sigma.
    prior = gaussian_prior((5, 5), 0.5)
    assert prior.shape == (5, 5)
    assert prior[2, 2] == 1.0 and prior.max() == 1.0
    assert_close(prior[2, 3], torch.tensor(math.exp(-0.5)))  # 1 sigma along x
    assert_close(prior[1, 2], torch.tensor(math.exp(-0.5)))  # 1 sigma along y
    assert_close(prior[2, 4], torch.tensor(math.exp(-2.0)))  # 2 sigma
    assert_close(prior[0, 0], torch.tensor(math.exp(-4.0)))  # (1, 1): r^2 = 2 = 8 sigma^2
    assert torch.equal(prior, prior.flip(0)) and torch.equal(prior, prior.flip(1))
    assert torch.equal(prior, prior.T)


def test_prior_non_square_is_anisotropic():
    prior = gaussian_prior((3, 5), 0.5)  # y = [-1, 0, 1], x = [-1, -0.5, 0, 0.5, 1]
    assert prior[1, 2] == 1.0
    assert_close(prior[0, 2], torch.tensor(math.exp(-2.0)))  # one row up is y = 1
    assert_close(prior[1, 3], torch.tensor(math.exp(-0.5)))  # one column right is x = 0.5


def test_prior_even_grid_normalised_to_one():
    prior = gaussian_prior((4, 6), 0.3)
    assert prior.max() == 1.0
    assert torch.equal(prior[1:3, 2:4], torch.ones(2, 2))  # the four tokens nearest the centre


def test_prior_length_one_axis_sits_at_zero():
    prior = gaussian_prior((1, 5), 0.5)
    expected = torch.tensor([[math.exp(-2.0), math.exp(-0.5), 1.0, math.exp(-0.5), math.exp(-2.0)]])
    assert_close(prior, expected)
    assert torch.equal(gaussian_prior((1, 1), 0.3), torch.ones(1, 1))


def test_prior_center():
    prior = gaussian_prior((5, 5), 0.5, center=(0.5, -1.0))  # (cx, cy)
    assert prior[0, 3] == 1.0
    assert_close(prior[0, 2], torch.tensor(math.exp(-0.5)))
    assert_close(prior[1, 3], torch.tensor(math.exp(-0.5)))
    # far off-grid with a tiny sigma: still max 1, no 0/0.
    far = gaussian_prior((5, 5), 0.01, center=(30.0, 30.0))
    assert not torch.isnan(far).any() and far[4, 4] == 1.0


def test_prior_box_centres_on_the_box():
    # On a 5-column grid token j covers [j/5, (j+1)/5]: a box over token (row 1, col 3).
    sched = TemporalSpatialScheduler(prior_sigma=0.5, prior_box=(0.6, 0.2, 0.8, 0.4))
    prior = sched.prior((5, 5))
    assert_close(prior, gaussian_prior((5, 5), 0.5, center=(0.5, -0.5)))
    assert prior.argmax() == 1 * 5 + 3
    assert_close(prior[1, 3], torch.tensor(1.0))
    # The whole image as the box is the reference's centred prior.
    whole = TemporalSpatialScheduler(prior_sigma=0.5, prior_box=(0.0, 0.0, 1.0, 1.0))
    assert_close(whole.prior((4, 6)), gaussian_prior((4, 6), 0.5))


def test_combine_early_is_the_prior():
    sched = TemporalSpatialScheduler()
    mask = sched.combine(Stage.EARLY, None, (3, 5))
    assert mask.shape == (1, 3, 5)
    assert torch.equal(mask[0], gaussian_prior((3, 5), 0.3))


def test_combine_mid_and_late():
    refined = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])
    sched = TemporalSpatialScheduler(late_floor=0.75)
    assert torch.equal(sched.combine(Stage.MID, refined, (2, 2)), refined)
    late = sched.combine(Stage.LATE, refined, (2, 2))
    assert torch.equal(late, torch.tensor([[[0.75, 0.875], [1.0, 0.8125]]]))


def test_combine_global_floor_every_stage():
    sched = TemporalSpatialScheduler(late_floor=0.5, global_floor=0.625)
    refined = torch.tensor([[[0.0, 0.5], [1.0, 0.75]]])
    assert torch.equal(
        sched.combine(Stage.MID, refined, (2, 2)), torch.tensor([[[0.625, 0.625], [1.0, 0.75]]])
    )
    assert torch.equal(
        sched.combine(Stage.LATE, refined, (2, 2)), torch.tensor([[[0.625, 0.75], [1.0, 0.875]]])
    )
    early = sched.combine(Stage.EARLY, None, (5, 5))
    assert torch.equal(early[0], gaussian_prior((5, 5), 0.3).clamp(min=0.625))
    assert early.min() == 0.625


def test_combine_needs_a_matching_refined_mask():
    sched = TemporalSpatialScheduler()
    with pytest.raises(IdgenError, match="mid"):
        sched.combine(Stage.MID, None, (2, 2))
    with pytest.raises(IdgenError, match="grid"):
        sched.combine(Stage.LATE, torch.zeros(1, 2, 3), (2, 2))


def test_presets():
    assert PRESETS["v1"] == {
        "early_threshold": 0.7,
        "late_threshold": 0.3,
        "late_floor": 0.5,
        "prior_sigma": 0.3,
        "global_floor": 0.0,
    }
    assert TemporalSpatialScheduler.from_preset() == TemporalSpatialScheduler()
    balanced = TemporalSpatialScheduler.from_preset("balanced")
    assert (balanced.early_threshold, balanced.late_threshold) == (0.7, 0.3)
    assert (balanced.late_floor, balanced.prior_sigma, balanced.global_floor) == (0.8, 0.7, 0.3)
    assert balanced.prior_box is None


def test_preset_overrides():
    sched = TemporalSpatialScheduler.from_preset("balanced", late_floor=0.6, prior_box=(0.1, 0.1, 0.5, 0.5))
    assert (sched.late_floor, sched.prior_sigma, sched.global_floor) == (0.6, 0.7, 0.3)
    assert sched.prior_box == (0.1, 0.1, 0.5, 0.5)
    listed = TemporalSpatialScheduler.from_preset("v1", prior_box=[0, 0, 1, 1])
    assert listed.prior_box == (0.0, 0.0, 1.0, 1.0) and isinstance(listed.prior_box, tuple)
    assert PRESETS["balanced"]["late_floor"] == 0.8  # presets are not mutated


def test_unknown_preset_and_override_names():
    with pytest.raises(IdgenError, match=r"'v2'.*v1, balanced"):
        TemporalSpatialScheduler.from_preset("v2")
    with pytest.raises(IdgenError, match=r"'sigma'.*prior_sigma"):
        TemporalSpatialScheduler.from_preset("v1", sigma=0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"early_threshold": 0.3, "late_threshold": 0.7},
        {"early_threshold": 0.5, "late_threshold": 0.5},
        {"early_threshold": 1.1},
        {"late_threshold": -0.1},
        {"late_threshold": float("nan")},
        {"prior_sigma": 0.0},
        {"late_floor": 1.5},
        {"global_floor": -0.1},
        {"prior_box": (0.5, 0.0, 0.5, 1.0)},
        {"prior_box": (0.0, 0.0, 1.2, 1.0)},
        {"prior_box": (0.0, 0.6, 1.0, 0.4)},
    ],
)
def test_bad_values(kwargs):
    with pytest.raises(IdgenError):
        TemporalSpatialScheduler(**kwargs)


def test_gaussian_priors_is_gaussian_prior_per_centre():
    centers = torch.tensor([[0.0, 0.0], [0.5, -1.0], [-1.0, 1.0]])
    priors = gaussian_priors((3, 5), 0.4, centers)
    assert priors.shape == (3, 3, 5)
    for prior, (cx, cy) in zip(priors, centers.tolist(), strict=True):
        assert torch.equal(prior, gaussian_prior((3, 5), 0.4, center=(cx, cy)))
    # By hand: centre (0.5, -1) on x = [-1, -0.5, 0, 0.5, 1], y = [-1, 0, 1]; token (0, 3) is the peak.
    assert priors[1, 0, 3] == 1.0
    assert_close(priors[1, 1, 4], torch.tensor(math.exp(-(0.25 + 1.0) / (2 * 0.16))))


def test_prior_with_centres_keeps_the_default_centre_for_nan_rows():
    sched = TemporalSpatialScheduler(prior_sigma=0.5, prior_box=(0.6, 0.2, 0.8, 0.4))
    centers = torch.tensor([[-1.0, 1.0], [float("nan"), float("nan")]])
    priors = sched.prior((5, 5), centers=centers)
    assert torch.equal(priors[0], gaussian_prior((5, 5), 0.5, center=(-1.0, 1.0)))
    assert torch.equal(priors[1], sched.prior((5, 5)))  # the box's centre


def test_combine_early_with_centres_is_per_sample_and_floored():
    sched = TemporalSpatialScheduler.from_preset("balanced")
    centers = torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    mask = sched.combine(Stage.EARLY, None, (4, 7), centers=centers)
    assert mask.shape == (2, 4, 7)
    assert torch.equal(mask[0], gaussian_prior((4, 7), 0.7, center=(1.0, -1.0)).clamp(min=0.3))
    assert torch.equal(mask[1], sched.combine(Stage.EARLY, None, (4, 7))[0])


def test_a_schedule_names_its_preset_whatever_its_prior_box():
    assert TemporalSpatialScheduler.from_preset("v1").preset_name() == "v1"
    boxed = TemporalSpatialScheduler.from_preset("balanced", prior_box=(0, 0, 0.5, 1))
    assert boxed.preset_name() == "balanced"
    assert TemporalSpatialScheduler.from_preset("v1", late_floor=0.8).preset_name() is None
