"""Every registered backbone behind the one identity-pipeline interface, via idgen.load and eval."""

import pytest
import torch
from PIL import Image

import idgen
from idgen.core.gate import ConstantMask
from idgen.errors import IdgenError
from idgen.eval.runner import FluxEvalGenerator, Method
from idgen.pipelines.base import MODES, IdentityPipeline, IdentityPipelineOutput
from idgen.recording import MaskRecorder

SMALL = dict(height=32, width=32, num_inference_steps=3)


@pytest.fixture(scope="module", params=sorted(idgen.BACKBONES))
def pipe(request):
    tiny = idgen.TINY_RANDOM
    pipe = idgen.load(tiny, tiny, tiny, backbone=request.param, device="cpu")
    pipe.defaults.update(SMALL)  # what the eval harness samples with
    return pipe


def photo(seed=3):
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(48, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)


def latents(pipe, **kwargs):
    args = dict(id_features=pipe.encode_identity(photo()), seed=5, output_type="pt", start_step=0)
    args.update(kwargs)
    return pipe("a photo of a person on a beach", **args).images


def test_the_interface_and_the_output_type(pipe):
    assert isinstance(pipe, IdentityPipeline)
    assert pipe.pixel_multiple in (8, 16)
    out = pipe("a person", photo(), mode="spatial", seed=1)
    assert isinstance(out, IdentityPipelineOutput) and isinstance(out.images[0], Image.Image)
    assert out.images[0].size == (SMALL["width"], SMALL["height"])
    assert out.id_features is not None and out.id_features.batch_size == 1


def test_the_equivalences_hold_on_every_backbone(pipe):
    none = latents(pipe, mode="none")
    uniform = latents(pipe, mode="uniform")
    assert torch.equal(latents(pipe, policy=ConstantMask(1.0)), uniform)
    assert torch.equal(latents(pipe, mode="spatial", id_weight=0.0), none)
    assert not torch.allclose(uniform, none)
    assert not torch.allclose(latents(pipe, mode="spatial"), uniform)


def test_steps_are_counted_and_masks_recorded(pipe):
    recorder = MaskRecorder()
    latents(pipe, mode="spatial", recorder=recorder, start_step=1)
    assert recorder.steps() == [1, 2]
    step, t, mask = recorder.mean_mask_per_step()[0]
    assert step == 1 and 0 < t < 1 and mask.dim() == 2


def test_the_eval_harness_runs_every_backbone(pipe):
    generator = FluxEvalGenerator(pipe)
    features = generator.encode(photo(), "a photo")
    for mode in MODES[:2]:
        images, strips = generator.generate(["a person", "a person at night"], [1, 2], features, Method(mode))
        assert len(images) == 2 and (strips is None) == (mode != "spatial")
    images, strips = generator.generate(["a person"], [1], None, None)
    assert len(images) == 1 and strips is None


def test_unknown_backbones_and_mismatched_parts_are_named():
    with pytest.raises(IdgenError, match="unknown backbone 'sdxl'; choose one of flux-pulid, flux-wplus"):
        idgen.load(backbone="sdxl")
    with pytest.raises(IdgenError, match="backbone 'sd15-wplus' needs its own parts"):
        idgen.load(backbone="sd15-wplus")
    with pytest.raises(IdgenError, match="needs a W\\+ identity encoder"):
        idgen.load(idgen.TINY_RANDOM, idgen.TINY_RANDOM, backbone="flux-wplus")


def test_sd15_refuses_flux_only_keywords_it_would_ignore():
    tiny = idgen.TINY_RANDOM
    pipe = idgen.load(tiny, tiny, tiny, backbone="sd15-wplus", device="cpu")
    for extra, refusal in (
        (dict(true_cfg_scale=3.0), "true_cfg_scale: a FLUX option"),
        (dict(id_images=[photo(), photo()]), "id_images: a FLUX option"),
        (
            dict(max_sequence_length=64, negative_identity="others"),
            "max_sequence_length, negative_identity: FLUX options",
        ),
    ):
        with pytest.raises(IdgenError, match=f"^{refusal}, which the SD1.5 backbone does not take$"):
            pipe("a person", photo(), mode="uniform", num_inference_steps=1, **extra)
    pipe("a person", photo(), mode="uniform", num_inference_steps=1, true_cfg_scale=1.0)  # off, as SD has it


def test_the_cli_s_call_works_on_every_backbone(pipe):
    unset = dict(true_cfg_scale=None, negative_prompt=None, height=None, width=None, num_inference_steps=None)
    unset.update(guidance_scale=None, max_sequence_length=None, true_cfg_start_step=None)
    out = pipe(
        "a person", photo(), mode="uniform", policy=None, recorder=None, id_weight=1.0, seed=4, **unset
    )
    assert out.images[0].size == (SMALL["width"], SMALL["height"])


def test_a_missing_base_model_is_named(tmp_path):
    tiny = idgen.TINY_RANDOM
    missing = "nowhere: no such folder, nor a hub id \\(owner/name\\); run `idgen doctor`"
    with pytest.raises(IdgenError, match=rf"^cannot load a FLUX pipeline from .*{missing}"):
        idgen.load(tmp_path / "nowhere", tiny, tiny, device="cpu")
    with pytest.raises(IdgenError, match=rf"^cannot load an SD1\.5 pipeline from .*{missing}"):
        idgen.load(tmp_path / "nowhere", tiny, tiny, backbone="sd15-wplus", device="cpu")
    with pytest.raises(IdgenError, match=rf"^cannot load a FLUX pipeline from ~/idgen-absent/{missing}"):
        idgen.load("~/idgen-absent/nowhere", tiny, tiny, device="cpu")  # "~" is the user's home
