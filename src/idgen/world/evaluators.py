"""Evaluator models of the demo world: a tiny CLIP, a face recogniser, a face segmenter and an attribute
classifier.

They stand in for CLIP ViT-L/14 (CLIP-T, CLIP-I, scene classification), antelopev2 (FaceSim) and the face
detector (face regions) when the harness runs offline on the demo world. They are independent of the
generator: their own seeds, their own architectures, trained only on rendered images.

- `WorldCLIP`: transformers' `CLIPModel` with a tiny config, saved with `save_pretrained` next to the
  world's tokenizer and a `preprocessor_config.json`, so `CLIPModel.from_pretrained(folder)` and
  `PreTrainedTokenizerFast.from_pretrained(folder)` load it like openai/clip-vit-large-patch14.
- `FaceRecognizer`: a small ResNet on a square face crop (32x32), 64-d L2-normalised embedding, trained with
  an ArcFace margin over the 1,000 training identities.
- `FaceSegmenter`: a small U-Net, 64x64 image -> 64x64 face logits, trained with BCE + Dice on the
  renderer's exact face masks, plus face-free images (scene backgrounds and studio backdrops).
- `AttributeClassifier`: a small CNN on a wider square face crop (40x40, hair and glasses in), one head per
  identity attribute of `render.ATTRIBUTES`, trained with cross-entropy on the renderer's ground truth of the
  training identities. It reads the likeness a person would name (hair colour, hairstyle, skin tone, glasses,
  facial hair); brows and nose are a pixel or two at 64 px and stay near chance.

Images everywhere are float tensors (B, 3, 64, 64) in [0, 1]; boxes are (left, top, right, bottom) pixels,
right/bottom exclusive, like `Render.face_box`. `train_evaluators` trains all four (resumable, through
`idgen.training.Trainer`) with augmentation (blur, down/up-sampling, noise, colour jitter, +-2 px shifts) so
they hold up on a small diffusion model's blurrier images, and returns validation numbers measured on the
100 held-out test identities. The attribute classifier trains last, from its own seed in a forked RNG, so the
other three come out exactly as they did before it existed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idgen.errors import CheckpointError
from idgen.io import atomic_folder, atomic_output, atomic_write_bytes, atomic_write_text, widen_to_umask
from idgen.models.checkpoint import load_strict, read_config, read_state_dict
from idgen.training import TrainConfig, Trainer
from idgen.world import backgrounds as bg
from idgen.world.bundle import verify_shipped
from idgen.world.captions import (
    BACKGROUND_PHRASES,
    CLOTHING_TEMPLATES,
    CLOTHING_WORDS,
    LIGHTING_PHRASES,
    POSITION_PHRASES,
    SUBJECTS,
    TEMPLATES,
    assemble,
    clothing_phrase,
    pick,
)
from idgen.world.render import (
    ATTRIBUTES,
    BACKGROUNDS,
    CLOTHING_NAMES,
    FRAMINGS,
    LIGHTING_NAMES,
    LIGHTINGS,
    POSITIONS,
    SIZE,
    Scene,
    render,
    render_reference,
    test_identities,
    train_identities,
)
from idgen.world.tokenizer import MODEL_MAX_LENGTH, build_tokenizer, save_tokenizer

if TYPE_CHECKING:
    from transformers import CLIPModel, PreTrainedTokenizerFast

ASSETS_DIR = Path(__file__).parent / "assets" / "evaluators"
CLIP_DIR, FACE_DIR, SEGMENTER_DIR, ATTRIBUTES_DIR = "clip", "face", "segmenter", "attributes"
WEIGHTS_NAME, CONFIG_NAME = "model.safetensors", "config.json"

# The zero-shot scene prompts: "a photo of a person" + the canonical phrase of each scene.
SCENE_PROMPTS: tuple[str, ...] = tuple(f"a photo of a person {BACKGROUND_PHRASES[b][0]}" for b in BACKGROUNDS)


def default_folder(name: str) -> Path:
    """The shipped asset folder of evaluator `name` ("clip", "face" or "segmenter")."""
    return ASSETS_DIR / name


def _as_batch(images: Tensor, size: int | None = None) -> Tensor:
    if images.ndim != 4 or images.shape[1] != 3 or (size is not None and images.shape[2:] != (size, size)):
        want = f"(B, 3, {size}, {size})" if size else "(B, 3, H, W)"
        raise ValueError(f"expected float images of shape {want} in [0, 1], got {tuple(images.shape)}")
    return images.float()


# ---------------------------------------------------------------------------------------------------------
# Tiny CLIP.
# ---------------------------------------------------------------------------------------------------------
def clip_config(vocab_size: int | None = None) -> Any:
    """The tiny CLIPConfig: ViT 64 px / patch 8 (8x8 tokens), 96 wide, 4 layers; text 96 wide, 3 layers.

    eos_token_id is the tokenizer's `</s>` (1): CLIP pools the text at the first eos token."""
    from transformers import CLIPConfig

    tok = build_tokenizer()
    text = {
        "vocab_size": vocab_size or len(tok),
        "hidden_size": 96,
        "intermediate_size": 384,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": MODEL_MAX_LENGTH,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    vision = {
        "image_size": SIZE,
        "patch_size": 8,
        "hidden_size": 96,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_channels": 3,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


@dataclass(frozen=True)
class PixelNorm:
    """The image normalisation of WorldCLIP (stored in preprocessor_config.json): roughly the channel
    statistics of the renders."""

    mean: tuple[float, float, float] = (0.45, 0.45, 0.42)
    std: tuple[float, float, float] = (0.25, 0.24, 0.25)

    def __call__(self, images: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    @classmethod
    def from_folder(cls, folder: Path) -> PixelNorm:
        proc = json.loads((folder / "preprocessor_config.json").read_text())
        mean, std = (tuple(float(v) for v in proc[k]) for k in ("image_mean", "image_std"))
        if len(mean) != 3 or len(std) != 3:
            raise CheckpointError(f"{folder / 'preprocessor_config.json'}: image_mean/std need 3 values")
        return cls((mean[0], mean[1], mean[2]), (std[0], std[1], std[2]))

    def processor_config(self) -> dict[str, Any]:
        # A CLIPImageProcessor config: 64 px, no crop, so AutoImageProcessor reproduces clip_pixel_values.
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": SIZE},
            "resample": 3,
            "do_center_crop": False,
            "crop_size": {"height": SIZE, "width": SIZE},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }


class WorldCLIP:
    """The evaluator CLIP: embeddings of images and texts, zero-shot scene classification."""

    def __init__(self, model: CLIPModel, tokenizer: PreTrainedTokenizerFast, norm: PixelNorm) -> None:
        self.model, self.tokenizer, self.norm = model.eval(), tokenizer, norm
        self._scene_text: Tensor | None = None

    @classmethod
    def random(cls, seed: int = 0) -> WorldCLIP:
        from transformers import CLIPModel

        torch.manual_seed(seed)
        return cls(CLIPModel(clip_config()), build_tokenizer(), PixelNorm())

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None) -> WorldCLIP:
        """Load model, tokenizer and normalisation from `folder` (default: the shipped asset); strict."""
        from transformers import CLIPModel, PreTrainedTokenizerFast

        folder = Path(folder) if folder is not None else default_folder(CLIP_DIR)
        verify_shipped(folder)
        for name in (CONFIG_NAME, WEIGHTS_NAME, "tokenizer.json", "preprocessor_config.json"):
            if not (folder / name).is_file():
                raise CheckpointError(f"evaluator CLIP: missing file {folder / name}")
        loaded: Any = CLIPModel.from_pretrained(str(folder), output_loading_info=True)
        model, info = loaded
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            if info.get(kind):
                key = sorted(info[kind])[0]
                raise CheckpointError(
                    f"{folder / WEIGHTS_NAME} is not an evaluator CLIP: {kind[:-5]} {key!r}"
                )
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
        return cls(model, tokenizer, PixelNorm.from_folder(folder))

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.model.save_pretrained(str(folder))
        widen_to_umask([folder])  # transformers writes its weights through safetensors' private temp file
        save_tokenizer(folder)
        text = json.dumps(self.norm.processor_config(), indent=2) + "\n"
        atomic_write_text(folder / "preprocessor_config.json", text)

    def pixel_values(self, images: Tensor) -> Tensor:
        """Float [0, 1] images (B, 3, 64, 64) -> normalised CLIP input (what CLIPImageProcessor gives)."""
        return self.norm(_as_batch(images, SIZE))

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        return dict(self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt"))

    def _image_features(self, images: Tensor) -> Tensor:
        # Same maths as CLIPModel.get_image_features, whose return type changed between transformers 4 and 5.
        out = self.model.vision_model(pixel_values=self.pixel_values(images))
        return self.model.visual_projection(out.pooler_output)

    def _text_features(self, batch: dict[str, Tensor]) -> Tensor:
        out = self.model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return self.model.text_projection(out.pooler_output)

    @torch.inference_mode()
    def image_embeds(self, images: Tensor) -> Tensor:
        """(B, 64) L2-normalised image embeddings."""
        return F.normalize(self._image_features(images), dim=-1)

    @torch.inference_mode()
    def text_embeds(self, texts: list[str]) -> Tensor:
        """(B, 64) L2-normalised text embeddings."""
        return F.normalize(self._text_features(self.tokenize(list(texts))), dim=-1)

    @torch.inference_mode()
    def patch_tokens(self, images: Tensor) -> Tensor:
        """(B, 8, 8, 96) last-layer patch tokens (row-major grid of 8x8-pixel patches), for patch-space
        contamination measures."""
        out = self.model.vision_model(pixel_values=self.pixel_values(images))
        tokens = out.last_hidden_state[:, 1:]
        side = math.isqrt(tokens.shape[1])
        return tokens.reshape(tokens.shape[0], side, side, tokens.shape[-1])

    @torch.inference_mode()
    def scene_logits(self, images: Tensor) -> Tensor:
        """(B, 12) cosine similarities to the scene prompts `SCENE_PROMPTS`."""
        if self._scene_text is None:
            self._scene_text = self.text_embeds(list(SCENE_PROMPTS))
        return self.image_embeds(images) @ self._scene_text.T

    def classify_scene(self, images: Tensor) -> Tensor:
        """Scene index (into BACKGROUNDS) per image, zero-shot: LongTensor (B,)."""
        return self.scene_logits(images).argmax(dim=-1)


def clip_pixel_values(images: Tensor, folder: str | Path | None = None) -> Tensor:
    """Normalise float [0, 1] images for the evaluator CLIP, with the mean/std of its preprocessor config."""
    folder = Path(folder) if folder is not None else default_folder(CLIP_DIR)
    return PixelNorm.from_folder(folder)(_as_batch(images, SIZE))


# ---------------------------------------------------------------------------------------------------------
# Plain torch models saved as config.json + model.safetensors.
# ---------------------------------------------------------------------------------------------------------
M = TypeVar("M", bound="_Saved")


class _Saved(nn.Module):
    """save_pretrained / strict from_pretrained for a module built from one dataclass config."""

    model_type: ClassVar[str]
    what: ClassVar[str]
    config_class: ClassVar[type]
    folder_name: ClassVar[str]
    config: Any

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"model_type": self.model_type, **asdict(self.config)}
        atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        # Bytes, then an atomic write: safetensors' own file writer leaves the file private (0600).
        atomic_write_bytes(
            folder / WEIGHTS_NAME, save(state, {"format": "pt", "model_type": self.model_type})
        )

    @classmethod
    def from_pretrained(cls: type[M], folder: str | Path | None = None) -> M:
        """Build from `folder`/config.json and load `folder`/model.safetensors strictly (default folder: the
        shipped asset); a wrong config or key is a CheckpointError naming it."""
        folder = Path(folder) if folder is not None else default_folder(cls.folder_name)
        verify_shipped(folder)
        raw = read_config(folder)
        if raw.pop("model_type", None) != cls.model_type:
            raise CheckpointError(f"{folder / CONFIG_NAME} is not a {cls.what} config (model_type)")
        names = {f.name for f in fields(cls.config_class)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise CheckpointError(f"{folder / CONFIG_NAME}: unknown {cls.what} config key {unknown[0]!r}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        model = cls(cls.config_class(**kwargs))
        path = folder / WEIGHTS_NAME
        load_strict(model, read_state_dict(path), str(path), cls.what)
        return model.eval()


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class _Block(nn.Module):
    """ResNet basic block."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.skip(x))


@dataclass(frozen=True)
class FaceRecognizerConfig:
    channels: tuple[int, ...] = (16, 32, 64, 96)
    embed_dim: int = 64
    crop_size: int = 32
    margin: float = 0.1  # added to each side of the (squared) face box before cropping
    mean: float = 0.5
    std: float = 0.25


def crop_faces(images: Tensor, boxes: Tensor, size: int, margin: float) -> Tensor:
    """Square crops (B, 3, size, size) around `boxes` (B, 4) (l, t, r, b), bilinear, with `margin` of the
    box's larger side added on every side. Square, so a slightly wrong box changes scale, not shape."""
    images, boxes = _as_batch(images), boxes.to(images.device, torch.float32)
    b, _, h, w = images.shape
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).clamp(min=2.0) * (
        1 + 2 * margin
    )
    theta = torch.zeros(b, 2, 3, device=images.device)
    # affine_grid works in [-1, 1] (align_corners=False): pixel x maps to 2x/w - 1.
    theta[:, 0, 0], theta[:, 0, 2] = side / w, 2 * cx / w - 1
    theta[:, 1, 1], theta[:, 1, 2] = side / h, 2 * cy / h - 1
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class _FaceCropModel(_Saved):
    """A model that reads square crops around face boxes (its config has crop_size and margin)."""

    def crops(self, images: Tensor, boxes: Tensor) -> Tensor:
        return crop_faces(images, boxes, self.config.crop_size, self.config.margin)

    def boxed_crops(self, images: Tensor, boxes: Tensor | list[tuple[int, int, int, int]]) -> Tensor:
        """Crops of (B, 3, H, W) `images` around one box (l, t, r, b) per image."""
        boxes_t = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if boxes_t.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {boxes_t.shape[0]} boxes")
        return self.crops(images, boxes_t)


class FaceRecognizer(_FaceCropModel):
    """ResNet-style face embedder: 32x32 crop -> 4 stages (32, 16, 8, 4 px) -> flatten -> 64-d."""

    model_type, what, config_class, folder_name = (
        "idgen-world-face-recognizer",
        "face recogniser",
        FaceRecognizerConfig,
        FACE_DIR,
    )

    def __init__(self, config: FaceRecognizerConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or FaceRecognizerConfig()
        ch = c.channels
        self.stem = _conv_bn(3, ch[0])
        # Every stage halves the resolution (32 -> 16 -> 8 -> 4 px): full-resolution blocks cost most.
        self.stages = nn.Sequential(*[_Block(ch[i - 1], ch[i], 2) for i in range(1, len(ch))])
        side = c.crop_size // 2 ** (len(ch) - 1)
        # ArcFace's "E" head: flatten keeps where on the face each feature is (eyes vs mouth).
        self.head = nn.Sequential(
            nn.BatchNorm2d(ch[-1]),
            nn.Flatten(),
            nn.Dropout(0.1),
            nn.Linear(ch[-1] * side * side, c.embed_dim),
            nn.BatchNorm1d(c.embed_dim),
        )

    def forward(self, crops: Tensor) -> Tensor:
        """Unnormalised embeddings of face crops (B, 3, crop, crop) in [0, 1]."""
        x = (crops - self.config.mean) / self.config.std
        return self.head(self.stages(self.stem(x)))

    @torch.inference_mode()
    def embed(self, images: Tensor, boxes: Tensor | list[tuple[int, int, int, int]]) -> Tensor:
        """(B, 64) L2-normalised identity embeddings of the faces in `boxes` (one box per image)."""
        return F.normalize(self(self.boxed_crops(images, boxes)), dim=-1)


class ArcFaceHead(nn.Module):
    """Additive angular margin (ArcFace): logits s*cos(theta + m) for the true class, s*cos(theta) else."""

    def __init__(self, dim: int, classes: int, s: float = 24.0, m: float = 0.4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.s, self.m = s, m

    def forward(self, embeddings: Tensor, labels: Tensor, m: float | None = None) -> Tensor:
        m = self.m if m is None else m
        cos = F.normalize(embeddings, dim=-1) @ F.normalize(self.weight, dim=-1).T
        target = cos.gather(1, labels[:, None]).clamp(-1 + 1e-6, 1 - 1e-6)
        sin = (1 - target**2).sqrt()
        phi = target * math.cos(m) - sin * math.sin(m)
        # Past theta = pi - m, cos(theta + m) is no longer monotonic: fall back to the CosFace-style penalty.
        phi = torch.where(target > math.cos(math.pi - m), phi, target - math.sin(math.pi - m) * m)
        return self.s * cos.scatter(1, labels[:, None], phi)


# ---------------------------------------------------------------------------------------------------------
# Face segmenter.
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FaceSegmenterConfig:
    channels: tuple[int, ...] = (8, 16, 32, 64)
    threshold: float = 0.5  # face probability
    min_pixels: int = 12  # smaller regions are noise: the smallest demo-world face has ~150 px
    mean: float = 0.5
    std: float = 0.25


class FaceSegmenter(_Saved):
    """U-Net: 64 -> 32 -> 16 -> 8 px encoder, decoder with skips back to 64 px, one logit per pixel."""

    model_type, what, config_class, folder_name = (
        "idgen-world-face-segmenter",
        "face segmenter",
        FaceSegmenterConfig,
        SEGMENTER_DIR,
    )

    def __init__(self, config: FaceSegmenterConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or FaceSegmenterConfig()
        ch = c.channels
        self.down = nn.ModuleList(
            nn.Sequential(_conv_bn(ch[i - 1] if i else 3, ch[i]), _conv_bn(ch[i], ch[i]))
            for i in range(len(ch))
        )
        self.up = nn.ModuleList(
            nn.Sequential(_conv_bn(ch[i + 1] + ch[i], ch[i]), _conv_bn(ch[i], ch[i]))
            for i in reversed(range(len(ch) - 1))
        )
        self.out = nn.Conv2d(ch[0], 1, 1)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 64, 64) face logits of images (B, 3, 64, 64) in [0, 1]."""
        x = (images - self.config.mean) / self.config.std
        skips = []
        for i, block in enumerate(self.down):
            x = block(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = block(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], dim=1))
        return self.out(x)[:, 0]

    @torch.inference_mode()
    def probabilities(self, images: Tensor) -> Tensor:
        return torch.sigmoid(self(_as_batch(images, SIZE)))

    def masks(self, images: Tensor) -> Tensor:
        """(B, 64, 64) bool face masks (all face pixels, before picking the largest region)."""
        return self.probabilities(images) > self.config.threshold

    def face_boxes(self, images: Tensor) -> list[tuple[int, int, int, int] | None]:
        """Per image the box (l, t, r, b) of the largest connected face region, or None when no face."""
        return self.detect(images)[1]

    def detect(self, images: Tensor) -> tuple[Tensor, list[tuple[int, int, int, int] | None]]:
        """`masks(images)` and `face_boxes(images)` from one forward pass."""
        masks = self.masks(images)
        return masks, largest_region_boxes(masks, self.config.min_pixels)


# ---------------------------------------------------------------------------------------------------------
# Attribute classifier.
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttributeClassifierConfig:
    # One head per identity attribute, in render.ATTRIBUTES order, with its number of options.
    attributes: tuple[str, ...] = tuple(ATTRIBUTES)
    options: tuple[int, ...] = tuple(len(v) for v in ATTRIBUTES.values())
    channels: tuple[int, ...] = (16, 32, 64, 96)
    hidden: int = 128
    crop_size: int = 40
    margin: float = 0.4  # wider than the recogniser's: hair, ears and glasses frames lie around the face box
    mean: float = 0.5
    std: float = 0.25


class AttributeClassifier(_FaceCropModel):
    """Small CNN on a wide square face crop (40x40) -> 4 stages (40, 20, 10, 5 px) -> 128-d -> one logit
    vector per identity attribute (`render.ATTRIBUTES`): what a person would name when judging a likeness."""

    model_type, what, config_class, folder_name = (
        "idgen-world-attribute-classifier",
        "attribute classifier",
        AttributeClassifierConfig,
        ATTRIBUTES_DIR,
    )

    def __init__(self, config: AttributeClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or AttributeClassifierConfig()
        if len(c.attributes) != len(c.options):
            raise CheckpointError(
                f"attribute classifier: {len(c.attributes)} attributes, {len(c.options)} sizes"
            )
        ch = c.channels
        self.stem = _conv_bn(3, ch[0])
        self.stages = nn.Sequential(*[_Block(ch[i - 1], ch[i], 2) for i in range(1, len(ch))])
        side = c.crop_size // 2 ** (len(ch) - 1)
        # Flatten, not pooling: where a colour sits (above the face: hair; around the eyes: glasses) matters.
        self.trunk = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.1), nn.Linear(ch[-1] * side * side, c.hidden), nn.ReLU(inplace=True)
        )
        self.heads = nn.ModuleDict(
            {a: nn.Linear(c.hidden, n) for a, n in zip(c.attributes, c.options, strict=True)}
        )

    def forward(self, crops: Tensor) -> dict[str, Tensor]:
        """Logits (B, options) per attribute of face crops (B, 3, crop, crop) in [0, 1]."""
        x = (crops - self.config.mean) / self.config.std
        features = self.trunk(self.stages(self.stem(x)))
        return {name: head(features) for name, head in self.heads.items()}

    @torch.inference_mode()
    def predict(self, images: Tensor, boxes: Tensor | list[tuple[int, int, int, int]]) -> dict[str, Tensor]:
        """The most likely option (LongTensor (B,), an index into `render.ATTRIBUTES[name]`) per attribute,
        of the faces in `boxes` (one box per image)."""
        logits = self(self.boxed_crops(_as_batch(images), boxes))
        return {name: v.argmax(dim=-1) for name, v in logits.items()}


def largest_region_boxes(masks: Tensor, min_pixels: int = 1) -> list[tuple[int, int, int, int] | None]:
    """Bounding box (l, t, r, b; exclusive) of the largest 8-connected region of each (H, W) bool mask;
    None where the largest region has fewer than `min_pixels` pixels."""
    b, h, w = masks.shape
    fg = masks.bool()
    # Label propagation: every pixel takes the largest index in its 3x3 neighbourhood until stable.
    labels = torch.where(fg, torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w), 0.0)
    for _ in range(h * w):
        new = torch.where(fg, F.max_pool2d(labels[:, None], 3, 1, 1)[:, 0], 0.0)
        if torch.equal(new, labels):
            break
        labels = new
    flat = labels.view(b, -1).long()
    counts = torch.zeros(b, h * w + 1, dtype=torch.long).scatter_add_(1, flat, torch.ones_like(flat))
    counts[:, 0] = 0
    best = counts.argmax(dim=1)
    out: list[tuple[int, int, int, int] | None] = []
    for i in range(b):
        if int(counts[i, best[i]]) < max(min_pixels, 1):
            out.append(None)
            continue
        ys, xs = torch.nonzero(labels[i] == best[i], as_tuple=True)
        out.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    return out


# ---------------------------------------------------------------------------------------------------------
# Data: a pool of renders (cached), face-free images, augmentation drawn from the step's generator.
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Pool:
    """Rendered images with their ground truth. scene is -1 for reference photos and face-free images;
    identity is -1 for face-free images (box (0, 0, 0, 0), empty mask)."""

    images: np.ndarray  # (N, 64, 64, 3) uint8
    masks: np.ndarray  # (N, 64, 64) bool
    boxes: np.ndarray  # (N, 4) int
    identity: np.ndarray  # (N,) int
    scene: np.ndarray  # (N, 5) int: background, clothing, lighting, framing, position

    def __len__(self) -> int:
        return len(self.images)

    def select(self, index: np.ndarray) -> Pool:
        return Pool(*(getattr(self, f.name)[index] for f in fields(self)))


def face_free_image(rng: np.random.Generator) -> np.ndarray:
    """A (64, 64, 3) uint8 image with no face: a scene background (random phase and tint) or a backdrop."""
    if rng.random() < 0.75:
        planar, _ = bg.scene_crop(int(rng.integers(len(BACKGROUNDS))), rng)
        tint = np.asarray(LIGHTINGS[LIGHTING_NAMES[int(rng.integers(len(LIGHTING_NAMES)))]], np.float32)
    else:
        planar, _ = bg.backdrop(int(rng.integers(len(bg.BACKDROP_NAMES))))
        tint = np.ones(3, np.float32)
    low = planar.reshape(3, SIZE, bg.SS, SIZE, bg.SS).mean(axis=(2, 4), dtype=np.float32)
    return np.clip(np.rint(low.transpose(1, 2, 0) * tint), 0, 255).astype(np.uint8)


def build_pool(
    identities: list[int], renders_per_identity: int, references: bool, face_free: int, seed: int, test: bool
) -> Pool:
    """Renders of `identities` (indices into the train or test split) in uniformly random scenes (all
    scenes, held-out caption pairs included: an evaluator must judge those too), optionally one reference
    photo each, plus `face_free` images."""
    people = test_identities() if test else train_identities()
    images, masks, boxes, ident, scenes = [], [], [], [], []
    for i in identities:
        for k in range(renders_per_identity + int(references)):
            rng = np.random.default_rng([seed, i, k])
            if k < renders_per_identity:
                scene = Scene.random(rng)
                r = render(people[i], scene, seed=int(rng.integers(2**31)))
                scenes.append(list(scene.to_dict().values()))
            else:
                r = render_reference(people[i], seed=int(rng.integers(2**31)))
                scenes.append([-1] * 5)
            images.append(r.image)
            masks.append(r.face_mask)
            boxes.append(r.face_box)
            ident.append(i)
    for k in range(face_free):
        images.append(face_free_image(np.random.default_rng([seed, 10**6, k])))
        masks.append(np.zeros((SIZE, SIZE), bool))
        boxes.append((0, 0, 0, 0))
        ident.append(-1)
        scenes.append([-1] * 5)
    return Pool(
        np.stack(images), np.stack(masks), np.asarray(boxes), np.asarray(ident), np.asarray(scenes, np.int64)
    )


def cached_pool(path: Path, **kwargs: Any) -> Pool:
    """`build_pool(**kwargs)`, cached in `path` (.npz, written atomically; rebuilt if arguments differ)."""
    key = json.dumps(kwargs, sort_keys=True)
    if path.is_file():
        with np.load(path) as data:
            if str(data["key"]) == key:
                return Pool(*(data[f.name] for f in fields(Pool)))
    pool = build_pool(**kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, key=np.asarray(key), **{f.name: getattr(pool, f.name) for f in fields(Pool)})
    return pool


def to_tensor(images: np.ndarray) -> Tensor:
    """(B, 64, 64, 3) uint8 -> (B, 3, 64, 64) float [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def _gaussian_kernels(sigma: Tensor, radius: int = 2) -> Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    return k / k.sum(dim=1, keepdim=True)


def augment(
    images: Tensor, g: torch.Generator, masks: Tensor | None = None, boxes: Tensor | None = None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Make renders look like a small diffusion model's output: +-2 px shift (applied to masks and boxes
    too), down/up-sampling, gaussian blur, colour jitter and noise. All randomness from `g`."""
    b, _, h, w = images.shape

    def u(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    shift = torch.randint(-2, 3, (b, 2), generator=g)  # (dx, dy): content moves right/down
    padded = F.pad(images, (2, 2, 2, 2), mode="replicate")
    pm = F.pad(masks.float(), (2, 2, 2, 2)) if masks is not None else None
    out, out_m = [], []
    for i in range(b):
        dx, dy = int(shift[i, 0]), int(shift[i, 1])
        out.append(padded[i, :, 2 - dy : 2 - dy + h, 2 - dx : 2 - dx + w])
        if pm is not None:
            out_m.append(pm[i, 2 - dy : 2 - dy + h, 2 - dx : 2 - dx + w])
    x = torch.stack(out)
    masks = torch.stack(out_m) > 0.5 if masks is not None else None
    if boxes is not None:
        boxes = boxes.float() + shift.repeat(1, 2).float()
    # A 16x16-latent VAE loses the finest detail: half of the time downsample by 2 and back.
    small = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="bilinear", align_corners=False)
    x = torch.where(u(b, 1, 1, 1) < 0.3, small, x)
    sigma = torch.where(u(b) < 0.6, 0.3 + 1.0 * u(b), torch.zeros(b))
    k = _gaussian_kernels(sigma).repeat_interleave(3, dim=0)  # (3B, 5)
    x = F.pad(x.reshape(1, 3 * b, h, w), (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, k[:, None, :, None], groups=3 * b)
    x = F.conv2d(x, k[:, None, None, :], groups=3 * b).reshape(b, 3, h, w)
    gain = (1 + 0.08 * (2 * u(b, 3, 1, 1) - 1)) * (1 + 0.1 * (2 * u(b, 1, 1, 1) - 1))
    x = x * gain + 0.03 * (2 * u(b, 1, 1, 1) - 1)
    x = x + 0.05 * u(b, 1, 1, 1) ** 2 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1), masks, boxes


def partial_caption(scene: Scene, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """A caption of the grammar (its phrases and templates) that states the background and a random subset
    of the other factors, and which factors it states: bool (5,) in `Pool.scene` order (background, clothing,
    lighting, framing, position). A quarter of them state the scene only, as the zero-shot prompts do."""
    stated = np.concatenate([[True], rng.random(4) < 0.6])
    if rng.random() < 0.25:
        stated[1:] = False
    n = scene.names()
    colour = pick(CLOTHING_WORDS[n["clothing_colour"]], rng)
    clothing = clothing_phrase(pick(CLOTHING_TEMPLATES, rng), colour)
    parts = {
        "S": pick(SUBJECTS[scene.framing if stated[3] else None], rng),
        "B": pick(BACKGROUND_PHRASES[n["background"]], rng),
        "C": clothing if stated[1] else None,
        "L": pick(LIGHTING_PHRASES[n["lighting"]], rng) if stated[2] else None,
        "P": pick(POSITION_PHRASES[n["position"]], rng) if stated[4] else None,
    }
    return assemble(TEMPLATES[int(rng.integers(len(TEMPLATES)))], parts), stated


def _np_rng(g: torch.Generator) -> np.random.Generator:
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))


def _sample(pool: Pool, n: int, g: torch.Generator, where: np.ndarray | None = None) -> Pool:
    candidates = np.arange(len(pool)) if where is None else np.flatnonzero(where)
    pick = torch.randint(0, len(candidates), (n,), generator=g).numpy()
    return pool.select(candidates[pick])


# ---------------------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Sizes of one `train_evaluators` run."""

    train_identities: int = 1000
    renders_per_identity: int = 6
    face_free: int = 1200
    test_identities: int = 100
    test_renders: int = 4
    clip: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=1000, lr=1e-3, batch_size=64, warmup=30, weight_decay=0.05)
    )
    face: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=400, lr=3e-3, batch_size=128, warmup=25, weight_decay=5e-4)
    )
    segmenter: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=800, lr=3e-3, batch_size=24, warmup=20, weight_decay=1e-4)
    )
    attributes: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=1000, lr=4e-3, batch_size=64, warmup=25, weight_decay=5e-4)
    )


FULL_PLAN = Plan()
QUICK_PLAN = Plan(
    train_identities=12,
    renders_per_identity=2,
    face_free=8,
    test_identities=6,
    test_renders=2,
    clip=TrainConfig(steps=3, batch_size=8, log_every=1),
    face=TrainConfig(steps=3, batch_size=8, log_every=1),
    segmenter=TrainConfig(steps=3, batch_size=4, log_every=1),
    attributes=TrainConfig(steps=3, batch_size=8, log_every=1),
)
# Seeds of this module's runs (the generator's models use others).
POOL_SEED, CLIP_SEED, FACE_SEED, SEGMENTER_SEED = 0xE7A1, 7101, 7202, 7303
ATTRIBUTE_SEED = 7404


def _with_seed(config: TrainConfig, seed: int) -> TrainConfig:
    return TrainConfig(**{**asdict(config), "seed": seed})


def train_clip(pool: Pool, config: TrainConfig, folder: Path, progress: bool = True) -> WorldCLIP:
    """Symmetric InfoNCE on (augmented render, random partial caption of its scene), learnable logit scale.

    Multi-positive: a caption that leaves a factor out fits every image of the batch that agrees on the
    factors it does state, so "a photo of a person on a beach" is pulled towards every beach image (which is
    what zero-shot classification and CLIP-T ask of it), not pushed away from all but one.

    Hard negatives: a batch is 16 groups of 4 images with the same background, so captions must be told
    apart by the other factors too (in random batches the background alone separates most pairs)."""
    clip = WorldCLIP.random(config.seed)
    model = clip.model
    groups = [i for b in range(len(BACKGROUNDS)) if len(i := np.flatnonzero(pool.scene[:, 0] == b))]
    group = 4

    def step(_: int, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        chosen = torch.randint(0, len(groups), (max(1, config.batch_size // group),), generator=g)
        index = [
            groups[k][torch.randint(0, len(groups[k]), (group,), generator=g).numpy()]
            for k in chosen.tolist()
        ]
        batch = pool.select(np.concatenate(index))
        images = augment(to_tensor(batch.images), g)[0]
        rng = _np_rng(g)
        texts, stated = zip(*(partial_caption(Scene(*map(int, s)), rng) for s in batch.scene), strict=True)
        img = F.normalize(clip._image_features(images), dim=-1)
        txt = F.normalize(clip._text_features(clip.tokenize(list(texts))), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100.0) * img @ txt.T  # (image, caption)
        # fits[i, j]: caption i fits image j (agrees on every factor caption i states).
        agree = batch.scene[:, None, :] == batch.scene[None, :, :]
        fits = torch.as_tensor((agree | ~np.stack(stated)[:, None, :]).all(-1), dtype=torch.float32)
        loss_img = F.cross_entropy(logits, fits.T / fits.T.sum(dim=1, keepdim=True))
        loss_txt = F.cross_entropy(logits.T, fits / fits.sum(dim=1, keepdim=True))
        loss = (loss_img + loss_txt) / 2
        acc = fits.T.gather(1, logits.argmax(1, keepdim=True)).mean()
        return loss, {"acc": float(acc), "scale": float(model.logit_scale.detach().exp())}

    Trainer("evaluator clip", {"clip": model}, model.parameters(), config, folder).fit(step, progress)
    model.eval()
    return clip


def train_face(pool: Pool, config: TrainConfig, folder: Path, progress: bool = True) -> FaceRecognizer:
    """ArcFace over the training identities, on crops of augmented renders around jittered face boxes."""
    torch.manual_seed(config.seed)
    model = FaceRecognizer()
    head = ArcFaceHead(model.config.embed_dim, len(train_identities()))
    people = pool.identity >= 0
    warm = max(1, config.steps // 5)

    def step(i: int, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        batch = _sample(pool, config.batch_size, g, people)
        images, _, boxes = augment(to_tensor(batch.images), g, boxes=torch.as_tensor(batch.boxes))
        assert boxes is not None
        # Box jitter of up to 8% per side: the harness crops around the segmenter's boxes, not exact ones.
        size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        boxes = boxes + 0.08 * size * (2 * torch.rand(boxes.shape, generator=g) - 1)
        labels = torch.as_tensor(batch.identity)
        logits = head(model(model.crops(images, boxes)), labels, m=head.m * min(1.0, (i + 1) / warm))
        loss = F.cross_entropy(logits, labels)
        return loss, {"acc": float((logits.argmax(1) == labels).float().mean())}

    params = [*model.parameters(), *head.parameters()]
    Trainer("evaluator face", {"face": model, "head": head}, params, config, folder).fit(step, progress)
    return model.eval()


def train_segmenter(pool: Pool, config: TrainConfig, folder: Path, progress: bool = True) -> FaceSegmenter:
    """BCE + Dice against the exact face masks; face-free images teach it to return nothing."""
    torch.manual_seed(config.seed)
    model = FaceSegmenter()

    def step(_: int, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        batch = _sample(pool, config.batch_size, g)
        images, masks = augment(to_tensor(batch.images), g, masks=torch.as_tensor(batch.masks))[:2]
        assert masks is not None
        target = masks.float()
        logits = model(images)
        prob = torch.sigmoid(logits)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        inter = (prob * target).sum(dim=(1, 2))
        dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + 1)
        loss = bce + dice.mean()
        iou = ((prob > 0.5) & masks).sum() / ((prob > 0.5) | masks).sum().clamp(min=1)
        return loss, {"bce": float(bce.detach()), "iou": float(iou)}

    Trainer("evaluator segmenter", {"segmenter": model}, model.parameters(), config, folder).fit(
        step, progress
    )
    return model.eval()


def attribute_labels(test: bool = False) -> Tensor:
    """(N, 11) renderer ground truth: row i holds the option indices of train (or test) identity i, in
    `render.ATTRIBUTES` order."""
    people = test_identities() if test else train_identities()
    return torch.tensor([p.as_tuple() for p in people])


def attribute_loss(logits: dict[str, Tensor], labels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over the heads, and each head's accuracy (n_heads,); labels (B, n_heads)."""
    losses = [F.cross_entropy(v, labels[:, k]) for k, v in enumerate(logits.values())]
    hits = [(v.argmax(1) == labels[:, k]).float().mean() for k, v in enumerate(logits.values())]
    return torch.stack(losses).mean(), torch.stack(hits)


def train_attributes(
    pool: Pool, config: TrainConfig, folder: Path, progress: bool = True
) -> AttributeClassifier:
    """Cross-entropy per attribute on wide crops of augmented renders around jittered face boxes, labels
    from the renderer. Its own seed, in a forked RNG: training it leaves no trace on the other evaluators."""
    labels = attribute_labels(test=False)
    people = pool.identity >= 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = AttributeClassifier()

        def step(_step: int, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
            batch = _sample(pool, config.batch_size, g, people)
            images, _, boxes = augment(to_tensor(batch.images), g, boxes=torch.as_tensor(batch.boxes))
            assert boxes is not None
            # The harness crops around the segmenter's boxes: up to 8% jitter per side, as for the recogniser.
            size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
            boxes = boxes + 0.08 * size * (2 * torch.rand(boxes.shape, generator=g) - 1)
            loss, hits = attribute_loss(model(model.crops(images, boxes)), labels[batch.identity])
            return loss, {"acc": float(hits.mean())}

        name = "evaluator attributes"
        Trainer(name, {"attributes": model}, model.parameters(), config, folder).fit(step, progress)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# Validation (held-out test identities, augmented with a fixed generator).
# ---------------------------------------------------------------------------------------------------------
def verification_auc(same: Tensor, different: Tensor) -> float:
    """P(a random same-identity score > a random different-identity score), ties counted half."""
    scores = torch.cat([same, different]).double()
    ranks = torch.empty_like(scores)
    order = scores.argsort()
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # Average ranks over ties.
    uniq, inverse = torch.unique(scores, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    n1, n2 = len(same), len(different)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n2))


# (Pool.scene column, factor, one prompt per option, "{b}" = the background phrase): per-factor zero-shot.
_PERSON = SUBJECTS[None][0]
FACTOR_PROMPTS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "clothing", tuple(f"{_PERSON} {{b}}, wearing a {c} shirt" for c in CLOTHING_NAMES)),
    (2, "lighting", tuple(f"{_PERSON} {{b}} {LIGHTING_PHRASES[n][0]}" for n in LIGHTING_NAMES)),
    (3, "framing", tuple(f"{SUBJECTS[f][0]} {{b}}" for f in range(len(FRAMINGS)))),
    (4, "position", tuple(f"{_PERSON} {{b}}, {POSITION_PHRASES[n][0]}" for n in POSITIONS)),
)


def _batched(fn: Any, images: Tensor, *args: Any, size: int = 256) -> Any:
    outs = [fn(images[i : i + size], *(a[i : i + size] for a in args)) for i in range(0, len(images), size)]
    return torch.cat(outs) if isinstance(outs[0], Tensor) else [x for o in outs for x in o]


def _clip_scores(clip: WorldCLIP, images: Tensor, scenes: Tensor) -> dict[str, float]:
    """Zero-shot accuracies on scene renders: over the 12 `SCENE_PROMPTS`, and per factor (see `validate`)."""
    out: dict[str, float] = {}
    pred = _batched(clip.classify_scene, images)
    out["clip_scene_accuracy"] = float((pred == scenes[:, 0]).float().mean())
    embeds = _batched(clip.image_embeds, images)
    for column, factor, options in FACTOR_PROMPTS:
        texts = [o.format(b=BACKGROUND_PHRASES[b][0]) for b in BACKGROUNDS for o in options]
        text = clip.text_embeds(texts).view(len(BACKGROUNDS), len(options), -1)[scenes[:, 0]]
        pred = torch.einsum("bd,bod->bo", embeds, text).argmax(1)
        out[f"clip_{factor}_accuracy"] = float((pred == scenes[:, column]).float().mean())
    return out


def _segmenter_scores(
    segmenter: FaceSegmenter, images: Tensor, masks: Tensor, face_px: Tensor
) -> tuple[dict[str, float], list[tuple[int, int, int, int] | None]]:
    """IoU on images with a face, empty rate on face-free ones, found rate; and the predicted boxes."""
    prob = _batched(segmenter.probabilities, images)
    pm = prob > segmenter.config.threshold
    inter, union = (pm & masks).sum(dim=(1, 2)).float(), (pm | masks).sum(dim=(1, 2)).float()
    pred_boxes = largest_region_boxes(pm, segmenter.config.min_pixels)
    out = {
        "segmenter_iou": float((inter[face_px] / union[face_px].clamp(min=1)).mean()),
        "segmenter_empty_on_face_free": float(
            np.mean([pred_boxes[i] is None for i in np.flatnonzero(~face_px)])
        ),
        "segmenter_found_face": float(np.mean([pred_boxes[i] is not None for i in np.flatnonzero(face_px)])),
    }
    return out, pred_boxes


def _face_scores(face: FaceRecognizer, images: Tensor, boxes: Tensor, ident: Tensor) -> dict[str, float]:
    """Same- and different-identity cosines of the face embeddings and the verification AUC."""
    emb = _batched(face.embed, images, boxes)
    sim = emb @ emb.T
    upper = torch.triu(torch.ones_like(sim, dtype=torch.bool), diagonal=1)
    same = (ident[:, None] == ident[None]) & upper
    diff = (ident[:, None] != ident[None]) & upper
    return {
        "face_same_cosine": float(sim[same].mean()),
        "face_different_cosine": float(sim[diff].mean()),
        "face_auc": verification_auc(sim[same], sim[diff]),
    }


@torch.no_grad()
def validate(clip: WorldCLIP, face: FaceRecognizer, segmenter: FaceSegmenter, pool: Pool) -> dict[str, float]:
    """Zero-shot CLIP accuracies, segmentation IoU and empty rate, face verification on `pool` (test split).

    clip_scene_accuracy: over the 12 `SCENE_PROMPTS`. clip_<factor>_accuracy: over the options of one factor,
    in prompts that also state the image's true background (as every prompt of the grammar does)."""
    g = torch.Generator().manual_seed(12345)
    images, masks, boxes = augment(
        to_tensor(pool.images), g, masks=torch.as_tensor(pool.masks), boxes=torch.as_tensor(pool.boxes)
    )
    assert masks is not None and boxes is not None
    scenes = torch.as_tensor(pool.scene)
    in_scene = scenes[:, 0] >= 0
    out = _clip_scores(clip, images[in_scene], scenes[in_scene])
    face_px = torch.as_tensor(pool.identity) >= 0
    seg, pred_boxes = _segmenter_scores(segmenter, images, masks, face_px)
    out.update(seg)
    people = np.flatnonzero(face_px)
    ident = torch.as_tensor(pool.identity[people])
    # The harness path: boxes from the segmenter (ground truth where it found none).
    seg_boxes = torch.stack(
        [torch.tensor(pred_boxes[i]) if pred_boxes[i] else boxes[i] for i in people]
    ).float()
    for name, bx in (("gt_box", boxes[people]), ("seg_box", seg_boxes)):
        out.update({f"{k}_{name}": v for k, v in _face_scores(face, images[people], bx, ident).items()})
    return out


def attribute_hits(
    classifier: AttributeClassifier, images: Tensor, boxes: Tensor | list, labels: Tensor
) -> dict[str, Tensor]:
    """Per attribute, bool (B,): the classified option equals `labels` (B, n_heads), in batches of 256."""
    preds = [classifier.predict(images[i : i + 256], boxes[i : i + 256]) for i in range(0, len(images), 256)]
    return {
        name: torch.cat([p[name] for p in preds]) == labels[:, k]
        for k, name in enumerate(classifier.config.attributes)
    }


@torch.no_grad()
def validate_attributes(
    classifier: AttributeClassifier, segmenter: FaceSegmenter, pool: Pool
) -> dict[str, float]:
    """Per-attribute accuracy on the augmented renders of `pool` (test split), around exact face boxes and
    around the segmenter's (the harness path; exact ones where it finds none), and chance (1 / options)."""
    g = torch.Generator().manual_seed(54321)
    people = np.flatnonzero(pool.identity >= 0)
    images, _, boxes = augment(to_tensor(pool.images[people]), g, boxes=torch.as_tensor(pool.boxes[people]))
    assert boxes is not None
    found = _batched(segmenter.face_boxes, images)
    seg_boxes = torch.stack([torch.tensor(b) if b else boxes[i] for i, b in enumerate(found)]).float()
    labels = attribute_labels(test=True)[pool.identity[people]]
    out: dict[str, float] = {}
    for kind, bx in (("gt_box", boxes), ("seg_box", seg_boxes)):
        hits = attribute_hits(classifier, images, bx, labels)
        out.update({f"attribute_{name}_accuracy_{kind}": float(h.float().mean()) for name, h in hits.items()})
    for name, n in zip(classifier.config.attributes, classifier.config.options, strict=True):
        out[f"attribute_{name}_chance"] = 1 / n
    return out


# ---------------------------------------------------------------------------------------------------------
# Entry point.
# ---------------------------------------------------------------------------------------------------------
class _Clock:
    """Records wall and CPU seconds (CPU = one core's share: the cost on an unshared core) per phase."""

    def __init__(self, out: dict[str, float]) -> None:
        self.out, self.wall, self.cpu = out, time.perf_counter(), time.process_time()

    def __call__(self, phase: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.out[f"wall_seconds_{phase}"] = round(wall - self.wall, 2)
        self.out[f"cpu_seconds_{phase}"] = round(cpu - self.cpu, 2)
        self.wall, self.cpu = wall, cpu


def _pools(plan: Plan, run_dir: Path) -> tuple[Pool, Pool]:
    """The training pool and the held-out validation pool, cached under `run_dir`."""
    pool = cached_pool(
        run_dir / "pool-train.npz",
        identities=list(range(plan.train_identities)),
        renders_per_identity=plan.renders_per_identity,
        references=True,
        face_free=plan.face_free,
        seed=POOL_SEED,
        test=False,
    )
    val_pool = cached_pool(
        run_dir / "pool-test.npz",
        identities=list(range(plan.test_identities)),
        renders_per_identity=plan.test_renders,
        references=True,
        face_free=max(8, plan.face_free // 20),
        seed=POOL_SEED + 1,
        test=True,
    )
    return pool, val_pool


def _export(clip: WorldCLIP, face: FaceRecognizer, segmenter: FaceSegmenter, assets_dir: Path) -> None:
    with atomic_folder(assets_dir / CLIP_DIR) as staging:  # several files, swapped in whole
        clip.save_pretrained(staging)
    face.save_pretrained(assets_dir / FACE_DIR)
    segmenter.save_pretrained(assets_dir / SEGMENTER_DIR)


def _validate_exported(assets_dir: Path, pool: Pool) -> dict[str, float]:
    """`validate` on what was written, read through the public loaders."""
    return validate(
        WorldCLIP.from_pretrained(assets_dir / CLIP_DIR),
        FaceRecognizer.from_pretrained(assets_dir / FACE_DIR),
        FaceSegmenter.from_pretrained(assets_dir / SEGMENTER_DIR),
        pool,
    )


@contextmanager
def _one_thread() -> Iterator[None]:
    # The machine is shared; one core is this job's budget.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _attribute_stage(
    plan: Plan, pools: tuple[Pool, Pool], run_dir: Path, assets_dir: Path, progress: bool
) -> dict:
    """Train the attribute classifier (after the other evaluators, from its own seed), write it to
    `assets_dir`/attributes and validate what was written, with the segmenter in `assets_dir`."""
    config = _with_seed(plan.attributes, ATTRIBUTE_SEED)
    model = train_attributes(pools[0], config, run_dir / ATTRIBUTES_DIR, progress)
    model.save_pretrained(assets_dir / ATTRIBUTES_DIR)
    return validate_attributes(
        AttributeClassifier.from_pretrained(assets_dir / ATTRIBUTES_DIR),
        FaceSegmenter.from_pretrained(assets_dir / SEGMENTER_DIR),
        pools[1],
    )


def train_attribute_evaluator(
    work_dir: Path, assets_dir: Path, quick: bool = False, progress: bool = True
) -> dict:
    """The attribute classifier alone (the last part of `train_evaluators`, same pools, seed and result),
    beside evaluators already in `assets_dir`: its numbers are merged into validation.json, others kept."""
    plan = QUICK_PLAN if quick else FULL_PLAN
    run_dir, assets_dir = Path(work_dir) / ("quick" if quick else "full"), Path(assets_dir)
    if not (assets_dir / SEGMENTER_DIR / CONFIG_NAME).is_file():
        raise CheckpointError(
            f"no evaluator segmenter in {assets_dir / SEGMENTER_DIR}: train the evaluators first"
        )
    with _one_thread():
        timings: dict[str, float] = {}
        clock = _Clock(timings)
        pools = _pools(plan, run_dir)
        clock("render")
        metrics = _attribute_stage(plan, pools, run_dir, assets_dir, progress)
        clock("attributes")
    path = assets_dir / "validation.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.update({**metrics, "wall_seconds_attributes": timings["wall_seconds_attributes"],
                   "cpu_seconds_attributes": timings["cpu_seconds_attributes"]})  # fmt: skip
    atomic_write_text(path, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def train_evaluators(work_dir: Path, assets_dir: Path, quick: bool = False, progress: bool = True) -> dict:
    """Train the evaluators (resumable: checkpoints under `work_dir`), write them to `assets_dir`
    (clip/, face/, segmenter/, attributes/, validation.json) and return the validation numbers and timings.
    The attribute classifier trains last, from its own seed, so the other three are as they were without it.

    quick: a few steps on a few renders, same code path (CI smoke run, seconds)."""
    plan = QUICK_PLAN if quick else FULL_PLAN
    run_dir = Path(work_dir) / ("quick" if quick else "full")
    assets_dir = Path(assets_dir)
    with _one_thread():
        timings: dict[str, float] = {}
        clock = _Clock(timings)
        pool, val_pool = _pools(plan, run_dir)
        clock("render")
        clip = train_clip(pool, _with_seed(plan.clip, CLIP_SEED), run_dir / CLIP_DIR, progress)
        clock("clip")
        face = train_face(pool, _with_seed(plan.face, FACE_SEED), run_dir / FACE_DIR, progress)
        clock("face")
        segmenter = train_segmenter(
            pool, _with_seed(plan.segmenter, SEGMENTER_SEED), run_dir / SEGMENTER_DIR, progress
        )
        clock("segmenter")
        _export(clip, face, segmenter, assets_dir)
        clock("export")
        metrics = _validate_exported(assets_dir, val_pool)
        clock("validate")
        metrics.update(_attribute_stage(plan, (pool, val_pool), run_dir, assets_dir, progress))
        clock("attributes")
        result = {**metrics, **timings, "quick": quick}
        atomic_write_text(assets_dir / "validation.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
        return result
