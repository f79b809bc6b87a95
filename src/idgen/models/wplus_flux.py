"""The W+ identity branch on FLUX: the W+ adapter's design on a FluxTransformer2DModel.

The mapping F_w is the W+ adapter's own (`WPlusMapping`: coarse-to-fine layer groups -> identity
tokens). Each injection point gets the W+ adapter's residual cross-attention, with the query taken from
the block's output (FLUX's joint attention has no separate text attention: the block output plays the
part of f'), and Wq+, Wk+, Wv+ copied from that block's own attention when the widths match. The
branch plugs into `FluxIdentityInjector` like PuLID's adapter, so SpatialID's masks gate it too.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from idgen.errors import CheckpointError
from idgen.models.checkpoint import WEIGHTS_NAME, load_strict, read_config, read_state_dict, save_model_folder
from idgen.models.wplus import WPlusConfig, WPlusMapping, WPlusProjections


@dataclass(frozen=True)
class WPlusFluxConfig:
    """W+ space (num_layers x w_dim, groups) and the transformer it attaches to (ca_dim wide, num_ca)."""

    num_layers: int = 18
    w_dim: int = 512
    groups: tuple[tuple[int, int], ...] = ((0, 4), (4, 8), (8, 12), (12, 18))
    ca_dim: int = 3072
    heads: int = 24
    num_ca: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple((int(a), int(b)) for a, b in self.groups))
        if self.ca_dim % self.heads:
            raise CheckpointError(f"W+ branch width {self.ca_dim} is not divisible by {self.heads} heads")

    @property
    def mapping(self) -> WPlusConfig:
        return WPlusConfig(self.num_layers, self.w_dim, self.groups, self.ca_dim, attention_layers=())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class WPlusFluxAttention(nn.Module):
    """Residual identity cross-attention at one injection point (the injector calls attend, then to_out)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.proj = WPlusProjections(width, width)
        self.to_out = nn.Identity()  # the W+ residual enters the hidden states directly

    def attend(self, id_tokens: Tensor, image_tokens: Tensor) -> tuple[Tensor, Tensor]:
        # id_tokens (B, K, width), image_tokens (B, N, width) -> (B, N, width), probs (B, heads, N, K)
        return self.proj.attend(image_tokens, id_tokens, self.heads)


class WPlusFluxAdapter(nn.Module):
    """F_w + one residual cross-attention per injection point."""

    def __init__(self, config: WPlusFluxConfig) -> None:
        super().__init__()
        self.config = config
        self.w_proj = WPlusMapping(config.mapping)
        self.identity_ca = nn.ModuleList(
            WPlusFluxAttention(config.ca_dim, config.heads) for _ in range(config.num_ca)
        )

    def encode(self, id_embedding: Tensor, vit_hidden: list[Tensor] | None = None) -> Tensor:
        """W+ flattened in IdentityFeatures.id_embedding (B, L * w_dim) -> identity tokens (B, K, ca_dim)."""
        c = self.config
        return self.w_proj(id_embedding.reshape(-1, c.num_layers, c.w_dim))

    def identity_attention(self, index: int) -> WPlusFluxAttention:
        return cast(WPlusFluxAttention, self.identity_ca[index])

    @torch.no_grad()
    def init_from_transformer(self, transformer: nn.Module, points: list[Any]) -> None:
        """Wq+, Wk+, Wv+ from each injection block's own q, k, v (the W+ adapter's initialisation)."""
        for point, index in zip(points, range(len(self.identity_ca)), strict=True):
            blocks = (
                transformer.transformer_blocks
                if point.kind == "double"
                else transformer.single_transformer_blocks
            )
            attn: Any = blocks[point.block_index].attn  # type: ignore[index,union-attr]
            proj = self.identity_attention(index).proj
            proj.to_q_wplus.weight.copy_(attn.to_q.weight)
            proj.to_k_wplus.weight.copy_(attn.to_k.weight)
            proj.to_v_wplus.weight.copy_(attn.to_v.weight)


def save_wplus_flux_adapter(adapter: WPlusFluxAdapter, folder: str | os.PathLike[str]) -> Path:
    """Write config.json + model.safetensors, each atomically."""
    return save_model_folder(adapter, folder, adapter.config.to_dict())


def load_wplus_flux_adapter(folder: str | os.PathLike[str], device: str = "cpu") -> WPlusFluxAdapter:
    folder = Path(folder)
    config = read_config(folder)
    if config.pop("_class_name", None) != "WPlusFluxAdapter":
        raise CheckpointError(
            f"{folder} is not a W+ FLUX branch (config.json _class_name is not WPlusFluxAdapter)"
        )
    adapter = WPlusFluxAdapter(WPlusFluxConfig(**config))
    load_strict(adapter, read_state_dict(folder / WEIGHTS_NAME), str(folder), "W+ FLUX branch")
    return adapter.to(device).eval()
