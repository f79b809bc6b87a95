"""The app's server-side form rules: whatever a browser or a crafted request sends, one clear message."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from idgen.app.form import MAX_SEED, Form, Limits, face_box, read_form
from idgen.errors import IdgenError
from idgen.generation import MaskSettings

LIMITS = Limits(multiple=16, default_size=(64, 64), max_side=256, default_steps=20)


def form(**changes) -> Form:
    values = dict(photo="/tmp/upload/me.png", prompt=" a person in a forest ", steps=20, seed=42)
    return Form(**(values | changes))


def test_a_good_form_becomes_the_request():
    request = read_form(form(mode="spatial", id_weight=0.5, width=128, height=64.0, seed=7), LIMITS)
    assert request.prompt == "a person in a forest"
    assert request.id_image == "/tmp/upload/me.png"
    assert (request.mode, request.id_weight, request.seed) == ("spatial", 0.5, 7)
    assert (request.width, request.height, request.num_inference_steps) == (128, 64, 20)
    assert request.compare is True and request.record_masks is True
    assert request.mask == MaskSettings(preset=None)  # the model's own schedule
    assert read_form(form(preset="balanced"), LIMITS).mask == MaskSettings(preset="balanced")


def test_mode_none_drops_the_photo_compare_and_masks():
    request = read_form(form(mode="none", photo=None), LIMITS)
    assert (request.id_image, request.compare, request.record_masks) == (None, False, False)


def test_uniform_records_no_masks():
    request = read_form(form(mode="uniform"), LIMITS)
    assert request.record_masks is False and request.compare is True


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": "  "}, "the prompt is empty"),
        ({"prompt": None}, "the prompt is empty"),
        ({"prompt": "a" * 2001}, "the prompt has 2001 characters; the limit is 2000"),
        ({"photo": None}, "the spatial mode needs an identity photo"),
        ({"mode": "everywhere"}, "mode must be one of spatial, uniform, none, got 'everywhere'"),
        ({"preset": "fast"}, "preset must be one of v1, balanced, got 'fast'"),
        ({"steps": 0}, "steps must be in [1, 100], got 0"),
        ({"steps": 101}, "steps must be in [1, 100], got 101"),
        ({"steps": 2.5}, "steps must be a whole number, got 2.5"),
        ({"steps": "20"}, "steps must be a number, got '20'"),
        ({"steps": True}, "steps must be a number, got 'True'"),
        ({"id_weight": -0.1}, "id_weight must be in [0, 3], got -0.1"),
        ({"id_weight": math.nan}, "id_weight must be in [0, 3], got nan"),
        ({"id_weight": math.inf}, "id_weight must be in [0, 3], got inf"),
        ({"seed": -1}, f"seed must be in [0, {MAX_SEED}], got -1"),
        ({"seed": MAX_SEED + 1}, f"seed must be in [0, {MAX_SEED}], got {MAX_SEED + 1}"),
        ({"width": 72}, "width must be a multiple of 16, got 72"),
        ({"height": 0}, "height must be in [16, 256], got 0"),
        ({"height": 4096}, "height must be in [16, 256], got 4096"),
        ({"compare": "yes"}, "compare must be true or false"),
        ({"mode": "uniform", "face_box": "0,0,1,1"}, "a face box or a mask image needs the spatial mode"),
        ({"face_box": "0,0,1,1", "mask": "/tmp/m.png"}, "give a face box or a mask image, not both"),
    ],
)
def test_bad_values_are_refused_with_one_line(changes, message):
    with pytest.raises(IdgenError) as caught:
        read_form(form(**changes), LIMITS)
    assert str(caught.value).startswith(message)


def test_face_box_is_the_prior_box_and_a_mask_image_is_passed_on():
    request = read_form(form(face_box="0.25, 0.1, 0.75,0.6"), LIMITS)
    assert request.mask.schedule == {"prior_box": (0.25, 0.1, 0.75, 0.6)}
    request = read_form(form(mask="/tmp/upload/mask.png"), LIMITS)
    assert request.mask.mask_image == "/tmp/upload/mask.png" and request.mask.schedule == {}


@pytest.mark.parametrize("text", ["0,0,1", "a,b,c,d", "0,0,1,1.5", "0.5,0,0.5,1", "0,0.6,1,0.4", "nan,0,1,1"])
def test_bad_face_boxes_are_refused(text):
    with pytest.raises(IdgenError, match="the face box must"):
        face_box(text)


def test_limits_come_from_the_pipeline():
    from idgen.core.gate import SpatialMask
    from idgen.core.schedule import TemporalSpatialScheduler

    def pipe(**schedule):
        spatial = SpatialMask(TemporalSpatialScheduler.from_preset("balanced", **schedule))
        defaults = {"width": 64, "height": 48, "num_inference_steps": 20}
        return SimpleNamespace(defaults=defaults, pixel_multiple=16, spatial=spatial)

    assert Limits.of(pipe()) == Limits(
        multiple=16, default_size=(64, 48), max_side=256, default_steps=20, default_preset="balanced"
    )
    assert Limits.of(pipe(late_floor=0.6)).default_preset is None  # a schedule of the model's own
