import pytest
import torch

from idgen.core.losses import (
    IdentityLossWeights,
    denoising_loss,
    disentanglement_loss,
    face_mask_on_grid,
    identity_tailored_loss,
    perturb_codes,
    preservation_loss,
)


def test_disentanglement_counts_only_the_off_face_region():
    pred = torch.zeros(1, 4, 1)
    perturbed = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
    mask = torch.tensor([[[1.0], [1.0], [0.0], [0.5]]])  # off-face weights 0, 0, 1, 0.5
    expected = (9 * 1 + 16 * 0.5) / 1.5
    assert disentanglement_loss(pred, perturbed, mask).item() == pytest.approx(expected)


def test_the_targets_carry_no_gradient():
    pred = torch.zeros(1, 2, 1, requires_grad=True)
    other = torch.ones(1, 2, 1, requires_grad=True)
    (disentanglement_loss(pred, other, torch.zeros(1, 2, 1)) + preservation_loss(pred, other)).backward()
    assert other.grad is None and pred.grad is not None


def test_total_is_the_weighted_sum_of_the_parts():
    g = torch.Generator().manual_seed(0)
    pred, target, pert, base = (torch.randn(2, 4, 3, generator=g) for _ in range(4))
    mask = torch.rand(2, 4, 1, generator=g)
    total, parts = identity_tailored_loss(pred, target, pert, base, mask, IdentityLossWeights(2.0, 0.5))
    assert total.item() == pytest.approx(
        parts["denoise"] + 2.0 * parts["disentangle"] + 0.5 * parts["preserve"]
    )


def test_token_weights_make_the_denoising_term_a_weighted_mean_over_tokens():
    pred = torch.zeros(1, 2, 2)
    target = torch.tensor([[[1.0, 1.0], [3.0, 3.0]]])  # squared errors 1 and 9 per channel
    weights = torch.tensor([[1.0, 3.0]])
    assert denoising_loss(pred, target, weights).item() == pytest.approx((1 * 1 + 3 * 9) / 4)
    assert torch.equal(denoising_loss(pred, target), torch.nn.functional.mse_loss(pred, target))
    no_face = torch.zeros(1, 2, 1)
    _, parts = identity_tailored_loss(pred, target, pred, pred, no_face, IdentityLossWeights(), weights)
    assert parts["denoise"] == pytest.approx(7.0)


def test_face_mask_on_grid_erodes_then_averages():
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 0:4, 0:4] = True  # one 4x4 face in the top-left token of a 2x2 grid
    assert face_mask_on_grid(masks, 2, 2, erode=0).flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    # eroding by 1 px keeps 3x3 of the 4x4 face: the image border does not erode it
    assert face_mask_on_grid(masks, 2, 2, erode=1).flatten().tolist() == [9 / 16, 0.0, 0.0, 0.0]


def test_perturbed_codes_are_deterministic_and_move():
    w = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1))
    a = perturb_codes(w, torch.Generator().manual_seed(2))
    assert torch.equal(a, perturb_codes(w, torch.Generator().manual_seed(2)))
    assert not torch.allclose(a, w)
