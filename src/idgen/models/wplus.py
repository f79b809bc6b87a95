"""The W+ adapter's identity networks: the mapping F_w and the per-layer identity attention projections.

Module names follow the official W+ adapter checkpoints (wplus_adapter.bin and
wplus_adapter_stage1.bin, a torch.save of {"w_proj": ..., "wplus_adapter": ...}), so their
flattened keys load strictly without renaming:

    w_proj.proj_{g}.weight              (token_dim, group_size * w_dim), g = 0..3, no bias
    w_proj.norm.{weight,bias}           (token_dim,)  shared LayerNorm
    wplus_adapter.{slot}.to_q_wplus.weight   (width, width)
    wplus_adapter.{slot}.to_k_wplus.weight   (width, token_dim)
    wplus_adapter.{slot}.to_v_wplus.weight   (width, token_dim)

`slot` is the layer's position among ALL of the UNet's attention processors in
`unet.attn_processors` order (the official code saved a ModuleList over every processor, and
self-attention processors have no weights): on SD1.5 the 16 cross-attentions are the odd slots
1, 3, ..., 31 (down blocks, then up blocks, then the mid block at 31).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from idgen.core.wplus_edit import W_DIM, W_PLUS_LAYERS, check_w_plus
from idgen.errors import IdgenError
from idgen.models.checkpoint import save_model_folder
from idgen.models.loading import load_model_weights
from idgen.models.pulid import merge_heads, scaled_attention_probs, split_heads

OFFICIAL_FILES = ("wplus_adapter.bin", "wplus_adapter_stage1.bin")

# (slot, width) of every cross-attention of the SD1.5 UNet, forward order of unet.attn_processors.
SD15_ATTENTION_LAYERS: tuple[tuple[int, int], ...] = tuple(
    zip(
        range(1, 32, 2),
        (320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280),
        strict=True,
    )
)


@dataclass(frozen=True)
class WPlusConfig:
    """Sizes of the W+ adapter. Defaults are the released SD1.5 adapter."""

    num_layers: int = W_PLUS_LAYERS  # W+ vectors per code (StyleGAN2-FFHQ 1024 px: 18)
    w_dim: int = W_DIM
    # Half-open [start, end) W+ layer groups, one identity token each, coarse to fine.
    groups: tuple[tuple[int, int], ...] = ((0, 4), (4, 8), (8, 12), (12, 18))
    token_dim: int = 768  # = the UNet's cross_attention_dim
    attention_layers: tuple[tuple[int, int], ...] = field(default=SD15_ATTENTION_LAYERS)

    def __post_init__(self) -> None:
        # JSON gives lists; keep hashable tuples of ints.
        object.__setattr__(self, "groups", tuple((int(a), int(b)) for a, b in self.groups))
        object.__setattr__(
            self, "attention_layers", tuple((int(s), int(w)) for s, w in self.attention_layers)
        )
        for name in ("num_layers", "w_dim", "token_dim"):
            if getattr(self, name) < 1:
                raise IdgenError(f"W+ adapter {name} must be >= 1, got {getattr(self, name)}")
        self._check_groups()
        self._check_slots()

    def _check_groups(self) -> None:
        edges = [0] + [end for _, end in self.groups]
        if not self.groups or any(
            start != edges[i] or end <= start for i, (start, end) in enumerate(self.groups)
        ):
            raise IdgenError(f"W+ groups must be contiguous non-empty ranges from 0, got {list(self.groups)}")
        if edges[-1] != self.num_layers:
            raise IdgenError(f"W+ groups end at layer {edges[-1]}, the code has {self.num_layers} layers")

    def _check_slots(self) -> None:
        slots = [slot for slot, _ in self.attention_layers]
        if len(set(slots)) != len(slots) or any(slot < 0 for slot in slots):
            raise IdgenError(f"W+ attention slots must be distinct and >= 0, got {slots}")

    @property
    def num_tokens(self) -> int:
        return len(self.groups)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class WPlusMapping(nn.Module):
    """F_w: W+ (B, L, w_dim) -> identity tokens (B, num_groups, token_dim).

    Each layer group is flattened and mapped by its own bias-free linear layer; one shared
    LayerNorm normalises the tokens. Token order is coarse to fine.
    """

    def __init__(self, config: WPlusConfig) -> None:
        super().__init__()
        self.config = config
        for g, (start, end) in enumerate(config.groups):
            setattr(self, f"proj_{g}", nn.Linear((end - start) * config.w_dim, config.token_dim, bias=False))
        self.norm = nn.LayerNorm(config.token_dim)

    def forward(self, w_plus: Tensor) -> Tensor:
        c = self.config
        w_plus = check_w_plus(w_plus, c.num_layers, c.w_dim)  # (B, L, w_dim)
        tokens = [
            getattr(self, f"proj_{g}")(w_plus[:, start:end].flatten(1))  # (B, token_dim)
            for g, (start, end) in enumerate(c.groups)
        ]
        return self.norm(torch.stack(tokens, dim=1))  # (B, num_groups, token_dim)


class WPlusProjections(nn.Module):
    """Wq+, Wk+, Wv+ of one UNet cross-attention layer (no biases, like the layer's own q, k, v)."""

    def __init__(self, width: int, token_dim: int) -> None:
        super().__init__()
        self.to_q_wplus = nn.Linear(width, width, bias=False)
        self.to_k_wplus = nn.Linear(token_dim, width, bias=False)
        self.to_v_wplus = nn.Linear(token_dim, width, bias=False)

    def attend(self, text_out: Tensor, id_tokens: Tensor, heads: int) -> tuple[Tensor, Tensor]:
        """softmax((f' Wq+)(F_w Wk+)^T / sqrt(d)) (F_w Wv+), per head.

        text_out (B, N, width) = f', the text attention's output before to_out;
        id_tokens (B, K, token_dim) -> out (B, N, width), probs (B, heads, N, K)
        """
        q = split_heads(self.to_q_wplus(text_out), heads)  # (B, h, N, d)
        k = split_heads(self.to_k_wplus(id_tokens), heads)  # (B, h, K, d)
        v = split_heads(self.to_v_wplus(id_tokens), heads)  # (B, h, K, d)
        probs = scaled_attention_probs(q, k)  # (B, h, N, K)
        return merge_heads(probs @ v), probs


class WPlusAdapter(nn.Module):
    """Everything in a W+ adapter checkpoint: the mapping and one projection set per cross-attention."""

    def __init__(self, config: WPlusConfig | None = None) -> None:
        super().__init__()
        self.config = config or WPlusConfig()
        c = self.config
        self.w_proj = WPlusMapping(c)
        self.wplus_adapter = nn.ModuleDict(
            {str(slot): WPlusProjections(width, c.token_dim) for slot, width in c.attention_layers}
        )

    def encode(self, w_plus: Tensor) -> Tensor:
        """W+ (L, D) | (B, L, D) -> identity tokens (B, K, token_dim)."""
        return self.w_proj(w_plus)

    def projections(self, slot: int) -> WPlusProjections:
        return cast(WPlusProjections, self.wplus_adapter[str(slot)])

    def mapping_parameters(self) -> list[nn.Parameter]:
        """F_w: trained in stage I, frozen in stage II."""
        return list(self.w_proj.parameters())

    def attention_parameters(self) -> list[nn.Parameter]:
        """Wq+, Wk+, Wv+ of every layer: trained in both stages."""
        return list(self.wplus_adapter.parameters())


def identity_parameters(adapter: WPlusAdapter) -> list[nn.Parameter]:
    """All trainable identity-branch parameters: mapping + identity attention projections."""
    return adapter.mapping_parameters() + adapter.attention_parameters()


# ----------------------------------------------------------------------------- files


def load_wplus_adapter(
    source: str | os.PathLike[str],
    config: WPlusConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> WPlusAdapter:
    """Load W+ adapter weights strictly.

    source: an official wplus_adapter.bin / wplus_adapter_stage1.bin (SD1.5 sizes unless `config`
    says otherwise), a .safetensors with the same flat keys, a folder with config.json +
    model.safetensors (save_wplus_adapter), or a hub id ("owner/name" for such a folder,
    "owner/name/file.bin" for one file).
    """
    adapter = load_model_weights(source, "wplus", WPlusAdapter, WPlusConfig, config, "W+ adapter")
    return adapter.to(device, dtype).eval()


def save_wplus_adapter(adapter: WPlusAdapter, folder: str | os.PathLike[str]) -> Path:
    """Write config.json + model.safetensors (official key names), each atomically."""
    return save_model_folder(adapter, folder, adapter.config.to_dict())
