"""One generation as a library call: the image, the compare strip, the masks per step and the sidecar.

`idgen generate` and any other front end (a notebook, a web app) call `generate(pipe, request)` and get a
`GenerationResult`; `result.save(out)` writes the files the CLI writes.

>>> request = GenerationRequest("a person in a snowy forest", "me.png", compare=True, record_masks=True)
>>> result = generate(pipe, request)
>>> result.save("outputs/me.png", overwrite=True)
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from idgen.errors import IdgenError
from idgen.pipelines.names import NONE, SPATIAL, UNIFORM

if TYPE_CHECKING:  # `idgen --help` imports this module; torch and Pillow load when a generation runs
    from PIL import Image
    from torch import Tensor

COMPARE_PANELS = (NONE, UNIFORM, SPATIAL)  # after the reference photo; one seed for all
SCHEDULE_SETTINGS = (
    "early_threshold",
    "late_threshold",
    "prior_sigma",
    "late_floor",
    "global_floor",
    "prior_box",
)


@dataclass(frozen=True)
class MaskSettings:
    """How the spatial mode builds its mask: a schedule preset with overrides, an extractor, and the
    model's refiner and anchor unless named here. `mask_image` replaces the attention mask by a picture."""

    preset: str | None = None  # None: the model's own schedule (its SpatialMask's); v1 for FLUX
    schedule: dict[str, Any] = field(default_factory=dict)  # SCHEDULE_SETTINGS given explicitly
    extractor: str = "ca-norm"  # ca-norm | entropy
    min_spread: float = 0.0
    refiner: str | None = None  # paper | grid-scaled | None (the model's)
    anchor: str | None = None  # centre | attention | None (the model's)
    mask_image: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """Everything one generation needs besides the model. Sampling settings left as None are the model's."""

    prompt: str
    id_image: str | os.PathLike[str] | None = None
    mode: str = SPATIAL
    mask: MaskSettings = field(default_factory=MaskSettings)
    id_weight: float = 1.0
    start_step: int = 0
    true_cfg_scale: float | None = None
    negative_prompt: str | None = None
    true_cfg_start_step: int | None = None  # None: the model's (PuLID-FLUX's sampler: 1)
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 42  # always explicit, so a request repeats (the pipeline's own default draws fresh noise)
    max_sequence_length: int | None = None
    compare: bool = False  # also generate the reference | none | uniform | spatial strip
    compare_id_weights: tuple[float, ...] = ()  # more strip panels: uniform and spatial at each of these
    record_masks: bool = False  # keep the mean mask of every step (spatial mode only)
    parameters: dict[str, Any] = field(default_factory=dict)  # the caller's own record, kept in the sidecar
    # Several people (docs/multi-identity.md): one tuple of photos per person, replacing id_image, and
    # optionally one (left, top, right, bottom) box in [0, 1] per person.
    id_images: tuple[tuple[str, ...], ...] | None = None
    boxes: tuple[tuple[float, float, float, float], ...] | None = None
    combine: str | None = None  # how one person's photos are joined (PHOTO_COMBINATIONS); None: the default
    # What each person's true-CFG negative pass takes (NEGATIVE_IDENTITIES); None: the default rule.
    negative_identity: str | None = None
    # Whether the people's boxes bound the image's attention; None: the library's default (not bounded).
    bound_attention: bool | None = None

    def sampling(self) -> dict[str, Any]:
        """The pipeline-call keywords of this request."""
        chosen = dict(
            id_weight=self.id_weight,
            start_step=self.start_step,
            true_cfg_scale=self.true_cfg_scale,
            negative_prompt=self.negative_prompt,
            height=self.height,
            width=self.width,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            max_sequence_length=self.max_sequence_length,
        )
        if self.true_cfg_start_step is not None:  # backbones without true CFG take no such keyword
            chosen["true_cfg_start_step"] = self.true_cfg_start_step
        return chosen


@dataclass
class GenerationResult:
    image: Image.Image
    compare: Image.Image | None  # reference | none | uniform | spatial, or None
    masks_per_step: list[tuple[int, float, Tensor]] | None  # (step, t, (H, W) mask), or None
    sidecar: dict[str, Any]
    several_identities: bool = False  # masks_per_step then holds (n, H, W) masks, one per person

    def mask_strip(self) -> Image.Image | None:
        from idgen.viz import identity_mask_strip, mask_strip

        if not self.masks_per_step:
            return None
        strip = identity_mask_strip if self.several_identities else mask_strip
        return strip(self.image, self.masks_per_step)

    def save(
        self,
        out: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        mask_strip: bool = True,
        mask_gif: bool = False,
    ) -> list[Path]:
        """Write <out>.png, its .json sidecar, and the .compare.png / .masks.png / .masks.gif this result
        has. Existing files are refused unless `overwrite`; each file is written atomically."""
        from idgen.io import atomic_save_image, atomic_write_text
        from idgen.viz import save_identity_mask_gif, save_mask_gif

        out = Path(out)
        has_masks = bool(self.masks_per_step)
        paths = output_paths(out, self.compare is not None, mask_strip and has_masks, mask_gif and has_masks)
        refuse_existing(paths, overwrite)
        atomic_save_image(self.image, out, format="PNG")
        strip = self.mask_strip() if mask_strip else None
        if strip is not None:
            atomic_save_image(strip, paths["masks"], format="PNG")
        if mask_gif and self.masks_per_step:
            save_gif = save_identity_mask_gif if self.several_identities else save_mask_gif
            save_gif(self.image, self.masks_per_step, paths["gif"])
        if self.compare is not None:
            atomic_save_image(self.compare, paths["compare"], format="PNG")
        sidecar = {"image": out.name, **self.sidecar}
        atomic_write_text(paths["sidecar"], json.dumps(sidecar, indent=2, default=str) + "\n")
        return list(paths.values())


def output_paths(out: Path, compare: bool, mask_strip: bool, mask_gif: bool) -> dict[str, Path]:
    """The files a result saved at `out` consists of, in the order they are written and printed."""
    paths = {"image": out}
    if mask_strip:
        paths["masks"] = out.with_suffix(".masks.png")
    if mask_gif:
        paths["gif"] = out.with_suffix(".masks.gif")
    if compare:
        paths["compare"] = out.with_suffix(".compare.png")
    paths["sidecar"] = out.with_suffix(".json")
    return paths


def refuse_existing(paths: dict[str, Path] | list[Path], overwrite: bool) -> None:
    if overwrite:
        return
    for path in paths.values() if isinstance(paths, dict) else paths:
        if path.exists() or path.is_symlink():
            raise IdgenError(f"{path} exists; pass --overwrite to replace it")


def build_policy(mode: str, settings: MaskSettings, spatial: Any = None) -> tuple[Any, Any]:
    """The mask policy and schedule `settings` ask for in `mode`, starting from the model's SpatialMask
    `spatial` (None: the authors'). An explicit prior box (a schedule override or a mask image) drops the
    anchor: the user has said where the face is."""
    from idgen.core.schedule import TemporalSpatialScheduler
    from idgen.pipelines.base import authors_spatial
    from idgen.pipelines.pulid_flux import mask_policy
    from idgen.pipelines.user_masks import mask_box, user_mask

    schedule = dict(settings.schedule)
    extractor = _extractor(settings)
    if settings.mask_image:
        if mode != SPATIAL:
            raise IdgenError("a mask image needs the spatial mode (--mode spatial)")
        from idgen.core.masks import FixedMaskExtractor

        mask = user_mask(settings.mask_image)
        box = mask_box(mask)
        if box is None:
            raise IdgenError(f"{settings.mask_image}: the mask image is black everywhere")
        schedule.setdefault("prior_box", box)
        extractor = FixedMaskExtractor(mask)
    model = spatial if spatial is not None else authors_spatial()
    if settings.preset is None:
        scheduler = dataclasses.replace(model.scheduler, **schedule)
    else:
        scheduler = TemporalSpatialScheduler.from_preset(settings.preset, **schedule)
    spatial = _spatial(settings, dataclasses.replace(model, scheduler=scheduler), "prior_box" in schedule)
    return mask_policy(mode, scheduler=scheduler, extractor=extractor, spatial=spatial), scheduler


def _extractor(settings: MaskSettings) -> Any:
    from idgen.core.masks import AttentionEntropyExtractor, CANormExtractor

    if settings.extractor == "ca-norm":
        return CANormExtractor(min_spread=settings.min_spread)
    if settings.extractor == "entropy":
        return AttentionEntropyExtractor(min_spread=settings.min_spread)
    raise IdgenError(f"unknown mask extractor {settings.extractor!r}; choose ca-norm or entropy")


def _spatial(settings: MaskSettings, spatial: Any, has_box: bool) -> Any:
    from idgen.core.gate import AttentionAnchor
    from idgen.core.refine import GridScaledRefiner, MaskRefiner

    replace = dataclasses.replace
    if settings.refiner:
        spatial = replace(
            spatial, refiner=GridScaledRefiner() if settings.refiner == "grid-scaled" else MaskRefiner()
        )
    if settings.anchor:
        spatial = replace(spatial, anchor=AttentionAnchor() if settings.anchor == "attention" else None)
    if has_box:
        spatial = replace(spatial, anchor=None)
    return spatial


def generate(pipe: Any, request: GenerationRequest, *, model: Any = None) -> GenerationResult:
    """Run `request` on an IdentityFluxPipeline. `model` describes the model in the sidecar."""
    from idgen.recording import MaskRecorder

    started = time.perf_counter()
    policy, scheduler = build_policy(request.mode, request.mask, pipe.spatial)
    spatial = request.mode == SPATIAL
    if request.id_images is not None and request.mode != NONE:
        return _generate_several(pipe, request, policy, scheduler, model, started)
    recorder = MaskRecorder(keep_ca_norm=False) if request.record_masks and spatial else None
    id_image = request.id_image if request.mode != NONE else None
    call = request.sampling()
    output = pipe(request.prompt, id_image, mode=request.mode, policy=policy, recorder=recorder, **call)
    image = output.images[0]
    compare = None
    if request.compare and id_image is not None:
        compare = compare_strip(pipe, request, image, output.id_features)
    sidecar = _sidecar(pipe, request, policy, scheduler, model)
    sidecar["seconds"] = {"generate": round(time.perf_counter() - started, 3)}
    masks = recorder.mean_mask_per_step() if recorder is not None else None
    return GenerationResult(image=image, compare=compare, masks_per_step=masks, sidecar=sidecar)


def _generate_several(
    pipe: Any, request: GenerationRequest, policy: Any, scheduler: Any, model: Any, started: float
) -> GenerationResult:
    """Several people in one image: per-person masks compete; the strip colours each person's mask."""
    from idgen.pipelines.multi import COMBINATIONS, DEFAULT_COMBINATION, negative_identity_rule
    from idgen.recording import IdentityMaskRecorder

    assert request.id_images is not None
    recorder = IdentityMaskRecorder() if request.record_masks and request.mode == SPATIAL else None
    boxes = None if request.boxes is None else list(request.boxes)
    combine = COMBINATIONS[request.combine or DEFAULT_COMBINATION]
    output = pipe(
        request.prompt, id_images=[list(photos) for photos in request.id_images], boxes=boxes,
        mode=request.mode, policy=policy, recorder=recorder, combine=combine,
        negative_identity=request.negative_identity, bound_attention=request.bound_attention,
        **request.sampling(),
    )  # fmt: skip
    sidecar = _sidecar(pipe, request, policy, scheduler, model)
    sidecar["seconds"] = {"generate": round(time.perf_counter() - started, 3)}
    true_cfg = (sidecar["sampling"].get("true_cfg_scale") or 1.0) > 1.0  # else no negative pass counts
    rule = negative_identity_rule(request.negative_identity, request.mode, len(request.id_images), true_cfg)
    sidecar["negative_identity"] = rule if true_cfg else None
    sidecar["bound_attention"] = bool(request.bound_attention)
    masks = recorder.mean_masks_per_step() if recorder is not None else None
    return GenerationResult(output.images[0], None, masks, sidecar, several_identities=True)


def _sidecar(
    pipe: Any, request: GenerationRequest, policy: Any, scheduler: Any, model: Any
) -> dict[str, Any]:
    call, spatial = request.sampling(), request.mode == SPATIAL
    weight = next(pipe.adapter.parameters())  # the interface's adapter runs in the denoiser's dtype
    return {
        "model": model,
        "parameters": request.parameters or _request_record(request),
        "sampling": {k: v for k, v in pipe.defaults.items() if call.get(k) is None}
        | {k: v for k, v in call.items() if v is not None},
        "schedule": dataclasses.asdict(scheduler) if spatial else None,
        "mask_policy": repr(policy) if spatial else None,
        "seed": request.seed,
        "device": str(weight.device),
        "dtype": str(weight.dtype).removeprefix("torch."),
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    """Python's and the model stack's versions, as the sidecar records them."""
    out = {"python": platform.python_version()}
    for name in ("idgen", "torch", "diffusers", "transformers", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def compare_strip(pipe: Any, request: GenerationRequest, image: Image.Image, id_features: Any) -> Image.Image:
    """reference | none | uniform | spatial at the request's seed; the request's own mode is `image`, the
    others use the model's default policy for their mode."""
    from idgen.io import load_image
    from idgen.viz import side_by_side

    assert request.id_image is not None
    panels = {"reference": load_image(request.id_image, what="id image")}
    for mode in COMPARE_PANELS:
        if mode == request.mode:
            panels[mode] = image
        else:
            call = request.sampling()
            panels[mode] = pipe(
                request.prompt, request.id_image, mode=mode, id_features=id_features, **call
            ).images[0]
    if request.compare_id_weights:  # every identity panel labelled with its weight, then the other weights
        at = f" w={request.id_weight:g}"
        panels = {k if k in ("reference", NONE) else k + at: v for k, v in panels.items()}
        for weight in request.compare_id_weights:
            panels |= _panels_at_weight(pipe, dataclasses.replace(request, id_weight=weight), id_features)
    return side_by_side(panels, size=image.size)


def _panels_at_weight(pipe: Any, request: GenerationRequest, id_features: Any) -> dict[str, Any]:
    """Uniform and spatial at the request's id weight; the request's own mode with its own mask policy."""
    out = {}
    for mode in (UNIFORM, SPATIAL):
        policy = build_policy(mode, request.mask, pipe.spatial)[0] if mode == request.mode else None
        out[f"{mode} w={request.id_weight:g}"] = pipe(
            request.prompt, request.id_image, mode=mode, policy=policy, id_features=id_features,
            **request.sampling(),
        ).images[0]  # fmt: skip
    return out


def _request_record(request: GenerationRequest) -> dict[str, Any]:
    record = dataclasses.asdict(request)
    record.pop("parameters")
    # One person's record stays as it was.
    for several in ("id_images", "boxes", "combine", "negative_identity", "bound_attention"):
        if record[several] is None:
            record.pop(several)
    record["id_image"] = None if request.id_image is None else str(request.id_image)
    return record
