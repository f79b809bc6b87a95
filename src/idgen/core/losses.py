"""PIDiff's identity-tailored fine-tuning losses (plain torch), on any denoiser's predictions.

With e(w) the prediction given identity code w, e(w~) the prediction for a perturbed code (no gradient),
e(0) the frozen model's prediction without the identity branch (no gradient) and M the face mask on the
prediction's token or latent grid (1 on the face):

    L = ||e(w) - target||^2 + lambda_d ||(1 - M) (e(w~) - e(w))||^2 + lambda_p ||e(0) - e(w)||^2

The disentanglement term says that changing the identity code must not change anything off the face;
the preservation term keeps the frozen model's behaviour. Weights default to the W+ adapter's scripts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class IdentityLossWeights:
    disentangle: float = 2.0  # lambda_d
    preserve: float = 1.0  # lambda_p


def denoising_loss(pred: Tensor, target: Tensor, token_weights: Tensor | None = None) -> Tensor:
    """Mean squared error; with (B, N) `token_weights`, a weighted mean over the (B, N, C) tokens."""
    if token_weights is None:
        return F.mse_loss(pred, target)
    w = token_weights[..., None]  # (B, N, 1)
    return (w * (pred - target) ** 2).mean() / w.mean()


def disentanglement_loss(pred: Tensor, pred_perturbed: Tensor, face_mask: Tensor) -> Tensor:
    """Mean over the off-face region of (e(w~) - e(w))^2. face_mask broadcasts to pred, values in [0, 1]."""
    off_face = (1 - face_mask).expand_as(pred)
    return ((pred_perturbed.detach() - pred) ** 2 * off_face).sum() / off_face.sum().clamp_min(1.0)


def preservation_loss(pred: Tensor, pred_base: Tensor) -> Tensor:
    return F.mse_loss(pred, pred_base.detach())


def identity_tailored_loss(
    pred: Tensor,
    target: Tensor,
    pred_perturbed: Tensor,
    pred_base: Tensor,
    face_mask: Tensor,
    weights: IdentityLossWeights,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The total loss and its parts (as floats, for logging); `token_weights` weigh the denoising term."""
    parts = {
        "denoise": denoising_loss(pred, target, token_weights),
        "disentangle": disentanglement_loss(pred, pred_perturbed, face_mask),
        "preserve": preservation_loss(pred, pred_base),
    }
    total = (
        parts["denoise"] + weights.disentangle * parts["disentangle"] + weights.preserve * parts["preserve"]
    )
    return total, {k: float(v.detach()) for k, v in parts.items()}


def perturb_codes(w: Tensor, g: torch.Generator, noise: float = 0.1) -> Tensor:
    """w~: each code moved towards (or past) another sample's code by a random amount, plus noise.

    w (B, L, D). Moving along real codes keeps w~ on the code manifold, as the W+ adapter's w~ does."""
    b = w.shape[0]
    other = w.roll(1, dims=0) if b > 1 else torch.zeros_like(w)
    amount = 0.5 + torch.rand(b, 1, 1, generator=g)  # 0.5 .. 1.5 of the way to the other code
    return w + amount * (other - w) + noise * w.std() * torch.randn(w.shape, generator=g)


def face_mask_on_grid(masks: Tensor, rows: int, cols: int, erode: int = 1) -> Tensor:
    """(B, H, W) bool pixel face masks -> (B, rows * cols, 1) soft masks on a row-major token grid.

    Eroded by `erode` pixels first (the W+ adapter erodes and blurs), then area-averaged per token."""
    m = masks.float()[:, None]  # (B, 1, H, W)
    if erode:
        m = -F.max_pool2d(-m, 2 * erode + 1, stride=1, padding=erode)
    grid = F.adaptive_avg_pool2d(m, (rows, cols))  # (B, 1, rows, cols)
    return grid.flatten(1)[..., None]
