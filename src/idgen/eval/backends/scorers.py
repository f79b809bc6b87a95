"""No-reference image scores: the LAION aesthetic head on CLIP ViT-L/14, and MUSIQ (SPAQ) through pyiqa."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from idgen.errors import IdgenError
from idgen.eval.backends.clip import HFCLIP
from idgen.eval.models import ImageTextModel
from idgen.models.checkpoint import load_strict, read_state_dict

__all__ = ["LaionAesthetic", "Musiq"]


def _real_clip(clip: ImageTextModel | None) -> HFCLIP:
    # The head was trained on OpenAI CLIP ViT-L/14 embeddings; a stand-in model gives meaningless scores.
    if not isinstance(clip, HFCLIP):
        got = "none" if clip is None else repr(clip.name)
        raise IdgenError(f"metric aesthetic needs the real CLIP ViT-L/14 (HFCLIP); got {got}")
    return clip


class LaionAesthetic:
    """LAION's linear aesthetic predictor on the L2-normalised CLIP ViT-L/14 image embedding, / 10.

    The public head (LAION-AI/aesthetic-predictor, sa_0_4_vit_l_14_linear.pth) is a plain nn.Linear(768, 1)
    state dict: keys `weight` (1, 768) and `bias` (1,); IBench loads it strictly the same way.
    antialias=False reproduces IBench's (VBench's) resize for this metric; CLIP-T/I use True.
    """

    name = "aesthetic"

    def __init__(self, head: nn.Linear, clip: ImageTextModel | None, antialias: bool = False) -> None:
        clip = _real_clip(clip)
        if head.in_features != clip.embed_dim or head.out_features != 1:
            raise IdgenError(
                f"aesthetic head maps {head.in_features} -> {head.out_features}; "
                f"CLIP {clip.name} embeds to {clip.embed_dim} (the LAION head needs ViT-L/14: 768 -> 1)"
            )
        self.head, self.clip = head.eval(), clip
        self.preprocess = dataclasses.replace(clip.preprocess, antialias=antialias)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], clip: ImageTextModel | None, antialias: bool = False
    ) -> LaionAesthetic:
        """Strict load; a wrong key or shape raises CheckpointError naming it."""
        head = nn.Linear(_real_clip(clip).embed_dim, 1)
        load_strict(head, read_state_dict(path), str(path), "LAION aesthetic head")
        return cls(head, clip, antialias)

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image]) -> Tensor:
        embeds = self.clip.encode_images(images, self.preprocess)  # (B, 768), unit norm
        return self.head(embeds).squeeze(-1) / 10  # (B,)


MUSIQ_MAX_SIDE = 512  # VBench's "longer" mode: frames whose longer side exceeds it are downscaled to it


class Musiq:
    """MUSIQ with the SPAQ checkpoint, as IBench and VBench build it (pyiqa's MUSIQ arch), score / 100.

    mode "vbench" (default): VBench's intended input, longer side downscaled to 512 (bilinear, no
    antialias, as its torchvision Resize on tensors), values in [0, 1]. mode "ibench_raw": what IBench's
    imaging_quality.py actually runs. It prepares that tensor, then feeds the raw 0-255 full-resolution
    frames instead. GroupNorm cancels the x255 scale, but not the constant offset at each patch's
    zero-padded borders, and MUSIQ's native-resolution scale differs: absolute IQ numbers from the two
    modes are not interchangeable (ibench.md: check before comparing with published IQ).
    weights: a local musiq_spaq_ckpt-358bb6af.pth; None lets pyiqa fetch (and cache) the SPAQ checkpoint.
    """

    name = "iq"

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        mode: Literal["vbench", "ibench_raw"] = "vbench",
    ) -> None:
        if mode not in ("vbench", "ibench_raw"):
            raise IdgenError(f"metric iq: unknown MUSIQ input mode {mode!r} (vbench or ibench_raw)")
        try:
            from pyiqa.archs.musiq_arch import MUSIQ
        except ImportError as e:
            raise IdgenError(f"metric iq needs pyiqa: pip install 'idgen[iq]' ({e})") from None
        if weights is not None and not os.path.isfile(weights):
            raise IdgenError(f"metric iq: MUSIQ weights not found: {weights}")
        # A local checkpoint path skips pyiqa's download; num_class stays 1 (a MOS regressor), as for SPAQ.
        net: Any = MUSIQ(pretrained_model_path=str(weights)) if weights else MUSIQ(pretrained="spaq")
        self.net = net.to(device).eval()
        self.device, self.mode = device, mode

    def _frame(self, image: Image.Image) -> Tensor:
        """(1, 3, H, W) float on the scale the mode feeds MUSIQ."""
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3) in 0-255
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        if self.mode == "ibench_raw":
            return x
        h, w = x.shape[-2:]
        if max(h, w) > MUSIQ_MAX_SIDE:
            scale = MUSIQ_MAX_SIDE / max(h, w)
            size = (int(scale * h), int(scale * w))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        return x / 255.0

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image]) -> Tensor:
        # One image at a time: sizes may differ, and MUSIQ's multi-scale patching is per image anyway.
        values = [float(self.net(self._frame(image).to(self.device)).reshape(-1)[0]) for image in images]
        return torch.tensor(values) / 100  # (B,)
