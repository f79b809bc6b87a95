"""What every identity pipeline is, whatever its backbone: the mode names, the interface, the output.

An identity pipeline wraps a stock diffusers pipeline whose denoiser carries hooks (idgen.backbones):

    photo --encode_identity--> IdentityFeatures --adapter--> id tokens --hooks: gated residual--> image

FLUX + PuLID and FLUX + the W+ branch (IdentityFluxPipeline), and SD1.5 + the W+ adapter
(WPlusSD15Pipeline) implement it; `idgen.load(..., backbone=name)` builds any of them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from diffusers.utils import BaseOutput
from PIL import Image

from idgen.backbones.run import Recorder
from idgen.core.gate import MaskPolicy, SpatialMask, UniformMask
from idgen.core.masks import MaskExtractor
from idgen.core.schedule import TemporalSpatialScheduler
from idgen.errors import IdgenError
from idgen.identity.base import IdentityEncoder, IdentityFeatures
from idgen.io import load_image
from idgen.models.checkpoint import DOCTOR_HINT
from idgen.models.loading import split_hub_id
from idgen.pipelines.names import MODES, NONE, SPATIAL, UNIFORM

PhotoInput = str | os.PathLike[str] | Image.Image


def authors_spatial() -> SpatialMask:
    """The authors' SpatialID: their extractor, refiner and centred prior, with preset v1 (FLUX's default)."""
    return SpatialMask(TemporalSpatialScheduler.from_preset("v1"))


def mask_policy(
    mode: str,
    preset: str | None = None,
    scheduler: TemporalSpatialScheduler | None = None,
    extractor: MaskExtractor | None = None,
    spatial: SpatialMask | None = None,
) -> MaskPolicy | None:
    """The mask policy a mode name stands for; None for "none" (no identity at all).

    `spatial` is the SpatialMask to start from (default: the authors' extractor, refiner and centred
    prior, preset v1); `scheduler` or else `preset` replaces its schedule, and with neither it keeps its
    own (the model's). `extractor` replaces its extractor, e.g.
    AttentionEntropyExtractor() or FixedMaskExtractor(user_mask(...)) to inject only where the user says.
    """
    if mode == SPATIAL:
        spatial = spatial or authors_spatial()
        if scheduler is None and preset is not None:
            scheduler = TemporalSpatialScheduler.from_preset(preset)
        chosen = spatial if scheduler is None else dataclasses.replace(spatial, scheduler=scheduler)
        return chosen if extractor is None else dataclasses.replace(chosen, extractor=extractor)
    if mode == UNIFORM:
        return UniformMask()
    if mode == NONE:
        return None
    raise IdgenError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


@dataclass
class IdentityPipelineOutput(BaseOutput):
    """A diffusers output: `out.images`, `out[0]` (the images) and `out.to_tuple()` (the fields not None)."""

    images: Any  # list of PIL images, or an array/tensor for output_type "np", "pt" or "latent"
    id_features: IdentityFeatures | None = None
    settings: dict[str, Any] | None = None


@runtime_checkable
class IdentityPipeline(Protocol):
    """The one interface of every backbone (what `idgen generate` and `idgen eval` call)."""

    adapter: Any  # the identity adapter (its class names the method in eval settings)
    encoder: IdentityEncoder
    defaults: dict[str, Any]  # sampling settings used when a call leaves them out
    spatial: SpatialMask  # the spatial mode's policy; a call's preset, if given, replaces its schedule

    @property
    def pixel_multiple(self) -> int: ...

    def encode_identity(self, id_image: PhotoInput) -> IdentityFeatures: ...

    def __call__(
        self,
        prompt: str | list[str],
        id_image: PhotoInput | None = None,
        *,
        id_features: IdentityFeatures | None = None,
        mode: str = SPATIAL,
        policy: MaskPolicy | None = None,
        id_weight: float = 1.0,
        start_step: int | None = 0,
        seed: int | list[int] | None = None,
        recorder: Recorder | None = None,
        **sampling: Any,
    ) -> IdentityPipelineOutput: ...

    def set_progress_bar_config(self, **kwargs: Any) -> None: ...  # diffusers' step bar, e.g. disable=True


def encode_photo(encoder: IdentityEncoder, id_image: PhotoInput) -> IdentityFeatures:
    """A photo (path or picture) -> its identity features, errors naming the file."""
    if isinstance(id_image, Image.Image):
        return encoder(id_image, what="the id image")
    if not isinstance(id_image, str | os.PathLike):
        raise IdgenError(f"id image must be a file path or a PIL image, got {type(id_image).__name__}")
    return encoder(load_image(id_image, what="id image"), what=str(id_image))


def resolve_features(
    encoder: IdentityEncoder,
    mode: str,
    id_image: PhotoInput | None,
    id_features: IdentityFeatures | None,
    batch: int,
) -> IdentityFeatures:
    """The call's identity features (given, or encoded from the photo), checked against the batch."""
    if id_features is None:
        if id_image is None:
            raise IdgenError(f"mode {mode!r} needs an id image")
        id_features = encode_photo(encoder, id_image)
    if id_features.batch_size not in (1, batch):
        raise IdgenError(f"id_features hold {id_features.batch_size} identities for {batch} prompts")
    return id_features


def with_defaults(defaults: dict[str, Any], **given: Any) -> dict[str, Any]:
    """Each setting as given, or the pipeline's default where it is None."""
    return {name: defaults[name] if value is None else value for name, value in given.items()}


def batch_size(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None = None) -> int:
    """How many prompts a call has: the prompt's, else the rows of its prompt_embeds."""
    if prompt is None:
        if prompt_embeds is None:
            raise IdgenError("give a prompt or prompt_embeds")
        return int(prompt_embeds.shape[0])
    return 1 if isinstance(prompt, str) else len(prompt)


def check_prompt(prompt: str | list[str]) -> None:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list | tuple) or any(not isinstance(p, str) for p in prompts):
        raise IdgenError(f"prompt must be a string or a list of strings, got {shown_type(prompt)}")
    if not prompts or any(not p.strip() for p in prompts):
        raise IdgenError("prompt is empty")


def shown_type(value: Any) -> str:
    """int, or list of int and str: what a value given in place of strings is."""
    if isinstance(value, list | tuple):
        return f"{type(value).__name__} of {' and '.join(sorted({type(v).__name__ for v in value}))}"
    return type(value).__name__


def check_generation_inputs(
    prompt: str | list[str] | None, id_weight: float, height: int, width: int, steps: int, multiple: int = 16
) -> None:
    """Clear one-line errors before anything runs; `multiple`: the backbone's pixel_multiple (FLUX's 16).
    A prompt of None is a call given prompt_embeds instead."""
    if prompt is not None:
        check_prompt(prompt)
    if not math.isfinite(id_weight):
        raise IdgenError(f"id_weight must be a finite number, got {id_weight}")
    if id_weight < 0:
        raise IdgenError(f"id_weight must be >= 0, got {id_weight}")
    if height <= 0 or width <= 0 or height % multiple or width % multiple:
        raise IdgenError(f"width and height must be positive multiples of {multiple}, got {width}x{height}")
    if steps < 1:
        raise IdgenError(f"num_inference_steps must be >= 1, got {steps}")


def seed_generators(
    seed: int | list[int] | None, batch: int
) -> torch.Generator | list[torch.Generator] | None:
    """One CPU generator (a single image), or one per image so each image depends on its own seed only:
    `seed + i` for image i, or the i-th of a list. None: no generator, so diffusers draws fresh noise from
    torch's global generator, as a stock pipeline does."""
    if seed is None:
        return None
    if isinstance(seed, list):
        if len(seed) != batch:
            raise IdgenError(f"got {len(seed)} seeds for {batch} images")
        return [torch.Generator("cpu").manual_seed(s) for s in seed]
    if batch == 1:
        return torch.Generator("cpu").manual_seed(seed)
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]


def model_source(source: str | os.PathLike[str], what: str) -> str:
    """A model's folder (`~` expanded) or hub id as given; neither is a one-line error naming `what`."""
    local = Path(source).expanduser()
    if local.exists():
        return str(local)
    if split_hub_id(source) is None:
        raise IdgenError(
            f"cannot load {what} from {source}: no such folder, nor a hub id (owner/name); {DOCTOR_HINT}"
        )
    return os.fspath(source)


def from_pretrained(cls: Any, source: str | os.PathLike[str], what: str, **kwargs: Any) -> Any:
    """cls.from_pretrained(source, **kwargs) for a diffusers pipeline class, with a one-line error naming
    `what` (offline, a hub id must already be in the cache)."""
    found = model_source(source, what)
    try:
        return cls.from_pretrained(found, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise IdgenError(f"cannot load {what} from {source}: {first}; {DOCTOR_HINT}") from None
