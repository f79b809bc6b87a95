"""No-reference image scores: the LAION aesthetic head on CLIP ViT-L/14, and MUSIQ through pyiqa."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from idgen.errors import IdgenError
from idgen.models.checkpoint import flatten_state_dict, load_strict, read_state_dict


class LaionAesthetic:
    """LAION's linear aesthetic predictor (sa_0_4_vit_l_14_linear.pth: keys weight (1, 768), bias (1,)) on
    the L2-normalised CLIP ViT-L/14 image embedding; reported / 10 as IBench does."""

    name = "aesthetic"

    def __init__(self, head: nn.Linear, clip: Any) -> None:
        self.head, self.clip = head.eval(), clip

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], clip: Any) -> LaionAesthetic:
        state = flatten_state_dict(read_state_dict(path), str(path))
        weight = state.get("weight")
        dim = int(weight.shape[-1]) if weight is not None and weight.dim() == 2 else 768
        head = nn.Linear(dim, 1)
        load_strict(head, state, str(path), "LAION aesthetic head")
        return cls(head, clip)

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image]) -> Tensor:
        return self.head(self.clip.image_embeds(images)).squeeze(-1) / 10


class Musiq:
    """MUSIQ (pyiqa's `musiq-spaq`, VBench/IBench's choice) / 100. pyiqa gets the image as a [0, 1] tensor
    at its own resolution; IBench's code appears to feed raw 0-255 frames, so absolute numbers may differ."""

    name = "iq"

    def __init__(self, device: str = "cpu", metric: str = "musiq-spaq") -> None:
        try:
            import pyiqa
        except ImportError:
            raise IdgenError("metric iq needs pyiqa: pip install pyiqa") from None
        self.metric = pyiqa.create_metric(metric, device=device)

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image]) -> Tensor:
        values = []
        for image in images:
            x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
            values.append(float(self.metric(x[None])) / 100)
        return torch.tensor(values)
