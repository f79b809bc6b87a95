"""Keeps, per step and injection point, the identity mask, the CA-output norm and the time t."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from idgen.core.masks import ca_output_norm, tokens_to_grid


@dataclass
class MaskRecord:
    step: int
    t: float
    point: str  # e.g. "double.0", "single.4"
    mask: Tensor | None  # (B, H, W) in [0, 1]; None where the injection was uniform
    ca_norm: Tensor | None  # (B, H, W), raw L2 norm of the CA output before its projection


@dataclass
class MaskRecorder:
    """Pass one as `recorder=` to a pipeline call. Tensors are copied to CPU float32."""

    keep_mask: bool = True
    keep_ca_norm: bool = True
    points: frozenset[str] | None = None  # None = every injection point
    records: list[MaskRecord] = field(default_factory=list)

    def record(
        self, step: int, t: float, point: str, mask: Tensor | None, heads_out: Tensor, grid: tuple[int, int]
    ) -> None:
        if self.points is not None and point not in self.points:
            return
        kept_mask = None
        if self.keep_mask and mask is not None:
            kept_mask = tokens_to_grid(mask.squeeze(-1).float(), grid).cpu()
        kept_norm = tokens_to_grid(ca_output_norm(heads_out), grid).cpu() if self.keep_ca_norm else None
        self.records.append(MaskRecord(step, t, point, kept_mask, kept_norm))

    def steps(self) -> list[int]:
        return sorted({r.step for r in self.records})

    def mean_mask_per_step(self, sample: int = 0) -> list[tuple[int, float, Tensor]]:
        """(step, t, (H, W) mask averaged over the injection points) for each recorded step."""
        out = []
        for step in self.steps():
            rows = [r for r in self.records if r.step == step and r.mask is not None]
            if rows:
                out.append((step, rows[0].t, torch.stack([r.mask[sample] for r in rows]).mean(0)))  # type: ignore[index]
        return out


@dataclass
class IdentityMaskRecorder:
    """Pass one as `recorder=` to a several-identities call: one MaskRecorder per identity."""

    keep_ca_norm: bool = False
    points: frozenset[str] | None = None
    per_identity: dict[int, MaskRecorder] = field(default_factory=dict)

    def record_identity(
        self,
        identity: int,
        step: int,
        t: float,
        point: str,
        mask: Tensor | None,
        heads_out: Tensor,
        grid: tuple[int, int],
    ) -> None:
        if identity not in self.per_identity:
            self.per_identity[identity] = MaskRecorder(keep_ca_norm=self.keep_ca_norm, points=self.points)
        self.per_identity[identity].record(step, t, point, mask, heads_out, grid)

    @property
    def identities(self) -> int:
        return len(self.per_identity)

    def mean_masks_per_step(self, sample: int = 0) -> list[tuple[int, float, Tensor]]:
        """(step, t, (n, H, W)): each identity's mask averaged over the injection points, per step."""
        per_identity = [self.per_identity[i].mean_mask_per_step(sample) for i in range(self.identities)]
        if not per_identity or not per_identity[0]:
            return []
        return [
            (step, t, torch.stack([rows[k][2] for rows in per_identity]))
            for k, (step, t, _) in enumerate(per_identity[0])
        ]
