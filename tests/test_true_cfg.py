"""True CFG as PuLID-FLUX's sampler runs it, and every mode in float64."""

import numpy as np
import pytest
import torch

from idgen.backbones.flux import encode_id_tokens
from idgen.backbones.run import InjectionRun
from idgen.core.gate import ConstantMask, UniformMask
from idgen.core.masks import AttentionEntropyExtractor, ca_output_norm
from idgen.pipelines.base import MODES

from .test_flux_injection import features, reference_pulid_forward

PROMPT, NEGATIVE, SCALE, SEED = "a photo of a person on a beach", "blurry", 3.0, 7
SIZE = dict(height=32, width=48, num_inference_steps=4)
MAX_TEXT = 16


def ours(pipe, **kwargs):
    args = dict(id_features=features(), seed=SEED, output_type="latent", max_sequence_length=MAX_TEXT, **SIZE)
    args.update(kwargs)
    return pipe(PROMPT, **args).images


@torch.no_grad()
def reference_denoise(pipe, id_weight, start_step, true_cfg, timestep_to_start_cfg):
    """PuLID-FLUX's `denoise`, restated on diffusers' parts (their schedule, embeddings and noise):

    pred = model(txt, id if i >= start_step else None)
    if true_cfg and i >= timestep_to_start_cfg:
        neg_pred = model(neg_txt, uncond_id if i >= start_step else None)
        pred = neg_pred + true_cfg * (pred - neg_pred)
    img = img + (t_prev - t_curr) * pred
    """
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    flux, adapter = pipe.flux, pipe.adapter
    transformer, config = flux.transformer, flux.scheduler.config
    txt, vec, txt_ids = flux.encode_prompt(PROMPT, max_sequence_length=MAX_TEXT)
    neg_txt, neg_vec, neg_txt_ids = flux.encode_prompt(NEGATIVE, max_sequence_length=MAX_TEXT)
    generator = torch.Generator("cpu").manual_seed(SEED)
    channels = transformer.config.in_channels // 4
    img, img_ids = flux.prepare_latents(
        1, channels, SIZE["height"], SIZE["width"], txt.dtype, "cpu", generator
    )
    steps = SIZE["num_inference_steps"]
    mu = calculate_shift(
        img.shape[1], config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift
    )
    flux.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    sigmas, timesteps = flux.scheduler.sigmas, flux.scheduler.timesteps
    id_tokens, uncond_tokens = encode_id_tokens(adapter, features(), with_uncond=True)

    def model(text, pooled, text_ids, tokens, i):
        inputs = dict(
            hidden_states=img,
            encoder_hidden_states=text,
            pooled_projections=pooled,
            timestep=timesteps[i].expand(1).to(img.dtype) / 1000,
            img_ids=img_ids,
            txt_ids=text_ids,
            guidance=torch.full([1], 4.0, dtype=torch.float32),
        )
        if i < start_step:
            return transformer(**inputs).sample
        return reference_pulid_forward(transformer, adapter, tokens, id_weight, inputs)

    for i in range(steps):
        pred = model(txt, vec, txt_ids, id_tokens, i)
        if true_cfg > 1 and i >= timestep_to_start_cfg:
            neg_pred = model(neg_txt, neg_vec, neg_txt_ids, uncond_tokens, i)
            pred = neg_pred + true_cfg * (pred - neg_pred)
        img = (img.float() + (sigmas[i + 1] - sigmas[i]) * pred).to(img.dtype)
    return img


@pytest.mark.parametrize(("start_cfg", "start_step"), [(0, 0), (1, 0), (2, 1)])
def test_true_cfg_is_bit_identical_to_the_reference_loop(tiny_pipe, start_cfg, start_step):
    expected = reference_denoise(tiny_pipe, 0.8, start_step, SCALE, start_cfg)
    got = ours(
        tiny_pipe, mode="uniform", id_weight=0.8, start_step=start_step, true_cfg_scale=SCALE,
        negative_prompt=NEGATIVE, true_cfg_start_step=start_cfg,
    )  # fmt: skip
    assert torch.equal(got, expected)


def test_the_default_start_is_the_reference_s_and_zero_is_the_old_behaviour(tiny_pipe):
    cfg = dict(mode="uniform", true_cfg_scale=SCALE, negative_prompt=NEGATIVE)
    assert tiny_pipe.defaults["true_cfg_start_step"] == 1
    assert torch.equal(ours(tiny_pipe, **cfg), ours(tiny_pipe, **cfg, true_cfg_start_step=1))
    # Start step 0: the negative pass counts at every step, as a plain diffusers call under a run does.
    cond, uncond = encode_id_tokens(tiny_pipe.adapter, features(), with_uncond=True)
    run = InjectionRun(id_tokens=cond, uncond_id_tokens=uncond)
    call = dict(
        prompt=PROMPT, negative_prompt=NEGATIVE, true_cfg_scale=SCALE, guidance_scale=4.0,
        max_sequence_length=MAX_TEXT, output_type="latent",
        generator=torch.Generator("cpu").manual_seed(SEED), **SIZE,
    )  # fmt: skip
    with tiny_pipe.injector.run(run):
        plain = tiny_pipe.flux(**call, callback_on_step_end=run.step_end_callback).images
    assert torch.equal(ours(tiny_pipe, **cfg, true_cfg_start_step=0), plain)
    assert not torch.equal(ours(tiny_pipe, **cfg, true_cfg_start_step=0), ours(tiny_pipe, **cfg))


def test_the_start_step_does_nothing_without_true_cfg(tiny_pipe):
    assert torch.equal(
        ours(tiny_pipe, mode="spatial", true_cfg_start_step=0),
        ours(tiny_pipe, mode="spatial", true_cfg_start_step=3),
    )


def test_a_user_step_callback_still_runs_and_steps_are_counted(tiny_pipe):
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append(i)
        return {}

    from idgen.recording import MaskRecorder

    recorder = MaskRecorder()
    ours(tiny_pipe, mode="uniform", recorder=recorder, callback_on_step_end=callback)
    assert seen == list(range(SIZE["num_inference_steps"]))
    assert recorder.steps() == list(range(SIZE["num_inference_steps"]))


def test_a_third_pass_without_a_step_boundary_is_refused():
    run = InjectionRun(id_tokens=torch.ones(1, 2, 3))
    run.advance(0.9, (2, 2))
    run.advance(0.9, (2, 2))
    with pytest.raises(Exception, match="mark step ends with callback_on_step_end"):
        run.advance(0.8, (2, 2))


@pytest.fixture(scope="module")
def pipe64():
    import idgen

    return idgen.load("tiny-random", "tiny-random", "tiny-random", device="cpu", torch_dtype=torch.float64)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_runs_in_float64(pipe64, mode):
    out = ours(pipe64, mode=mode, true_cfg_scale=SCALE, negative_prompt=NEGATIVE)
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
    if mode != "none":
        assert not torch.equal(out, ours(pipe64, mode="none", true_cfg_scale=SCALE, negative_prompt=NEGATIVE))


def test_float64_equivalences_and_the_entropy_extractor(pipe64):
    from idgen.pipelines.base import mask_policy

    uniform = ours(pipe64, mode="uniform")
    assert torch.equal(ours(pipe64, policy=ConstantMask(1.0)), uniform)
    assert torch.equal(ours(pipe64, mode="spatial", id_weight=0.0), ours(pipe64, mode="none"))
    entropy = mask_policy("spatial", extractor=AttentionEntropyExtractor(), spatial=pipe64.spatial)
    assert not torch.equal(ours(pipe64, policy=entropy), uniform)
    assert isinstance(mask_policy("uniform"), UniformMask)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_ca_norm_is_float32_with_unchanged_bits(dtype):
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    norm = ca_output_norm(x)
    assert norm.dtype == torch.float32
    assert torch.equal(norm, torch.linalg.vector_norm(x, ord=2, dim=-1, dtype=torch.float32))


def test_ca_norm_of_float64():
    x = torch.tensor([[[3.0, 4.0], [1e-3, 0.0]]], dtype=torch.float64)
    assert torch.equal(ca_output_norm(x), torch.tensor([[5.0, 1e-3]], dtype=torch.float32))


def test_a_pipeline_callback_object_keeps_its_tensor_inputs(tiny_pipe):
    from diffusers.callbacks import PipelineCallback

    class Keep(PipelineCallback):
        tensor_inputs = ("latents", "prompt_embeds")

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            self.seen.append(sorted(callback_kwargs))
            return callback_kwargs

    keep = Keep()
    keep.seen = []
    ours(tiny_pipe, mode="uniform", callback_on_step_end=keep)
    assert keep.seen == [["latents", "prompt_embeds"]] * SIZE["num_inference_steps"]
