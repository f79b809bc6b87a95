"""The W+ residual cross-attention on a stock SD1.5-shaped UNet and StableDiffusionPipeline."""

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from idgen.backbones.sd15 import (
    WPlusAttnProcessor,
    WPlusRun,
    cfg_id_tokens,
    delayed_start_step,
    init_projections_from_unet,
    install_wplus,
    latent_token_grid,
    wplus_config_for_unet,
)
from idgen.core.gate import ConstantMask, SpatialMask, UniformMask
from idgen.core.schedule import TemporalSpatialScheduler
from idgen.errors import CheckpointError, IdgenError
from idgen.models.wplus import WPlusAdapter, WPlusConfig, identity_parameters
from idgen.pipelines.pidiff_sd15 import generate

from .conftest import tiny_unet

W_DIM = 16
STEPS = 3


def tiny_adapter(unet, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = WPlusAdapter(wplus_config_for_unet(unet, w_dim=W_DIM))
    init_projections_from_unet(adapter, unet)
    return adapter.eval()


def w_code(seed=1, batch=1):
    return torch.randn(batch, 18, W_DIM, generator=torch.Generator().manual_seed(seed)) * 3


def latents_of(pipe, injector=None, w=None, **kwargs):
    call = dict(
        prompt="a photo of a woman",
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )
    call.update(kwargs)
    if injector is None:
        return pipe(**call).images
    return generate(pipe, injector, w, **call).images


class Spy:
    """A mask policy that records what it sees and delegates to another policy."""

    def __init__(self, inner=None):
        self.inner = inner or UniformMask()
        self.seen = []

    @property
    def needs_attn_probs(self):
        return self.inner.needs_attn_probs

    def __call__(self, output, t, grid):
        self.seen.append((round(t, 4), tuple(grid), tuple(output.heads_out.shape)))
        return self.inner(output, t, grid)


def test_lambda_zero_is_bit_identical_to_stock(sd_pipe):
    stock = latents_of(sd_pipe)
    stock_processors = dict(sd_pipe.unet.attn_processors)
    injector = install_wplus(sd_pipe.unet, tiny_adapter(sd_pipe.unet))
    kinds = {name: type(p) for name, p in sd_pipe.unet.attn_processors.items()}
    assert sum(k is WPlusAttnProcessor for k in kinds.values()) == 7
    assert all(k is AttnProcessor2_0 for name, k in kinds.items() if "attn1" in name)
    assert torch.equal(latents_of(sd_pipe, injector, w_code(), id_weight=0.0), stock)
    assert torch.equal(latents_of(sd_pipe), stock)  # installed, but no run
    assert torch.equal(latents_of(sd_pipe, injector, None), stock)
    injector.remove()
    assert sd_pipe.unet.attn_processors == stock_processors  # the very same objects are back
    assert injector.original_processors == stock_processors
    injector.remove()  # a second remove is harmless
    assert torch.equal(latents_of(sd_pipe), stock)
    with pytest.raises(IdgenError, match="was removed"):
        latents_of(sd_pipe, injector, w_code())


def test_identity_changes_the_image_only_through_the_identity_branch(sd_pipe):
    stock = latents_of(sd_pipe)
    adapter = tiny_adapter(sd_pipe.unet)
    injector = install_wplus(sd_pipe.unet, adapter)
    with_id = latents_of(sd_pipe, injector, w_code(), start_fraction=0.0)
    assert not torch.equal(with_id, stock)
    assert not torch.equal(latents_of(sd_pipe, injector, w_code(seed=2), start_fraction=0.0), with_id)
    with torch.no_grad():
        for slot, _ in adapter.config.attention_layers:
            adapter.projections(slot).to_v_wplus.weight.zero_()
    assert torch.equal(latents_of(sd_pipe, injector, w_code(), start_fraction=0.0), stock)


def test_only_identity_parameters_get_gradients():
    unet = tiny_unet()
    adapter = tiny_adapter(unet)
    unet.requires_grad_(False)
    for p in identity_parameters(adapter):
        p.requires_grad_(True)
    injector = install_wplus(unet, adapter)
    g = torch.Generator().manual_seed(0)
    sample, text = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 32, generator=g)
    tokens = adapter.encode(w_code(batch=2))  # gradients flow through F_w into the run
    with injector.run(WPlusRun(tokens)):
        out = unet(sample, torch.tensor([500, 20]), text).sample
    out.square().mean().backward()
    for name, p in adapter.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in unet.parameters())


def test_processor_follows_the_formula_with_query_from_text_output():
    torch.manual_seed(0)
    attn = Attention(query_dim=24, cross_attention_dim=10, heads=3, dim_head=8).eval()
    adapter = WPlusAdapter(WPlusConfig(w_dim=W_DIM, token_dim=10, attention_layers=((0, 24),)))
    projections = adapter.projections(0)

    class Fixed:  # stands in for the injector
        def __init__(self, run, tokens):
            self.pair = (run, tokens)

        def active(self):
            return self.pair

    f, text = torch.randn(2, 12, 24), torch.randn(2, 5, 10)
    id_tokens = torch.randn(2, 4, 10)
    run = WPlusRun(id_tokens, id_weight=0.7)
    run.advance(400.0, (4, 3))
    processor = WPlusAttnProcessor(projections, Fixed(run, id_tokens), "attn2")
    out = processor(attn, f, text)

    def heads(x):
        return x.view(2, -1, 3, 8).transpose(1, 2)

    def attention(q, k, v):
        probs = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(8), dim=-1)
        return (probs @ heads(v)).transpose(1, 2).reshape(2, -1, 24)

    f_text = attention(attn.to_q(f), attn.to_k(text), attn.to_v(text))  # f'
    identity = attention(
        projections.to_q_wplus(f_text), projections.to_k_wplus(id_tokens), projections.to_v_wplus(id_tokens)
    )
    expected = attn.to_out[0](f_text + 0.7 * identity)
    torch.testing.assert_close(out, expected)
    # The same layer without a run is the stock processor, bit for bit.
    assert torch.equal(
        WPlusAttnProcessor(projections, Fixed(None, None), "attn2")(attn, f, text),
        AttnProcessor2_0()(attn, f, text),
    )


def test_projections_start_as_the_layers_own_q_k_v():
    unet = tiny_unet()
    adapter = tiny_adapter(unet)
    attn = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2  # slot 3
    assert torch.equal(adapter.projections(3).to_q_wplus.weight, attn.to_q.weight)
    assert torch.equal(adapter.projections(3).to_k_wplus.weight, attn.to_k.weight)
    assert torch.equal(adapter.projections(3).to_v_wplus.weight, attn.to_v.weight)


def test_delayed_conditioning_and_sampler_position(sd_pipe):
    stock = latents_of(sd_pipe)
    injector = install_wplus(sd_pipe.unet, tiny_adapter(sd_pipe.unet))
    spy = Spy()
    latents_of(sd_pipe, injector, w_code(), num_inference_steps=5, start_fraction=0.4, policy=spy)
    times = sorted({t for t, _, _ in spy.seen}, reverse=True)
    assert len(times) == 3  # steps 0 and 1 of 5 ran without identity
    assert len(spy.seen) == 3 * 7  # every cross-attention of every identity step
    assert all(shape[0] == 2 for _, _, shape in spy.seen)  # CFG batch [uncond; cond]
    expected = [round(float(t) / 1000, 4) for t in sd_pipe.scheduler.timesteps[2:]]
    assert times == expected  # normalised time: timestep / num_train_timesteps
    assert torch.equal(latents_of(sd_pipe, injector, w_code(), start_fraction=1.0), stock)
    assert delayed_start_step(30) == 6
    assert delayed_start_step(30, 0.0) == 0
    with pytest.raises(IdgenError, match=r"start fraction must be in \[0, 1\], got 1\.5"):
        delayed_start_step(30, 1.5)


def test_constant_masks_reproduce_uniform_and_off(sd_pipe):
    stock = latents_of(sd_pipe)
    injector = install_wplus(sd_pipe.unet, tiny_adapter(sd_pipe.unet))
    uniform = latents_of(sd_pipe, injector, w_code(), start_fraction=0.0)
    ones = latents_of(sd_pipe, injector, w_code(), start_fraction=0.0, policy=ConstantMask(1.0))
    zeros = latents_of(sd_pipe, injector, w_code(), start_fraction=0.0, policy=ConstantMask(0.0))
    assert torch.equal(ones, uniform)
    assert torch.equal(zeros, stock)


def test_spatial_mask_on_a_non_square_latent(sd_pipe):
    injector = install_wplus(sd_pipe.unet, tiny_adapter(sd_pipe.unet))
    spy = Spy(SpatialMask(TemporalSpatialScheduler.from_preset("balanced")))
    height, width = 32, 24  # latent 16 x 12, then 8 x 6 one level down
    spatial = latents_of(
        sd_pipe, injector, w_code(), start_fraction=0.0, policy=spy, height=height, width=width
    )
    assert spatial.shape == (1, 4, 16, 12)
    assert {grid for _, grid, _ in spy.seen} == {(16, 12), (8, 6)}
    uniform = latents_of(sd_pipe, injector, w_code(), start_fraction=0.0, height=height, width=width)
    assert not torch.equal(spatial, uniform)


def test_token_grids_and_batches():
    assert latent_token_grid((16, 12), 192) == (16, 12)
    assert latent_token_grid((16, 12), 48) == (8, 6)
    assert latent_token_grid((13, 13), 16) == (4, 4)  # 13 -> 7 -> 4, as stride-2 convs round up
    with pytest.raises(IdgenError, match="50 attention tokens do not fit a 16x12 latent"):
        latent_token_grid((16, 12), 50)
    cond, uncond = torch.ones(1, 4, 8), torch.zeros(1, 4, 8)
    both = cfg_id_tokens(cond, uncond, 3)
    assert both.shape == (6, 4, 8) and both[:3].eq(0).all() and both[3:].eq(1).all()
    assert cfg_id_tokens(cond, None, 2).shape == (2, 4, 8)
    with pytest.raises(IdgenError, match="identity tokens have batch 2, the generation has batch 3"):
        cfg_id_tokens(torch.ones(2, 4, 8), None, 3)


def test_bad_inputs_are_named(sd_pipe):
    adapter = tiny_adapter(sd_pipe.unet)
    injector = install_wplus(sd_pipe.unet, adapter)
    with (
        pytest.raises(IdgenError, match="identity tokens are 5 wide, the adapter expects 32"),
        injector.run(WPlusRun(torch.zeros(1, 4, 5))),
    ):
        pass
    with pytest.raises(
        IdgenError, match=r"W\+ code must have shape \(18, 16\) or \(B, 18, 16\), got \(18, 512\)"
    ):
        latents_of(sd_pipe, injector, torch.zeros(18, 512))
    with pytest.raises(IdgenError, match="W\\+ code has batch 2, the generation has batch 1"):
        latents_of(sd_pipe, injector, w_code(batch=2))
    with (
        pytest.raises(IdgenError, match="an identity run is already active"),
        injector.run(WPlusRun(torch.zeros(1, 4, 32))),
        injector.run(WPlusRun(torch.zeros(1, 4, 32))),
    ):
        pass
    adapter.to(torch.float64)
    with pytest.raises(IdgenError, match=r"the W\+ adapter is torch\.float64 but the UNet is torch\.float32"):
        latents_of(sd_pipe, injector, w_code(), start_fraction=0.0)
    with pytest.raises(IdgenError, match="already installed on this UNet"):
        install_wplus(sd_pipe.unet, adapter)
    with pytest.raises(CheckpointError, match="768-wide tokens"):
        install_wplus(sd_pipe.unet, WPlusAdapter(WPlusConfig(attention_layers=())))
