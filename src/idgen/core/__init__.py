"""SpatialID's method core in plain torch: mask extraction, refinement, scheduling, gating."""

from idgen.core.gate import ConstantMask, MaskPolicy, Refiner, SpatialMask, UniformMask, gate
from idgen.core.masks import (
    AttentionEntropyExtractor,
    CANormExtractor,
    CAOutput,
    FixedMaskExtractor,
    Grid,
    MaskExtractor,
    attention_entropy,
    ca_output_norm,
    minmax_normalize,
    resize_mask,
    tokens_to_grid,
)
from idgen.core.refine import MaskRefiner, dilate, gaussian_blur, gaussian_kernel1d, threshold_mask
from idgen.core.schedule import PRESETS, Stage, TemporalSpatialScheduler, gaussian_prior

__all__ = [
    "PRESETS",
    "AttentionEntropyExtractor",
    "CANormExtractor",
    "CAOutput",
    "ConstantMask",
    "FixedMaskExtractor",
    "Grid",
    "MaskExtractor",
    "MaskPolicy",
    "MaskRefiner",
    "Refiner",
    "SpatialMask",
    "Stage",
    "TemporalSpatialScheduler",
    "UniformMask",
    "attention_entropy",
    "ca_output_norm",
    "dilate",
    "gate",
    "gaussian_blur",
    "gaussian_kernel1d",
    "gaussian_prior",
    "minmax_normalize",
    "resize_mask",
    "threshold_mask",
    "tokens_to_grid",
]
