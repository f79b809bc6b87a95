"""Temporal-spatial scheduling: which mask gates the identity residual at denoising time t."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from idgen.core.masks import Grid, grid_axis
from idgen.errors import IdgenError


class Stage(enum.Enum):
    EARLY = "early"  # mostly noise: attention is unreliable, use the centred prior
    MID = "mid"  # structure forms: use the refined attention mask
    LATE = "late"  # details: relax the mask so texture reaches the face's surroundings


def gaussian_prior(
    grid: Grid,
    sigma: float,
    center: tuple[float, float] = (0.0, 0.0),
    *,
    device: torch.device | None = None,
) -> Tensor:
    """(H, W) float32: exp(-((x-cx)^2 + (y-cy)^2) / (2 sigma^2)), normalised to max 1.

    x = linspace(-1, 1, W), y = linspace(-1, 1, H) (anisotropic in pixels on non-square
    grids, as in the reference); center = (cx, cy) in the same coordinates.
    """
    return gaussian_priors(grid, sigma, torch.tensor([center], dtype=torch.float32, device=device))[0]


def gaussian_priors(grid: Grid, sigma: float, centers: Tensor) -> Tensor:
    """(B, 2) centres (cx, cy) -> (B, H, W): gaussian_prior at each centre."""
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise IdgenError(f"grid must be positive, got {grid}")
    if not sigma > 0:
        raise IdgenError(f"prior sigma must be > 0, got {sigma}")
    cx, cy = centers.float().unbind(-1)  # (B,) each
    dx2 = (grid_axis(cols, centers.device)[None, :] - cx[:, None]) ** 2  # (B, W)
    dy2 = (grid_axis(rows, centers.device)[None, :] - cy[:, None]) ** 2  # (B, H)
    dist2 = dy2[:, :, None] + dx2[:, None, :]  # (B, H, W)
    # Subtracting the smallest distance normalises to max 1 exactly (same as dividing by the
    # max) and cannot underflow to 0/0 when the centre is far off-grid and sigma small.
    nearest = dist2.flatten(1).amin(dim=1).view(-1, 1, 1)
    return torch.exp(-(dist2 - nearest) / (2.0 * sigma**2))


def _box_coordinate(u: float, n: int) -> float:
    # Image coordinate u in [0, 1] -> the prior's axis coordinate: token j covers
    # [j/n, (j+1)/n] and sits at -1 + 2j/(n-1), so a box over token j centres the prior on it.
    if n == 1:
        return 0.0
    return -1.0 + 2.0 * (u * n - 0.5) / (n - 1)


PRESETS: dict[str, dict[str, float]] = {
    # README and demo app of the authors' code.
    "v1": {
        "early_threshold": 0.7,
        "late_threshold": 0.3,
        "late_floor": 0.5,
        "prior_sigma": 0.3,
        "global_floor": 0.0,
    },
    # "config F", the authors' best trade-off, used for their IBench runs.
    "balanced": {
        "early_threshold": 0.7,
        "late_threshold": 0.3,
        "late_floor": 0.8,
        "prior_sigma": 0.7,
        "global_floor": 0.3,
    },
}


@dataclass(frozen=True)
class TemporalSpatialScheduler:
    """Chooses the mask per stage of normalised time t (1 = noise, 0 = clean).

    prior_box: optional face box (left, top, right, bottom) in [0, 1] image coordinates;
    the early prior is centred on its centre instead of the image centre.
    """

    early_threshold: float = 0.7
    late_threshold: float = 0.3
    prior_sigma: float = 0.3
    late_floor: float = 0.5
    global_floor: float = 0.0
    prior_box: tuple[float, float, float, float] | None = None

    PRESETS: ClassVar[dict[str, dict[str, float]]] = PRESETS

    def __post_init__(self) -> None:
        if not 0.0 <= self.late_threshold < self.early_threshold <= 1.0:
            raise IdgenError(
                f"thresholds must satisfy 0 <= late < early <= 1, "
                f"got late={self.late_threshold}, early={self.early_threshold}"
            )
        if not self.prior_sigma > 0:
            raise IdgenError(f"prior_sigma must be > 0, got {self.prior_sigma}")
        for name in ("late_floor", "global_floor"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise IdgenError(f"{name} must be in [0, 1], got {value}")
        if self.prior_box is not None:
            if len(self.prior_box) != 4:
                raise IdgenError(f"prior_box must be (left, top, right, bottom), got {self.prior_box}")
            # Accept a list (e.g. from a config file) but store a hashable tuple of floats.
            object.__setattr__(self, "prior_box", tuple(float(v) for v in self.prior_box))
            left, top, right, bottom = self.prior_box
            if not (0.0 <= left < right <= 1.0 and 0.0 <= top < bottom <= 1.0):
                raise IdgenError(
                    f"prior_box must satisfy 0 <= left < right <= 1 and 0 <= top < bottom <= 1, "
                    f"got {self.prior_box}"
                )

    @classmethod
    def from_preset(cls, name: str = "v1", **overrides: Any) -> TemporalSpatialScheduler:
        if name not in PRESETS:
            raise IdgenError(f"unknown SpatialID preset {name!r}; valid: {', '.join(PRESETS)}")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in overrides if key not in fields]
        if unknown:
            raise IdgenError(f"unknown scheduler setting {unknown[0]!r}; valid: {', '.join(fields)}")
        return cls(**{**PRESETS[name], **overrides})

    def preset_name(self) -> str | None:
        """The preset whose settings this schedule has (its prior box aside), or None."""
        for name, settings in PRESETS.items():
            if all(getattr(self, key) == value for key, value in settings.items()):
                return name
        return None

    def stage(self, t: float) -> Stage:
        if t > self.early_threshold:
            return Stage.EARLY
        if t > self.late_threshold:
            return Stage.MID
        return Stage.LATE

    def prior(
        self, grid: Grid, *, device: torch.device | None = None, centers: Tensor | None = None
    ) -> Tensor:
        """(H, W) float32 Gaussian prior, centred on the image or on prior_box.

        centers (B, 2): (B, H, W), one prior per sample centred there; a NaN row keeps the default centre.
        """
        center = (0.0, 0.0)
        if self.prior_box is not None:
            left, top, right, bottom = self.prior_box
            center = (
                _box_coordinate((left + right) / 2, grid[1]),
                _box_coordinate((top + bottom) / 2, grid[0]),
            )
        if centers is None:
            return gaussian_prior(grid, self.prior_sigma, center, device=device)
        default = torch.tensor(center, dtype=torch.float32, device=centers.device)
        centers = torch.where(centers.isnan().any(dim=-1, keepdim=True), default, centers.float())
        return gaussian_priors(grid, self.prior_sigma, centers)

    def combine(
        self,
        stage: Stage,
        refined: Tensor | None,
        grid: Grid,
        *,
        device: torch.device | None = None,
        centers: Tensor | None = None,
    ) -> Tensor:
        """-> (1, H, W) for EARLY (refined is ignored), or (B, H, W) with prior centres (B, 2);
        else (B, H, W) from refined (B, H, W)."""
        if stage is Stage.EARLY:
            if centers is not None:
                return self.prior(grid, centers=centers).clamp(min=self.global_floor)
            mask = self.prior(grid, device=device if refined is None else refined.device)[None]
        else:
            if refined is None:
                raise IdgenError(f"the {stage.value} stage needs a refined mask, got None")
            if tuple(refined.shape[-2:]) != tuple(grid):
                raise IdgenError(f"refined mask of shape {tuple(refined.shape)} does not match grid {grid}")
            mask = refined
            if stage is Stage.LATE:
                mask = self.late_floor + (1.0 - self.late_floor) * refined
        return mask.clamp(min=self.global_floor)
