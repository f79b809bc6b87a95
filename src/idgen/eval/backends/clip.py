"""CLIP through transformers (CLIP ViT-L/14 for IBench), with CLIP's own preprocessing in torch/PIL.

IBench: resize the shorter side to 224 (bicubic), centre crop 224, CLIP mean/std; prompts truncated to
the text tower's 77 positions. No torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from idgen.errors import IdgenError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def centre_crop_box(size: tuple[int, int], side: int) -> tuple[float, float, float, float]:
    """The square CLIP sees, in original pixels: shorter side resized to `side`, then a centre crop."""
    w, h = size
    s = min(w, h)
    left, top = (w - s) / 2, (h - s) / 2
    return left, top, left + s, top + s


def preprocess(images: Sequence[Image.Image], side: int) -> Tensor:
    """(B, 3, side, side) normalised CLIP input."""
    out = []
    for image in images:
        image = image.convert("RGB")
        w, h = image.size
        scale = side / min(w, h)
        resized = image.resize(
            (max(side, round(w * scale)), max(side, round(h * scale))), Image.Resampling.BICUBIC
        )
        left = (resized.width - side) // 2
        top = (resized.height - side) // 2
        crop = resized.crop((left, top, left + side, top + side))
        out.append(torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1))
    x = torch.stack(out)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    return (x - mean) / std


class HFCLIP:
    """ImageTextModel over a transformers CLIPModel: projected, L2-normalised embeddings; last-layer patch
    tokens (after the vision tower's post-layernorm) for patch-space contamination."""

    def __init__(
        self, model: Any, tokenizer: Any, name: str, device: str = "cpu", batch_size: int = 32
    ) -> None:
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.device, self.batch_size = device, batch_size
        self.side = int(model.config.vision_config.image_size)
        self.max_tokens = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def from_pretrained(
        cls,
        source: str = "openai/clip-vit-large-patch14",
        device: str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> HFCLIP:
        from transformers import AutoTokenizer, CLIPModel

        try:
            model = CLIPModel.from_pretrained(source, torch_dtype=dtype or torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except OSError as e:
            raise IdgenError(f"cannot load CLIP model {source!r}: {str(e).splitlines()[0]}") from None
        model = model.to(device)  # type: ignore[arg-type]
        return cls(model, tokenizer, name=str(source).rstrip("/").split("/")[-1], device=device)

    def _pixels(self, images: Sequence[Image.Image]) -> Tensor:
        dtype = next(self.model.parameters()).dtype
        return preprocess(images, self.side).to(self.device, dtype)

    @torch.inference_mode()
    def image_embeds(self, images: Sequence[Image.Image]) -> Tensor:
        out = []
        for i in range(0, len(images), self.batch_size):
            vision = self.model.vision_model(pixel_values=self._pixels(images[i : i + self.batch_size]))
            out.append(F.normalize(self.model.visual_projection(vision.pooler_output).float(), dim=-1))
        return torch.cat(out).cpu()

    @torch.inference_mode()
    def text_embeds(self, texts: Sequence[str]) -> Tensor:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        text = self.model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return F.normalize(self.model.text_projection(text.pooler_output).float(), dim=-1).cpu()

    @torch.inference_mode()
    def patch_embeds(self, images: Sequence[Image.Image]) -> tuple[Tensor, int]:
        vision = self.model.vision_model(pixel_values=self._pixels(images))
        tokens = self.model.vision_model.post_layernorm(vision.last_hidden_state[:, 1:]).float().cpu()
        return tokens, round(tokens.shape[1] ** 0.5)  # (B, g*g, C)

    def view_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        return centre_crop_box(size, self.side)
