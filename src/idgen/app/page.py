"""The app's page: inputs, outputs, examples, and the handlers between them and `idgen.generation`.

Handlers receive the browser's raw values (`preprocess=False`): gradio never decodes an upload before
`read_form` and `load_image` have checked it, so a bad file or a crafted value becomes a message in the
page (`gr.Error`) and the server carries on.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from idgen.app.files import Workspace
from idgen.app.form import MAX_PHOTO_PIXELS, MAX_SEED, MODES, PRESETS, Form, Limits, read_form
from idgen.errors import IdgenError
from idgen.generation import GenerationRequest, GenerationResult, generate
from idgen.io import load_image

EXPECTED = (IdgenError, OSError, ValueError, MemoryError, RuntimeError)


@dataclass(frozen=True)
class Example:
    """A shipped example: a photo, a prompt and a mode, a short label and a caption that says what to
    look at."""

    photo: Path
    prompt: str
    mode: str
    label: str
    caption: str


@dataclass
class AppModel:
    """The one loaded pipeline and what the page needs to know about it. `record` describes the model in
    the sidecar; `warnings(prompt)` lists what the model will not understand in a prompt."""

    pipe: Any
    record: Any
    limits: Limits
    compare_by_default: bool = True
    warnings: Callable[[str], list[str]] = lambda prompt: []
    lock: threading.Lock = field(default_factory=threading.Lock)


class StepProgress:
    """`pipe` with a diffusers step callback that moves the page's progress bar. `generate` calls the
    pipeline once per image: once, or three times with the compare strip (the request's mode and the two
    others)."""

    def __init__(self, pipe: Any, report: Callable[[float, str], None], runs: int, steps: int):
        self.pipe, self.report, self.runs, self.steps, self.done = pipe, report, runs, steps, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run = self.done

        def on_step(flux: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            self.report(
                (run * self.steps + step + 1) / (self.runs * self.steps), f"image {run + 1}/{self.runs}"
            )
            return tensors

        output = self.pipe(*args, callback_on_step_end=on_step, **kwargs)
        self.done += 1
        return output


def upload(value: Any) -> tuple[str, str] | None:
    """(path on the server, name the user gave) of a raw image value, or None when empty."""
    if not value:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("path"), str):
        raise IdgenError("the upload is not a file")
    return value["path"], Path(value.get("orig_name") or value["path"]).name


def check_image(value: Any, what: str) -> tuple[str, str] | None:
    """Read an uploaded image fully: corrupt, empty and huge files fail here."""
    sent = upload(value)
    if sent is not None:
        load_image(sent[0], what=what, max_pixels=MAX_PHOTO_PIXELS)
    return sent


def check_mask_shape(path: str, request: GenerationRequest) -> None:
    """A mask must have the image's aspect ratio (it is scaled to the token grid, never stretched)."""
    from idgen.validation import mask_image_size

    mask_image_size(path, (int(request.width or 0), int(request.height or 0)))


def in_page(error: BaseException, names: dict[str, str]) -> gr.Error:
    """The error as one line in the page, naming uploads as the user named them, not by their path on
    the server."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    for path, name in names.items():
        text = text.replace(path, name)
    return gr.Error(text if isinstance(error, IdgenError) else f"{type(error).__name__}: {text}")


def check_photo(value: Any) -> None:
    """Runs on upload, so a bad photo is named at once rather than at Generate."""
    try:
        check_image(value, "photo")
    except EXPECTED as e:
        raise in_page(e, dict([upload(value) or ("", "")])) from None


def sidecar(result: GenerationResult, model: AppModel, names: dict[str, str]) -> dict[str, Any]:
    """The CLI's sidecar, naming uploads as the user named them rather than by their server path."""
    record = {"image": "idgen.png", **result.sidecar, "model": model.record}
    return renamed(record, names)


def renamed(value: Any, names: dict[str, str]) -> Any:
    """`value` with every string that is a key of `names` replaced by its name, at any depth."""
    if isinstance(value, dict):
        return {k: renamed(v, names) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [renamed(v, names) for v in value]
    return names.get(value, value) if isinstance(value, str) else value


def run_request(model: AppModel, request: GenerationRequest, progress: Any) -> GenerationResult:
    runs = 3 if request.compare else 1
    steps = int(request.num_inference_steps or model.limits.default_steps)
    pipe = StepProgress(model.pipe, lambda done, what: progress(done, desc=what), runs, steps)
    with model.lock:  # the pipeline's hooks hold one run's state: never two runs at once
        return generate(pipe, request, model=model.record)


def save_outputs(result: GenerationResult, record: dict[str, Any], folder: Path) -> tuple[str | None, str]:
    from idgen.io import atomic_write_text
    from idgen.viz import save_mask_gif

    gif = None
    if result.masks_per_step:
        gif = str(folder / "idgen.masks.gif")
        save_mask_gif(result.image, result.masks_per_step, gif)
    params = folder / "idgen.json"
    atomic_write_text(params, json.dumps(record, indent=2, default=str) + "\n")
    return gif, str(params)


def make_generate(model: AppModel, workspace: Workspace) -> Callable[..., Any]:
    def run(  # the page's inputs, in order, as the browser sent them
        photo: Any, prompt: Any, mode: Any, id_weight: Any, preset: Any, steps: Any, seed: Any, width: Any,
        height: Any, box: Any, mask: Any, compare: Any, request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> Any:  # fmt: skip
        names: dict[str, str] = {}
        try:
            sent, sent_mask = upload(photo), upload(mask)
            names = dict(x for x in (sent, sent_mask) if x is not None)
            check_image(photo, "photo")
            check_image(mask, "mask image")
            form = Form(
                sent and sent[0], prompt, mode, id_weight, preset, steps, seed, width, height, box,
                mask=sent_mask and sent_mask[0], compare=compare,
            )  # fmt: skip
            generation = read_form(form, model.limits)
            if sent_mask is not None:
                check_mask_shape(sent_mask[0], generation)
            for warning in model.warnings(generation.prompt):
                gr.Warning(warning)
            result = run_request(model, generation, progress)
            record = sidecar(result, model, names)
            gif, params = save_outputs(result, record, workspace.run_folder(request))
        except EXPECTED as e:
            raise in_page(e, names) from None
        return result.image, result.compare, gif, params

    return run


def inputs_column(model: AppModel) -> list[Any]:
    limits = model.limits
    width, height = limits.default_size
    photo = gr.Image(label="Identity photo", sources=["upload", "webcam"], type="filepath", elem_id="photo")
    prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
    mode = gr.Radio(list(MODES), value="spatial", label="Mode", elem_id="mode")
    with gr.Accordion("Settings", open=False, elem_id="settings"):
        id_weight = gr.Slider(
            0, limits.max_id_weight, value=1.0, step=0.05, label="id_weight", elem_id="id_weight"
        )
        preset = gr.Dropdown(list(PRESETS), value=limits.default_preset, label="SpatialID preset")
        steps = gr.Slider(
            1, limits.max_steps, value=limits.default_steps, step=1, label="steps", elem_id="steps"
        )
        seed = gr.Number(42, precision=0, minimum=0, maximum=MAX_SEED, label="seed", elem_id="seed")
        width_in = gr.Slider(
            limits.multiple, limits.max_side, value=width, step=limits.multiple, label="width"
        )
        height_in = gr.Slider(
            limits.multiple, limits.max_side, value=height, step=limits.multiple, label="height"
        )
        box = gr.Textbox(label="Face box: left,top,right,bottom in [0, 1] (spatial mode; like --prior-box)")
        mask = gr.Image(
            label="Mask image: white where the identity goes (spatial mode; like --mask-image)",
            sources=["upload"],
            type="filepath",
            elem_id="mask",
        )
        compare = gr.Checkbox(
            model.compare_by_default, label="compare strip (three generations)", elem_id="compare_toggle"
        )
    return [photo, prompt, mode, id_weight, preset, steps, seed, width_in, height_in, box, mask, compare]


def outputs_column() -> list[Any]:
    image = gr.Image(label="Image", format="png", interactive=False, elem_id="image")
    strip = gr.Image(
        label="reference | none | uniform | spatial (same seed)",
        format="png",
        interactive=False,
        elem_id="compare",
    )
    masks = gr.Image(label="The mask at every step (spatial mode)", interactive=False, elem_id="masks")
    params = gr.File(label="Parameters (the sidecar JSON)", interactive=False, elem_id="sidecar")
    return [image, strip, masks, params]


def build_page(model: AppModel, workspace: Workspace, examples: list[Example]) -> gr.Blocks:
    with gr.Blocks(title="idgen", analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown(
            f"## idgen: identity-preserving generation\nModel: {model.record}. One generation at a time."
        )
        with gr.Row():
            with gr.Column():
                inputs = inputs_column(model)
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                outputs = outputs_column()
        if examples:
            gr.Examples(
                [[str(e.photo), e.prompt, e.mode] for e in examples],
                inputs[:3],
                example_labels=[e.label for e in examples],
                label="Examples (click one, then Generate)",
            )
            gr.Markdown("\n".join(f"- **{e.label}**: look at {e.caption}." for e in examples))
        inputs[0].upload(check_photo, inputs[0], None, preprocess=False, show_progress="hidden")
        button.click(
            make_generate(model, workspace), inputs, outputs, preprocess=False, concurrency_limit=1,
            concurrency_id="generate", api_name="generate",
        )  # fmt: skip

        def end_session(request: gr.Request) -> None:
            workspace.end_session(request)

        page.unload(end_session)
    return page
