"""The e4e (encoder4editing) face encoder into StyleGAN2-FFHQ's W+ space, in plain PyTorch.

An IR-SE-50 backbone with a feature pyramid, and one GradualStyleBlock head per W+ layer: the
first head predicts a base w repeated over all layers, every other head adds a delta to its own
layer (heads 1-2 read the coarsest features, 3-6 the middle, 7-17 the finest). W+ = that +
the generator's average latent. Input: an FFHQ-aligned face, 256x256 RGB in [-1, 1].

Module names follow the official e4e_ffhq_encode.pt, a torch.save of
{"state_dict": {"encoder.*", "decoder.*"}, "latent_avg": (18, 512), "opts": {...}}, so
`E4EEncoder` holds `encoder.*` and `latent_avg` under the same names. The decoder (the StyleGAN2
generator) is not needed to encode and its keys are skipped. Nothing here compiles CUDA code:
EqualLinear is plain torch, and the encoder uses no fused ops at all.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idgen.errors import CheckpointError, IdgenError
from idgen.models.checkpoint import (
    WEIGHTS_NAME,
    config_from_folder,
    load_strict,
    read_state_dict,
    read_weights,
    save_model_folder,
)
from idgen.models.loading import resolve_weights
from idgen.models.sources import WEIGHTS

DECODER_PREFIX = "decoder."


@dataclass(frozen=True)
class E4EConfig:
    """Sizes of the e4e encoder. Defaults are the released FFHQ encoder (IR-SE-50, 18 x 512)."""

    num_styles: int = 18  # W+ layers (StyleGAN2 at 1024 px)
    w_dim: int = 512
    input_size: int = 256
    stage_channels: tuple[int, ...] = (64, 128, 256, 512)
    stage_units: tuple[int, ...] = (3, 4, 14, 3)  # IR-SE-50
    se_reduction: int = 16
    coarse_end: int = 3  # heads [0, 3) read the 1/16 features
    middle_end: int = 7  # heads [3, 7) the 1/8 features, the rest the 1/4 features

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage_channels", tuple(int(c) for c in self.stage_channels))
        object.__setattr__(self, "stage_units", tuple(int(u) for u in self.stage_units))
        self._check_backbone()
        self._check_input_and_heads()

    def _check_backbone(self) -> None:
        if len(self.stage_channels) != 4 or len(self.stage_units) != 4 or min(self.stage_units) < 1:
            raise IdgenError("e4e needs 4 backbone stages with at least one unit each")
        if self.stage_channels[-1] != self.w_dim:
            raise IdgenError(
                f"e4e's last stage width {self.stage_channels[-1]} must equal w_dim {self.w_dim} "
                "(the feature pyramid adds them)"
            )
        if any(c // self.se_reduction < 1 for c in self.stage_channels):
            raise IdgenError(f"se_reduction {self.se_reduction} leaves a squeeze-excitation with no channels")

    def _check_input_and_heads(self) -> None:
        if self.input_size < 32 or self.input_size & (self.input_size - 1):
            raise IdgenError(f"e4e input size must be a power of two >= 32, got {self.input_size}")
        if not 1 <= self.coarse_end <= self.middle_end <= self.num_styles:
            raise IdgenError(
                f"e4e needs 1 <= coarse_end <= middle_end <= num_styles, "
                f"got {self.coarse_end}, {self.middle_end}, {self.num_styles}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EqualLinear(nn.Module):
    """StyleGAN2's equalised-learning-rate linear layer: the weight is scaled by lr_mul / sqrt(in) at use."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class SqueezeExcitation(nn.Module):
    """Channel gate: x * sigmoid(fc2(relu(fc1(mean over H, W)))), 1x1 convolutions without bias."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))  # (B, C, 1, 1)
        return x * torch.sigmoid(gate)


class BottleneckIRSE(nn.Module):
    """ArcFace's improved residual unit with squeeze-excitation; the stride sits in the second conv."""

    def __init__(self, in_channels: int, depth: int, stride: int, se_reduction: int) -> None:
        super().__init__()
        # Same width: identity shortcut, subsampled by the stride (a 1x1 max-pool, as released).
        self.shortcut_layer: nn.Module = (
            nn.MaxPool2d(1, stride)
            if in_channels == depth
            else nn.Sequential(nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SqueezeExcitation(depth, se_reduction),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class GradualStyleBlock(nn.Module):
    """One W+ layer's head: stride-2 convs down to 1x1, then an EqualLinear. (B, C, S, S) -> (B, C)."""

    def __init__(self, channels: int, spatial: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(spatial))):
            # LeakyReLU's default slope (0.01), as released, not StyleGAN's 0.2.
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.convs(x).flatten(1))


def upsample_add(top: Tensor, lateral: Tensor) -> Tensor:
    """FPN merge: bilinearly upsample `top` to `lateral`'s size (align_corners=True) and add."""
    return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral


class Encoder4Editing(nn.Module):
    """Aligned face (B, 3, S, S) -> W+ offsets from the average latent (B, num_styles, w_dim)."""

    def __init__(self, config: E4EConfig) -> None:
        super().__init__()
        c = self.config = config
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)
        )
        units: list[nn.Module] = []
        in_channels = 64
        for depth, count in zip(c.stage_channels, c.stage_units, strict=True):
            # The first unit of each stage halves the resolution.
            for i in range(count):
                units.append(BottleneckIRSE(in_channels, depth, 2 if i == 0 else 1, c.se_reduction))
                in_channels = depth
        self.body = nn.Sequential(*units)
        # Index of the last unit of stages 2, 3, 4 (IR-SE-50: 6, 20, 23): the 1/4, 1/8, 1/16 features.
        ends = [end - 1 for end in itertools.accumulate(c.stage_units)]
        self.tap_fine, self.tap_middle, self.tap_coarse = ends[1:]
        self.styles = nn.ModuleList(
            GradualStyleBlock(c.w_dim, self.head_size(i)) for i in range(c.num_styles)
        )
        self.latlayer1 = nn.Conv2d(c.stage_channels[2], c.w_dim, 1)
        self.latlayer2 = nn.Conv2d(c.stage_channels[1], c.w_dim, 1)

    def head_size(self, style: int) -> int:
        """Side of the feature map W+ layer `style`'s head reads: 1/16, 1/8 or 1/4 of the input."""
        c = self.config
        return c.input_size // (16 if style < c.coarse_end else 8 if style < c.middle_end else 4)

    def forward(self, images: Tensor) -> Tensor:
        c = self.config
        x = self.input_layer(images)
        features: dict[int, Tensor] = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            features[i] = x
        coarse = features[self.tap_coarse]  # (B, w_dim, S/16, S/16)
        w0 = self.styles[0](coarse)  # (B, w_dim): the base w, shared by every layer
        deltas = [torch.zeros_like(w0)]
        level = middle = coarse
        for i in range(1, c.num_styles):
            if i == c.coarse_end:
                level = middle = upsample_add(coarse, self.latlayer1(features[self.tap_middle]))  # S/8
            if i == c.middle_end:
                level = upsample_add(middle, self.latlayer2(features[self.tap_fine]))  # S/4
            deltas.append(self.styles[i](level))
        return w0.unsqueeze(1) + torch.stack(deltas, dim=1)  # (B, num_styles, w_dim)


class E4EEncoder(nn.Module):
    """The e4e encoder plus StyleGAN2's average latent: aligned face -> absolute W+ code."""

    latent_avg: Tensor  # (num_styles, w_dim) buffer

    def __init__(self, config: E4EConfig | None = None) -> None:
        super().__init__()
        self.config = config or E4EConfig()
        c = self.config
        self.encoder = Encoder4Editing(c)
        self.register_buffer("latent_avg", torch.zeros(c.num_styles, c.w_dim))

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, S, S) in [-1, 1] -> W+ (B, num_styles, w_dim)."""
        size = self.config.input_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise IdgenError(f"e4e expects faces of shape (B, 3, {size}, {size}), got {tuple(images.shape)}")
        return self.encoder(images) + self.latent_avg


# ----------------------------------------------------------------------------- files


def read_official_e4e(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """An official e4e .pt -> our flat state dict ("encoder.*" + "latent_avg"); decoder keys dropped.

    Read with torch.load(weights_only=True): the file holds only tensors, dicts and the training
    options (a plain dict of str/int/float/bool/None/list values), all of which that reader accepts.
    """
    path = Path(path)
    ckpt = read_weights(path, WEIGHTS["e4e"].what)
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not an e4e checkpoint: no 'state_dict' dictionary")
    opts = ckpt.get("opts")
    encoder_type = opts.get("encoder_type") if isinstance(opts, dict) else None
    if encoder_type not in (None, "Encoder4Editing"):
        # A pSp GradualStyleEncoder has the same keys but predicts each layer independently.
        raise CheckpointError(f"{path} holds a {encoder_type} encoder, not Encoder4Editing (e4e)")
    latent_avg = ckpt.get("latent_avg")
    if not isinstance(latent_avg, Tensor):
        raise CheckpointError(f"{path} is not an e4e checkpoint: no 'latent_avg' tensor")
    state_dict: dict[str, Tensor] = {}
    for key, value in ckpt["state_dict"].items():
        if key.startswith(DECODER_PREFIX):
            continue  # the StyleGAN2 generator: only needed to render W+, not to encode
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{path}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        state_dict[key] = value
    state_dict["latent_avg"] = latent_avg
    return state_dict


def _fit_latent_avg(state_dict: dict[str, Tensor], config: E4EConfig, source: str) -> None:
    # StyleGAN2 files store w_avg as (512,); e4e's training repeats it per layer to (18, 512).
    latent_avg = state_dict.get("latent_avg")
    if latent_avg is None:
        return
    shape = tuple(latent_avg.shape)
    if shape in ((config.w_dim,), (1, config.w_dim)):
        state_dict["latent_avg"] = latent_avg.reshape(1, -1).expand(config.num_styles, -1).clone()
    elif shape == (1, config.num_styles, config.w_dim):
        state_dict["latent_avg"] = latent_avg[0]
    elif shape != (config.num_styles, config.w_dim):
        raise CheckpointError(
            f"{source}: latent_avg has shape {shape}, expected ({config.num_styles}, {config.w_dim})"
        )


def _fill_num_batches_tracked(state_dict: dict[str, Tensor], module: nn.Module) -> None:
    # Files saved before PyTorch 0.4.1 lack BatchNorm's step counters; eval mode never reads them.
    expected = [k for k in module.state_dict() if k.endswith("num_batches_tracked")]
    if expected and not any(k in state_dict for k in expected):
        for key in expected:
            state_dict[key] = torch.zeros((), dtype=torch.long)


def load_e4e_encoder(
    source: str | os.PathLike[str],
    config: E4EConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> E4EEncoder:
    """Load an e4e encoder strictly.

    source: the official e4e_ffhq_encode.pt (FFHQ sizes unless `config` says otherwise), a
    .safetensors with our flat keys, a folder with config.json + model.safetensors
    (save_e4e_encoder), or a hub id ("owner/name" for such a folder, "owner/name/file" for one file).
    """
    path = resolve_weights(source, WEIGHTS["e4e"].what)
    if path.is_dir():
        config = config or config_from_folder(path, E4EConfig, "e4e")
        path = path / WEIGHTS_NAME
    config = config or E4EConfig()
    state_dict = (
        read_state_dict(path, WEIGHTS["e4e"].what)
        if path.suffix == ".safetensors"
        else read_official_e4e(path)
    )
    with torch.device("meta"):
        model = E4EEncoder(config)
    model = model.to_empty(device="cpu")
    _fit_latent_avg(state_dict, config, str(path))
    _fill_num_batches_tracked(state_dict, model)
    load_strict(model, state_dict, str(path), "e4e encoder")
    return model.to(device, dtype).eval()


def save_e4e_encoder(model: E4EEncoder, folder: str | os.PathLike[str]) -> Path:
    """Write config.json + model.safetensors (no decoder, no pickle), each atomically."""
    return save_model_folder(model, folder, model.config.to_dict())
