"""The page's generate handler without a browser: what it returns, the progress it reports, the files it
keeps, and the errors it turns into page messages. On the tiny random pipeline (seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from idgen.app.files import Workspace  # noqa: E402
from idgen.app.form import Limits  # noqa: E402
from idgen.app.page import AppModel, StepProgress, make_generate  # noqa: E402
from idgen.generation import GenerationRequest, generate  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[2] / "assets" / "examples" / "reference.png"
PROMPT = "a person on a beach"


class Progress:
    def __init__(self):
        self.calls: list[tuple[float, str | None]] = []

    def __call__(self, done: float, desc: str | None = None) -> None:
        self.calls.append((done, desc))


def upload(path: Path, name: str) -> dict:
    """An image value as the browser sends it once the file is uploaded."""
    return {"path": str(path), "orig_name": name, "meta": {"_type": "gradio.FileData"}}


@pytest.fixture
def app(tmp_path, tiny_pipe):
    workspace = Workspace(tmp_path)
    limits = Limits(multiple=tiny_pipe.pixel_multiple, default_size=(64, 48), max_side=128, default_steps=3)
    yield SimpleNamespace(
        run=make_generate(AppModel(tiny_pipe, "tiny", limits), workspace), workspace=workspace
    )
    workspace.close()


def call(
    app, photo, *, prompt=PROMPT, mode="spatial", steps=3, compare=True, box="", mask=None, session="s1"
):
    progress = Progress()
    out = app.run(photo, prompt, mode, 1.0, "v1", steps, 5, 64, 48, box, mask, compare,
                  request=SimpleNamespace(session_hash=session), progress=progress)  # fmt: skip
    return out, progress


def test_the_handler_returns_what_the_library_call_gives(app, tiny_pipe, tmp_path):
    photo = tmp_path / "upload" / "me.png"
    photo.parent.mkdir()
    Image.open(REFERENCE).save(photo)
    (image, strip, gif, params), progress = call(app, upload(photo, "holiday.png"))

    request = GenerationRequest(PROMPT, str(photo), width=64, height=48, num_inference_steps=3, seed=5,
                                compare=True, record_masks=True)  # fmt: skip
    expected = generate(tiny_pipe, request)
    assert image.tobytes() == expected.image.tobytes() and image.size == (64, 48)
    assert strip.tobytes() == expected.compare.tobytes()
    with Image.open(gif) as frames:
        assert frames.n_frames == 3
    record = json.loads(Path(params).read_text())
    assert record["parameters"]["id_image"] == "holiday.png" and str(photo) not in Path(params).read_text()
    assert record["seed"] == 5 and record["model"] == "tiny"
    # Three pipeline calls (spatial, then none and uniform for the strip) of three steps each.
    assert [round(done * 9) for done, _ in progress.calls] == list(range(1, 10))
    assert [desc for _, desc in progress.calls][::3] == ["image 1/3", "image 2/3", "image 3/3"]
    # The outputs live in the session's folder of the workspace until the tab closes.
    assert Path(gif).parent.parent == app.workspace.session_folder(SimpleNamespace(session_hash="s1"))
    app.workspace.end_session(SimpleNamespace(session_hash="s1"))
    assert not Path(gif).exists() and not Path(params).exists()


def test_step_progress_changes_nothing_but_the_report(tiny_pipe):
    request = GenerationRequest(PROMPT, str(REFERENCE), mode="uniform", width=64, height=48,
                                num_inference_steps=2, seed=1)  # fmt: skip
    reports = Progress()
    wrapped = StepProgress(tiny_pipe, reports, runs=1, steps=2)
    assert generate(wrapped, request).image.tobytes() == generate(tiny_pipe, request).image.tobytes()
    assert reports.calls == [(0.5, "image 1/1"), (1.0, "image 1/1")]


def test_errors_become_page_messages_naming_the_users_file(app, tmp_path):
    broken = tmp_path / "abc123" / "x.png"
    broken.parent.mkdir()
    broken.write_bytes(b"not a picture at all")
    with pytest.raises(gr.Error) as caught:
        call(app, upload(broken, "broken.png"))
    assert caught.value.message == "photo is not a readable image file: broken.png"
    huge = tmp_path / "abc123" / "y.png"
    Image.new("L", (5000, 4000)).save(huge)  # 20 MP: refused from the header, before decoding
    with pytest.raises(gr.Error) as caught:
        call(app, upload(huge, "poster.png"))
    assert (
        caught.value.message == "photo is too large (5000x4000 = 20000000 pixels, limit 16777216): poster.png"
    )
    with pytest.raises(gr.Error, match="the prompt is empty"):
        call(app, upload(REFERENCE, "me.png"), prompt="")
    with pytest.raises(gr.Error, match=r"steps must be in \[1, 100\], got 1000"):
        call(app, upload(REFERENCE, "me.png"), steps=1000)
    with pytest.raises(gr.Error, match="the upload is not a file"):
        call(app, {"url": "http://example.com/x.png"})


def test_a_mask_of_another_shape_is_refused(app, tmp_path):
    mask = tmp_path / "m.png"
    Image.new("L", (40, 40), 255).save(mask)
    with pytest.raises(gr.Error) as caught:
        call(app, upload(REFERENCE, "me.png"), mask=upload(mask, "mask.png"))
    assert caught.value.message.startswith("mask image is 40x40 but the image is 64x48")


def test_a_photo_with_no_face_is_named_when_a_detector_is_used(tmp_path):
    pytest.importorskip("dlib")
    import idgen
    from idgen.identity.faces import DlibFaceDetector

    pipe = idgen.load("tiny-random", "tiny-random", "tiny-random", device="cpu", detector=DlibFaceDetector())
    workspace = Workspace(tmp_path)
    app = SimpleNamespace(run=make_generate(AppModel(pipe, "tiny", Limits.of(pipe)), workspace))
    sky = tmp_path / "0f9e" / "sky.png"
    sky.parent.mkdir()
    Image.new("RGB", (128, 128), (90, 140, 200)).save(sky)
    with pytest.raises(gr.Error) as caught:
        call(app, upload(sky, "holiday.png"), steps=1, compare=False)
    assert "no face" in caught.value.message and "holiday.png" in caught.value.message
    assert str(sky.parent) not in caught.value.message
    workspace.close()
