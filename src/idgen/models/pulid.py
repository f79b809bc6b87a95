"""PuLID-FLUX's identity networks in plain torch: IDFormer and PerceiverAttentionCA.

Module and parameter names follow the official pulid_flux_v0.9.x checkpoint, so
`PuLIDAdapter.load_state_dict(file, strict=True)` reads it without renaming:

    pulid_encoder.*     IDFormer: photo features -> id tokens (B, 32, 2048)
    pulid_ca.{i}.*      20 PerceiverAttentionCA: image tokens attend to the id tokens
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import cast

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class PuLIDConfig:
    """Sizes of the PuLID-FLUX identity networks. Defaults are the released v0.9.x sizes."""

    # IDFormer
    dim: int = 1024
    depth: int = 10  # 5 ViT feature scales x 2 layers
    dim_head: int = 64
    heads: int = 16
    num_id_token: int = 5
    num_queries: int = 32
    output_dim: int = 2048  # id token width = CA kv width
    ff_mult: int = 4
    id_dim: int = 1280  # ArcFace 512 + EVA-CLIP class token 768
    vit_dim: int = 1024  # EVA02-CLIP-L hidden width
    mapping_dim: int = 1024  # hidden width of the input mappings
    # PerceiverAttentionCA
    ca_dim: int = 3072  # FLUX hidden width
    ca_dim_head: int = 128
    ca_heads: int = 16
    num_ca: int = 20

    @property
    def num_vit_features(self) -> int:
        return 5

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    # Sequential indices (0 norm, 1 up, 3 down) are part of the checkpoint's key names.
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


def mlp_mapping(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.LayerNorm(hidden),
        nn.LeakyReLU(),
        nn.Linear(hidden, hidden),
        nn.LayerNorm(hidden),
        nn.LeakyReLU(),
        nn.Linear(hidden, out_dim),
    )


def split_heads(x: Tensor, heads: int) -> Tensor:
    # (B, L, heads*d) -> (B, heads, L, d)
    b, length, _ = x.shape
    return x.view(b, length, heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    # (B, heads, L, d) -> (B, L, heads*d)
    b, heads, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, heads * d)


def scaled_attention_probs(q: Tensor, k: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) with q and k each scaled by d^-1/4 (stable in fp16); softmax in fp32."""
    scale = 1 / math.sqrt(math.sqrt(q.shape[-1]))
    logits = (q * scale) @ (k * scale).transpose(-2, -1)
    return torch.softmax(logits.float(), dim=-1).type(logits.dtype)


class PerceiverAttention(nn.Module):
    """IDFormer layer: latents attend to [context ; latents]."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)  # context
        self.norm2 = nn.LayerNorm(dim)  # latents
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, context: Tensor, latents: Tensor) -> Tensor:
        # context (B, Lc, dim), latents (B, Lq, dim) -> (B, Lq, dim)
        context, latents = self.norm1(context), self.norm2(latents)
        q = split_heads(self.to_q(latents), self.heads)
        k, v = self.to_kv(torch.cat((context, latents), dim=-2)).chunk(2, dim=-1)
        probs = scaled_attention_probs(q, split_heads(k, self.heads))
        return self.to_out(merge_heads(probs @ split_heads(v, self.heads)))


class PerceiverAttentionCA(nn.Module):
    """Identity cross-attention: image tokens (queries) attend to id tokens (keys/values). No biases."""

    def __init__(self, dim: int = 3072, dim_head: int = 128, heads: int = 16, kv_dim: int = 2048) -> None:
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(kv_dim)  # id tokens
        self.norm2 = nn.LayerNorm(dim)  # image tokens
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(kv_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def attend(self, id_tokens: Tensor, image_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """The attention before the output projection.

        id_tokens (B, K, kv_dim), image_tokens (B, N, dim)
        -> heads_out (B, N, heads*dim_head), probs (B, heads, N, K)
        """
        id_tokens, image_tokens = self.norm1(id_tokens), self.norm2(image_tokens)
        q = split_heads(self.to_q(image_tokens), self.heads)
        k, v = self.to_kv(id_tokens).chunk(2, dim=-1)
        probs = scaled_attention_probs(q, split_heads(k, self.heads))
        return merge_heads(probs @ split_heads(v, self.heads)), probs

    def forward(self, id_tokens: Tensor, image_tokens: Tensor) -> Tensor:
        # (B, K, kv_dim), (B, N, dim) -> (B, N, dim): the residual PuLID adds to the image tokens
        return self.to_out(self.attend(id_tokens, image_tokens)[0])


class IDFormer(nn.Module):
    """Perceiver over [ArcFace tokens ; ViT features] -> num_queries id tokens.

    The 5 ViT feature scales enter in order, each through its own mapping, each read by depth/5 layers.
    """

    def __init__(self, config: PuLIDConfig) -> None:
        super().__init__()
        c = config
        if c.depth % c.num_vit_features:
            raise ValueError(f"IDFormer depth {c.depth} must be a multiple of {c.num_vit_features}")
        self.num_id_token, self.dim, self.num_queries = c.num_id_token, c.dim, c.num_queries
        self.layers_per_scale = c.depth // c.num_vit_features
        scale = c.dim**-0.5
        self.latents = nn.Parameter(torch.randn(1, c.num_queries, c.dim) * scale)
        self.proj_out = nn.Parameter(torch.randn(c.dim, c.output_dim) * scale)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(c.dim, c.dim_head, c.heads), feed_forward(c.dim, c.ff_mult)])
            for _ in range(c.depth)
        )
        for i in range(c.num_vit_features):
            setattr(self, f"mapping_{i}", mlp_mapping(c.vit_dim, c.mapping_dim, c.dim))
        self.id_embedding_mapping = mlp_mapping(c.id_dim, c.mapping_dim, c.dim * c.num_id_token)

    def forward(self, id_embedding: Tensor, vit_hidden: list[Tensor]) -> Tensor:
        # id_embedding (B, id_dim), vit_hidden 5 x (B, L, vit_dim) -> id tokens (B, num_queries, output_dim)
        id_tokens = self.id_embedding_mapping(id_embedding).reshape(-1, self.num_id_token, self.dim)
        latents = torch.cat((self.latents.repeat(id_embedding.shape[0], 1, 1), id_tokens), dim=1)
        for i, features in enumerate(vit_hidden):
            context = torch.cat((id_tokens, getattr(self, f"mapping_{i}")(features)), dim=1)
            start = i * self.layers_per_scale
            for layer in self.layers[start : start + self.layers_per_scale]:
                attn, ff = cast(nn.ModuleList, layer)
                latents = attn(context, latents) + latents
                latents = ff(latents) + latents
        return latents[:, : self.num_queries] @ self.proj_out


class PuLIDAdapter(nn.Module):
    """Everything in a pulid_flux checkpoint: the encoder and the injection-point cross-attentions."""

    def __init__(self, config: PuLIDConfig | None = None) -> None:
        super().__init__()
        self.config = config or PuLIDConfig()
        c = self.config
        self.pulid_encoder = IDFormer(c)
        self.pulid_ca = nn.ModuleList(
            PerceiverAttentionCA(c.ca_dim, c.ca_dim_head, c.ca_heads, c.output_dim) for _ in range(c.num_ca)
        )

    def encode(self, id_embedding: Tensor, vit_hidden: list[Tensor]) -> Tensor:
        return self.pulid_encoder(id_embedding, vit_hidden)

    def identity_attention(self, index: int) -> PerceiverAttentionCA:
        return cast(PerceiverAttentionCA, self.pulid_ca[index])
