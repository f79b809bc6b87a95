"""IdentityFluxPipeline behaves as a diffusers pipeline: outputs, batches, seeds, prompt_embeds, folders,
devices and offload, and the Img2Img / Inpaint / Kontext variants; each compared with stock diffusers or
with single calls, bit-exactly where the arithmetic is the same."""

import math
import os

import numpy as np
import pytest
import torch
from diffusers import FluxImg2ImgPipeline, FluxInpaintPipeline, FluxKontextPipeline, FluxPipeline
from diffusers.utils import BaseOutput
from PIL import Image

import idgen
from idgen.api import enable_offload
from idgen.errors import IdgenError
from idgen.identity.base import IdentityFeatures
from idgen.pipelines.base import IdentityPipelineOutput
from idgen.pipelines.pulid_flux import FLUX_DEFAULTS, IdentityFluxPipeline, resident_device
from idgen.pipelines.tiny import TINY_PULID, TINY_RANDOM
from idgen.recording import MaskRecorder

SMALL = dict(height=32, width=48, num_inference_steps=3)  # a 2x3 token grid
PROMPT = "a photo of a person on a beach"


def features(seed: int = 1, rows: int = 1) -> IdentityFeatures:
    g = torch.Generator().manual_seed(seed)
    c = TINY_PULID
    return IdentityFeatures(
        id_embedding=torch.randn(rows, c.id_dim, generator=g),
        vit_hidden=[torch.randn(rows, 17, c.vit_dim, generator=g) for _ in range(5)],
    )


def tiny() -> IdentityFluxPipeline:
    pipe = idgen.load(TINY_RANDOM, TINY_RANDOM, TINY_RANDOM, device="cpu")
    pipe.flux.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe() -> IdentityFluxPipeline:
    return tiny()


def latents(pipe, prompt=PROMPT, **kwargs):
    args = dict(id_features=features(), seed=7, output_type="latent", mode="uniform", **SMALL)
    args.update(kwargs)
    return pipe(prompt, **args).images


def stock_call(seed: int, **kwargs):
    """What IdentityFluxPipeline hands a stock FLUX pipeline for SMALL with the FLUX defaults."""
    d = FLUX_DEFAULTS
    return dict(
        generator=torch.Generator().manual_seed(seed), guidance_scale=d["guidance_scale"],
        max_sequence_length=d["max_sequence_length"], output_type="latent", **SMALL, **kwargs,
    )  # fmt: skip


def photo(size=(48, 32), seed=3) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy())


# outputs


def test_the_output_indexes_like_a_diffusers_output(pipe):
    out = pipe(PROMPT, id_features=features(), seed=1, **SMALL)
    assert isinstance(out, BaseOutput) and isinstance(out, IdentityPipelineOutput)
    assert out[0] is out.images and out["images"] is out.images and out[1] is out.id_features
    as_tuple = pipe(PROMPT, id_features=features(), seed=1, return_dict=False, **SMALL)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    assert np.array_equal(np.asarray(as_tuple[0][0]), np.asarray(out.images[0]))
    none = pipe(PROMPT, mode="none", seed=1, return_dict=False, **SMALL)
    assert len(none) == 1 and isinstance(none[0][0], Image.Image)


def test_output_types_pass_through(pipe):
    pil = latents(pipe, output_type="pil")
    arr, pt = latents(pipe, output_type="np"), latents(pipe, output_type="pt")
    assert isinstance(pil[0], Image.Image) and pil[0].size == (48, 32)
    assert arr.shape == (1, 32, 48, 3) and tuple(pt.shape) == (1, 3, 32, 48)
    assert np.array_equal(arr, pt.permute(0, 2, 3, 1).numpy())
    assert tuple(latents(pipe).shape) == (1, 6, 64)  # packed latents: 2x3 tokens of 16 channels x 2x2


def test_mode_none_is_the_stock_flux_pipeline(pipe):
    stock = FluxPipeline(**pipe.flux.components)(PROMPT, **stock_call(7)).images
    assert torch.equal(latents(pipe, mode="none"), stock)
    assert not torch.equal(latents(pipe), stock)  # the identity does change the image


# batches and seeds


PROMPTS = ["a photo of a man on a beach", "a portrait of a woman in a forest"]


def rows(f: IdentityFeatures, index: list[int]) -> IdentityFeatures:
    return IdentityFeatures(f.id_embedding[index], [h[index] for h in f.vit_hidden])


def test_prompt_embeds_with_images_per_prompt_equal_the_prompts(pipe):
    """Stock FluxPipeline repeats the text embeddings it encodes for each image but not given ones (a batch
    of prompt_embeds with num_images_per_prompt > 1 fails there); given ones are repeated the same way."""
    with torch.no_grad():
        embeds, pooled, _ = pipe.flux.encode_prompt(PROMPTS, None, max_sequence_length=128)
    batch = latents(pipe, PROMPTS, id_features=features(rows=2), num_images_per_prompt=2, seed=10)
    given = dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_images_per_prompt=2)
    assert torch.equal(latents(pipe, None, id_features=features(rows=2), seed=10, **given), batch)
    assert not torch.allclose(batch[0], batch[1])  # two images of one prompt: two seeds
    cfg = dict(true_cfg_scale=2.0, negative_prompt="dark", seed=10)
    with_cfg = latents(pipe, PROMPTS, num_images_per_prompt=2, **cfg)
    assert torch.equal(latents(pipe, None, **given, **cfg), with_cfg)


def test_a_batch_equals_single_calls_with_the_same_seeds(pipe):
    """Image k of the batch has seed 10 + k. A batch of 4 runs other CPU kernels than 4 batches of 1, in
    stock FLUX too (its images differ by ~5e-7), hence the tolerance."""
    two = features(rows=2)
    batch = latents(pipe, PROMPTS, id_features=two, num_images_per_prompt=2, seed=10)
    singles = [latents(pipe, PROMPTS[k // 2], id_features=rows(two, [k // 2]), seed=10 + k) for k in range(4)]
    torch.testing.assert_close(batch, torch.cat(singles), rtol=0, atol=1e-5)
    assert not torch.allclose(singles[0], singles[2], rtol=0, atol=1e-3)  # the prompts and rows do matter


def test_seed_lists_must_cover_every_image(pipe):
    with pytest.raises(IdgenError, match="got 2 seeds for 4 images"):
        latents(pipe, ["a man", "a woman"], num_images_per_prompt=2, seed=[1, 2])
    with pytest.raises(IdgenError, match="num_images_per_prompt must be >= 1"):
        latents(pipe, num_images_per_prompt=0)


def test_no_seed_draws_fresh_noise_from_torchs_generator(pipe):
    first, second = latents(pipe, seed=None), latents(pipe, seed=None)
    assert not torch.equal(first, second)
    torch.manual_seed(3)
    again = latents(pipe, seed=None)
    torch.manual_seed(3)
    assert torch.equal(latents(pipe, seed=None), again)


def test_library_front_ends_still_pass_seed_42():
    from idgen.cli import build_parser
    from idgen.generation import GenerationRequest

    assert GenerationRequest("a person").sampling()["seed"] == 42
    args = build_parser().parse_args(["generate", "--prompt", "a person"])
    assert args.seed == 42


def test_prompt_embeds_without_a_prompt(pipe):
    with torch.no_grad():  # as the pipeline encodes (T5 takes other kernels with autograd on)
        embeds, pooled, _ = pipe.flux.encode_prompt(PROMPT, None, max_sequence_length=128)
    given = latents(pipe, None, prompt_embeds=embeds, pooled_prompt_embeds=pooled)
    assert torch.equal(given, latents(pipe))
    with pytest.raises(IdgenError, match="give a prompt or prompt_embeds"):
        latents(pipe, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(id_weight=math.nan), "id_weight must be a finite number, got nan"),
        (dict(id_weight=math.inf), "id_weight must be a finite number, got inf"),
        (dict(id_weight=-0.5), "id_weight must be >= 0, got -0.5"),
        (dict(prompt=5), "prompt must be a string or a list of strings, got int"),
        (
            dict(prompt=["a person", 5]),
            "prompt must be a string or a list of strings, got list of int and str",
        ),
        (dict(prompt=["a person", " "]), "prompt is empty"),
        (dict(id_features=None, id_image=7), "id image must be a file path or a PIL image, got int"),
        (dict(id_features=None, id_image=torch.zeros(3, 8, 8)), "id image must be .* got Tensor"),
    ],
)
def test_bad_library_inputs_are_one_line_errors(pipe, kwargs, message):
    with pytest.raises(IdgenError, match=f"^{message}$"):
        latents(pipe, kwargs.pop("prompt", PROMPT), **kwargs)


# folders


def realigned(flux) -> None:
    """Copy each weight into fresh memory: diffusers' loader leaves them at unaligned addresses in the file's
    mapping, where the CPU matrix kernels take another path and round the last bit differently."""
    for module in flux.components.values():
        for tensor in module.parameters() if isinstance(module, torch.nn.Module) else ():
            tensor.data = tensor.data.clone()


def test_save_and_load_round_trip_bit_exactly(tmp_path, pipe):
    old = os.umask(0o022)
    try:
        pipe.save_pretrained(tmp_path / "p")
    finally:
        os.umask(old)
    modes = {p.stat().st_mode & 0o777 for p in (tmp_path / "p").rglob("*") if p.is_file()}
    assert modes == {0o644}  # diffusers' own weights too, not safetensors' 0o600
    assert sorted(p.name for p in (tmp_path / "p" / "identity_adapter").iterdir()) == [
        "config.json", "model.safetensors",
    ]  # fmt: skip
    loaded = IdentityFluxPipeline.from_pretrained(tmp_path / "p", encoder=pipe.encoder)
    assert loaded.defaults == pipe.defaults and type(loaded.adapter) is type(pipe.adapter)
    for name, part in pipe.flux.components.items():
        for key, tensor in part.state_dict().items() if isinstance(part, torch.nn.Module) else ():
            assert torch.equal(loaded.flux.components[name].state_dict()[key], tensor), (name, key)
    for name, tensor in pipe.adapter.state_dict().items():
        assert torch.equal(loaded.adapter.state_dict()[name], tensor)
    realigned(loaded.flux)
    assert torch.equal(latents(loaded, mode="spatial"), latents(pipe, mode="spatial"))
    stock = FluxPipeline.from_pretrained(str(tmp_path / "p"))  # still a diffusers FLUX folder
    realigned(stock)
    assert torch.equal(stock(PROMPT, **stock_call(7)).images, latents(pipe, mode="none"))


def test_the_adapter_alone_and_refusing_to_overwrite(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "a", save_flux=False)
    assert not (tmp_path / "a" / "model_index.json").exists()
    with pytest.raises(IdgenError, match="exists; pass overwrite=True"):
        pipe.save_pretrained(tmp_path / "a", save_flux=False)
    pipe.save_pretrained(tmp_path / "a", save_flux=False, overwrite=True)
    loaded = IdentityFluxPipeline.from_pretrained(TINY_RANDOM, adapter=tmp_path / "a", encoder=TINY_RANDOM)
    assert torch.equal(latents(loaded), latents(pipe))
    with pytest.raises(IdgenError, match="holds no identity_adapter folder"):
        IdentityFluxPipeline.from_pretrained(tmp_path / "elsewhere", encoder=TINY_RANDOM)


def test_the_wplus_branch_round_trips_too(tmp_path):
    wplus = idgen.load(TINY_RANDOM, TINY_RANDOM, TINY_RANDOM, backbone="flux-wplus", device="cpu")
    wplus.save_pretrained(tmp_path / "w", save_flux=False)
    loaded = IdentityFluxPipeline.from_pretrained(TINY_RANDOM, adapter=tmp_path / "w", encoder=TINY_RANDOM)
    photo_features = wplus.encode_identity(photo())
    assert type(loaded.adapter).__name__ == "WPlusFluxAdapter"
    assert torch.equal(
        latents(loaded, id_features=photo_features), latents(wplus, id_features=photo_features)
    )


# devices and offload


def test_to_returns_the_pipeline_and_moves_the_adapter():
    pipe = tiny()
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
    assert pipe.to(torch.float64) is pipe and pipe.dtype == torch.float64
    assert next(pipe.adapter.parameters()).dtype == torch.float64


def test_model_and_group_offload_leave_the_arithmetic_alone(pipe):
    plain = latents(pipe, mode="spatial")
    model = tiny()
    model.enable_model_cpu_offload(device="cpu")
    assert torch.equal(latents(model, mode="spatial"), plain)
    group = tiny()
    enable_offload(group, "group", "cpu")  # what idgen.load(offload="group") does, with the CPU as the GPU
    assert torch.equal(latents(group, mode="spatial"), plain)


def test_sequential_offload_hooks_on_the_transformer_leave_the_arithmetic_alone(pipe):
    """enable_sequential_cpu_offload is accelerate's cpu_offload on each part; on a CPU-only torch 2.13 it
    fails inside the CLIP text encoder for a stock FluxPipeline too, so the transformer (the part the
    identity hooks sit on) is offloaded alone here. Its weights sit on the meta device between calls."""
    from accelerate import cpu_offload

    plain = latents(pipe, mode="spatial")
    offloaded = tiny()
    cpu_offload(offloaded.flux.transformer, execution_device=torch.device("cpu"))
    assert next(offloaded.flux.transformer.parameters()).device.type == "meta"
    assert torch.equal(latents(offloaded, mode="spatial"), plain)
    assert next(offloaded.adapter.parameters()).device.type == "cpu"


def test_the_adapter_waits_on_the_cpu_beside_an_offloaded_weight():
    assert resident_device(torch.empty(1, device="meta")) == torch.device("cpu")
    assert resident_device(torch.empty(1, dtype=torch.float64)) == torch.device("cpu")


# variants


def test_img2img_none_is_stock_and_steps_are_counted(pipe):
    img2img = IdentityFluxPipeline.from_pipe(pipe, FluxImg2ImgPipeline)
    assert img2img.adapter is pipe.adapter and img2img.flux.transformer is pipe.flux.transformer
    image = photo()
    stock = FluxImg2ImgPipeline(**pipe.flux.components)(PROMPT, image=image, strength=0.5, **stock_call(7))
    assert torch.equal(latents(img2img, mode="none", image=image, strength=0.5), stock.images)
    recorder = MaskRecorder()
    spatial = latents(img2img, mode="spatial", image=image, strength=0.5, recorder=recorder)
    assert recorder.steps() == [0, 1] and not torch.equal(
        spatial, stock.images
    )  # strength 0.5 of 3 steps: the last 2


def test_inpaint_none_is_stock(pipe):
    inpaint = IdentityFluxPipeline.from_pipe(pipe, FluxInpaintPipeline)
    mask = Image.new("L", (48, 32), 0)
    mask.paste(255, (16, 0, 48, 32))
    call = dict(image=photo(), mask_image=mask, strength=1.0)
    stock = FluxInpaintPipeline(**pipe.flux.components)(PROMPT, **call, **stock_call(7)).images
    assert torch.equal(latents(inpaint, mode="none", **call), stock)
    assert not torch.equal(latents(inpaint, mode="spatial", **call), stock)


def test_kontext_injects_into_the_generated_tokens_only(pipe):
    kontext = IdentityFluxPipeline.from_pipe(pipe, FluxKontextPipeline)
    # max_area keeps 32x48 (Kontext otherwise resizes to about 1024x1024); a 2x4 context grid after the 2x3
    context = dict(image=photo((64, 32)), _auto_resize=False, max_area=32 * 48)
    seen = []
    block = kontext.flux.transformer.transformer_blocks[0]  # the first injection point
    handle = block.register_forward_hook(lambda module, args, output: seen.append(output[1]))
    try:
        recorder = MaskRecorder()
        with_id = latents(kontext, mode="spatial", recorder=recorder, **context)
        without = latents(kontext, mode="none", **context)
    finally:
        handle.remove()
    assert recorder.mean_mask_per_step()[0][2].shape == (2, 3)
    assert not torch.equal(with_id, without)
    first_with, first_without = seen[0], seen[len(seen) // 2]  # step 0 of each call: same inputs
    assert first_with.shape[1] == 6 + 8
    assert torch.equal(first_with[:, 6:], first_without[:, 6:])  # context tokens untouched
    assert not torch.equal(first_with[:, :6], first_without[:, :6])


def test_the_adapter_follows_the_transformers_inputs_to_their_device():
    """No second device here: the meta device stands in for the GPU an offload hook moves the inputs to."""
    from idgen.backbones.run import InjectionRun

    pipe = tiny()
    ids = torch.zeros(6, 3)
    ids[:, 1], ids[:, 2] = torch.arange(2).repeat_interleave(3), torch.arange(3).repeat(2)
    inputs = dict(hidden_states=torch.empty(1, 6, 64, device="meta"), timestep=torch.ones(1), img_ids=ids)
    tokens = torch.zeros(1, 3, TINY_PULID.ca_dim)
    with pipe.injector.run(InjectionRun(id_tokens=tokens)):
        pipe.injector._before_transformer(pipe.flux.transformer, (), inputs)
        assert pipe.injector.active()[1].device.type == "meta"
    assert next(pipe.adapter.parameters()).device.type == "meta"


def test_from_pretrained_builds_a_variant_and_from_pipe_rehooks_a_new_transformer(pipe):
    kontext = IdentityFluxPipeline.from_pretrained(
        TINY_RANDOM, adapter=TINY_RANDOM, encoder=TINY_RANDOM, flux_class=FluxKontextPipeline
    )
    assert isinstance(kontext.flux, FluxKontextPipeline)
    context = dict(image=photo(), _auto_resize=False, max_area=32 * 48)
    assert not torch.equal(latents(kontext, **context), latents(kontext, mode="none", **context))
    from idgen.pipelines.tiny import tiny_flux_pipeline

    other = tiny_flux_pipeline(seed=1).transformer
    twin = IdentityFluxPipeline.from_pipe(pipe, FluxPipeline, transformer=other)
    assert twin.flux.transformer is other and twin.injector.transformer is other
    assert pipe.injector.transformer is pipe.flux.transformer and twin.adapter is pipe.adapter
    assert not torch.equal(latents(twin), latents(pipe))
