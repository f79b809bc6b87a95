"""CLIP through transformers (ViT-L/14 for IBench) with IBench's preprocessing, in torch (no torchvision).

IBench (typemovie/IBench, clipeval.py) loads images as float tensors and applies OpenAI CLIP's transforms
to them: Resize(224, bicubic) of the shorter side, CenterCrop(224), CLIP mean/std. On tensors torchvision
resizes with `F.interpolate`, so we do exactly that: float pixels, bicubic, no uint8 rounding, and
torchvision's size rules (longer side truncated with int(), crop offset int(round(.))). Prompts are
truncated to the text tower's positions (77: [SOT] + 75 tokens + [EOT]), as clip.tokenize(truncate=True).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from idgen.errors import IdgenError

__all__ = ["CLIP_MEAN", "CLIP_STD", "HFCLIP", "ClipPreprocess"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipPreprocess:
    """Shorter side -> `resize` (bicubic), centre crop `crop` x `crop`, normalise with mean/std.

    antialias: True for CLIP-T / CLIP-I (torchvision >= 0.17 antialiases tensor resizes by default, and
    it matches PIL's bicubic); the aesthetic score uses False, as IBench's (VBench's) code does.
    """

    resize: int = 224
    crop: int = 224
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.crop > self.resize:
            raise IdgenError(f"CLIP preprocessing: crop {self.crop} is larger than the resize {self.resize}")

    @classmethod
    def from_config(cls, config: dict[str, Any] | None, image_size: int) -> ClipPreprocess:
        """From a transformers preprocessor_config.json; CLIP's own values where it is absent."""
        config = config or {}
        crop = _side(config.get("crop_size")) or image_size
        resize = _side(config.get("size")) or crop
        mean = tuple(float(v) for v in config.get("image_mean", CLIP_MEAN))
        std = tuple(float(v) for v in config.get("image_std", CLIP_STD))
        return cls(resize=resize, crop=crop, mean=mean, std=std)

    def geometry(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(resized width, resized height, crop left, crop top) for an image of size (w, h)."""
        w, h = size
        # torchvision's Resize(int): the shorter side becomes `resize`, the longer one is truncated.
        if w <= h:
            new_w, new_h = self.resize, int(self.resize * h / w)
        else:
            new_w, new_h = int(self.resize * w / h), self.resize
        # torchvision's CenterCrop rounds the offset (Python's round: halves go to even).
        return new_w, new_h, round((new_w - self.crop) / 2.0), round((new_h - self.crop) / 2.0)

    def __call__(self, images: Sequence[Image.Image]) -> Tensor:
        """(B, 3, crop, crop) float32, normalised."""
        out = []
        for image in images:
            new_w, new_h, left, top = self.geometry(image.size)
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
            x = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # (1, 3, H, W)
            if (new_w, new_h) != image.size:
                x = F.interpolate(
                    x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=self.antialias
                )
            out.append(x[0, :, top : top + self.crop, left : left + self.crop])
        mean = torch.tensor(self.mean)[:, None, None]
        std = torch.tensor(self.std)[:, None, None]
        return (torch.stack(out) - mean) / std

    def view_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The crop in original image pixels (left, top, right, bottom), from the exact resize factors."""
        w, h = size
        new_w, new_h, left, top = self.geometry(size)
        sx, sy = w / new_w, h / new_h
        return left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy


def _side(value: Any) -> int | None:
    # preprocessor configs store sizes as an int, {"shortest_edge": n} or {"height": n, "width": n}.
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        side = value.get("shortest_edge", value.get("height"))
        return int(side) if side is not None else None
    return None


def _preprocessor_config(source: str) -> dict[str, Any] | None:
    """preprocessor_config.json of a local folder or a (cached) hub repo; None when there is none."""
    local = Path(source)
    if local.is_dir():
        path = local / "preprocessor_config.json"
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

        try:
            path = Path(hf_hub_download(source, "preprocessor_config.json"))
        except (EntryNotFoundError, HfHubHTTPError, OSError, ValueError):
            return None
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise IdgenError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    return config if isinstance(config, dict) else None


class HFCLIP:
    """ImageTextModel over a transformers CLIPModel.

    image_embeds / text_embeds: projected and L2-normalised (what CLIP-T / CLIP-I take cosines of).
    patch_embeds: last-layer patch tokens (class token dropped) passed through the vision tower's
    post-layernorm, the normalisation the pooled token gets before the projection; this keeps a few
    large-magnitude residual channels from dominating patch cosines. Not projected (C = vision width).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        preprocess: ClipPreprocess | None = None,
        device: str = "cpu",
        batch_size: int = 32,
    ) -> None:
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.device, self.batch_size = device, batch_size
        vision = model.config.vision_config
        image_size, patch_size = int(vision.image_size), int(vision.patch_size)
        self.preprocess = preprocess or ClipPreprocess.from_config(None, image_size)
        if self.preprocess.crop != image_size:
            crop = self.preprocess.crop
            raise IdgenError(f"CLIP {name}: preprocessing crops {crop}, the model takes {image_size}")
        self.grid = image_size // patch_size
        self.embed_dim = int(model.config.projection_dim)
        self.max_tokens = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def from_pretrained(
        cls,
        source: str = "openai/clip-vit-large-patch14",
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        batch_size: int = 32,
    ) -> HFCLIP:
        """A local folder or hub id (the hub cache is used; nothing is fetched when offline)."""
        from transformers import AutoTokenizer, CLIPModel

        try:
            model: Any = CLIPModel.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise IdgenError(f"cannot load CLIP model {source!r}: {str(e).splitlines()[0]}") from None
        model = model.to(device=device, dtype=dtype or torch.float32)
        image_size = int(model.config.vision_config.image_size)
        preprocess = ClipPreprocess.from_config(_preprocessor_config(source), image_size)
        name = str(source).rstrip("/").split("/")[-1]
        return cls(model, tokenizer, name, preprocess, device=device, batch_size=batch_size)

    def _vision(self, images: Sequence[Image.Image], preprocess: ClipPreprocess) -> Any:
        dtype = next(self.model.parameters()).dtype
        return self.model.vision_model(pixel_values=preprocess(images).to(self.device, dtype))

    @torch.inference_mode()
    def encode_images(
        self, images: Sequence[Image.Image], preprocess: ClipPreprocess | None = None
    ) -> Tensor:
        """(B, D) unit image embeddings; `preprocess` overrides the default (the aesthetic score's)."""
        preprocess = preprocess or self.preprocess
        out = []
        for i in range(0, len(images), self.batch_size):
            pooled = self._vision(images[i : i + self.batch_size], preprocess).pooler_output  # (b, width)
            out.append(F.normalize(self.model.visual_projection(pooled).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    def image_embeds(self, images: Sequence[Image.Image]) -> Tensor:
        return self.encode_images(images)

    @torch.inference_mode()
    def text_embeds(self, texts: Sequence[str]) -> Tensor:
        """(B, D) unit text embeddings; longer prompts keep their first max_tokens tokens (with EOT)."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            text = self.model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            out.append(F.normalize(self.model.text_projection(text.pooler_output).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    @torch.inference_mode()
    def patch_embeds(self, images: Sequence[Image.Image]) -> tuple[Tensor, int]:
        """((B, g*g, C) post-layernormed patch tokens in row-major grid order, g)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            hidden = self._vision(images[i : i + self.batch_size], self.preprocess).last_hidden_state
            out.append(self.model.vision_model.post_layernorm(hidden[:, 1:]).float().cpu())  # drop class
        width = int(self.model.config.vision_config.hidden_size)
        return (torch.cat(out) if out else torch.zeros(0, self.grid**2, width)), self.grid

    def view_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        return self.preprocess.view_box(size)
