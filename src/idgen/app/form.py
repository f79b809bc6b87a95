"""The app's form, read on the server: every value a browser sends is checked here, whatever the page's
sliders allowed, and becomes one `GenerationRequest`. No gradio import: the rules are testable alone."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from idgen.errors import IdgenError
from idgen.generation import GenerationRequest, MaskSettings

MODES = ("spatial", "uniform", "none")
PRESETS = ("v1", "balanced")
MAX_SEED = 2**32 - 1
MAX_PHOTO_PIXELS = 4096 * 4096  # a photo larger than this is refused before it is decoded
MAX_PROMPT_CHARS = 2000


@dataclass(frozen=True)
class Limits:
    """The ranges the page offers and the server enforces: one table for both."""

    multiple: int  # width and height are multiples of this (the model's pixel multiple)
    default_size: tuple[int, int]  # (width, height)
    max_side: int
    default_steps: int
    max_steps: int = 100
    max_id_weight: float = 3.0
    default_preset: str | None = "v1"  # the model's own schedule's preset (None: a schedule of its own)

    @classmethod
    def of(cls, pipe: Any) -> Limits:
        """The limits of an IdentityFluxPipeline: its pixel multiple, default size and steps and SpatialID
        preset; sides up to four times the default."""
        width, height = int(pipe.defaults["width"]), int(pipe.defaults["height"])
        return cls(
            multiple=int(pipe.pixel_multiple),
            default_size=(width, height),
            max_side=4 * max(width, height),
            default_steps=int(pipe.defaults["num_inference_steps"]),
            default_preset=pipe.spatial.scheduler.preset_name(),
        )


@dataclass(frozen=True)
class Form:
    """The page's inputs as sent; files are paths inside the upload folder, with the names users gave."""

    photo: str | None
    prompt: Any
    mode: Any = "spatial"
    id_weight: Any = 1.0
    preset: Any = None  # None: the model's own schedule
    steps: Any = 20
    seed: Any = 42
    width: Any = 64
    height: Any = 64
    face_box: Any = ""
    mask: str | None = None
    compare: Any = True


def number(name: str, value: Any, low: float, high: float) -> float:
    """`value` as a finite float in [low, high]; booleans and text are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise IdgenError(f"{name} must be a number, got {str(value)[:40]!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise IdgenError(f"{name} must be in [{plain(low)}, {plain(high)}], got {value}")
    return float(value)


def plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def whole(name: str, value: Any, low: int, high: int) -> int:
    """`value` as an integer in [low, high] (a float with no fraction counts: JSON has one number type)."""
    checked = number(name, value, low, high)
    if checked != int(checked):
        raise IdgenError(f"{name} must be a whole number, got {value}")
    return int(checked)


def choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise IdgenError(f"{name} must be one of {', '.join(options)}, got {str(value)[:40]!r}")
    return str(value)


def prompt_text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise IdgenError("the prompt is empty")
    if len(value) > MAX_PROMPT_CHARS:
        raise IdgenError(f"the prompt has {len(value)} characters; the limit is {MAX_PROMPT_CHARS}")
    return value.strip()


def side(name: str, value: Any, limits: Limits) -> int:
    pixels = whole(name, value, limits.multiple, limits.max_side)
    if pixels % limits.multiple:
        raise IdgenError(f"{name} must be a multiple of {limits.multiple}, got {pixels}")
    return pixels


def face_box(text: Any) -> tuple[float, float, float, float] | None:
    """left,top,right,bottom in [0, 1] with left < right and top < bottom; empty text: no box."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    box = box_numbers(str(text))
    if box is None or not all(math.isfinite(v) and 0 <= v <= 1 for v in box):
        raise IdgenError(
            f"the face box must be left,top,right,bottom, each in [0, 1]; got {str(text)[:40]!r}"
        )
    if box[0] >= box[2] or box[1] >= box[3]:
        raise IdgenError(f"the face box must have left < right and top < bottom; got {str(text)[:40]!r}")
    return box


def box_numbers(text: str) -> tuple[float, float, float, float] | None:
    try:
        numbers = [float(v) for v in text.split(",")]
    except ValueError:
        return None
    return (numbers[0], numbers[1], numbers[2], numbers[3]) if len(numbers) == 4 else None


def mask_settings(form: Form, mode: str, preset: str | None) -> MaskSettings:
    box = face_box(form.face_box)
    if (box is not None or form.mask) and mode != "spatial":
        raise IdgenError("a face box or a mask image needs the spatial mode")
    if box is not None and form.mask:
        raise IdgenError("give a face box or a mask image, not both")
    schedule = {"prior_box": box} if box is not None else {}
    return MaskSettings(preset=preset, schedule=schedule, mask_image=form.mask)


def read_form(form: Form, limits: Limits) -> GenerationRequest:
    """The request `form` asks for, or an IdgenError naming the first bad value. Files are checked by
    the caller (they need reading); here only their presence."""
    mode = choice("mode", form.mode, MODES)
    prompt = prompt_text(form.prompt)
    if mode != "none" and not form.photo:
        raise IdgenError(
            f"the {mode} mode needs an identity photo: upload one, use the webcam or pick an example"
        )
    preset = None if form.preset is None else choice("preset", form.preset, PRESETS)
    if not isinstance(form.compare, bool):
        raise IdgenError("compare must be true or false")
    return GenerationRequest(
        prompt=prompt,
        id_image=form.photo if mode != "none" else None,
        mode=mode,
        mask=mask_settings(form, mode, preset),
        id_weight=number("id_weight", form.id_weight, 0.0, limits.max_id_weight),
        num_inference_steps=whole("steps", form.steps, 1, limits.max_steps),
        seed=whole("seed", form.seed, 0, MAX_SEED),
        width=side("width", form.width, limits),
        height=side("height", form.height, limits),
        compare=form.compare and mode != "none",
        record_masks=mode == "spatial",
    )
