"""PuLID's residual on diffusers FLUX: equivalences that pin the arithmetic down exactly."""

import pytest
import torch

from idgen.backbones.flux import FluxIdentityInjector, InjectionRun, injection_points
from idgen.core.gate import ConstantMask, SpatialMask, UniformMask
from idgen.core.schedule import TemporalSpatialScheduler
from idgen.errors import CheckpointError
from idgen.identity.base import IdentityFeatures
from idgen.models.pulid import PuLIDAdapter
from idgen.pipelines.tiny import TINY_PULID
from idgen.recording import MaskRecorder

SIZE = dict(height=64, width=96, num_inference_steps=6)  # 4x6 token grid: non-square on purpose


def features(seed: int = 1) -> IdentityFeatures:
    g = torch.Generator().manual_seed(seed)
    c = TINY_PULID
    return IdentityFeatures(
        id_embedding=torch.randn(1, c.id_dim, generator=g),
        vit_hidden=[torch.randn(1, 17, c.vit_dim, generator=g) for _ in range(5)],
    )


def latents(pipe, **kwargs):
    args = dict(prompt="a photo of a person on a beach", id_features=features(), seed=7, output_type="latent")
    args.update(SIZE)
    args.update(kwargs)
    return pipe(**args).images


def test_flux1_has_the_twenty_reference_injection_points():
    points = injection_points(19, 38)
    assert [p.block_index for p in points if p.kind == "double"] == list(range(0, 19, 2))
    assert [p.block_index for p in points if p.kind == "single"] == list(range(0, 38, 4))
    assert [p.ca_index for p in points] == list(range(20))


def test_mask_of_ones_is_bit_identical_to_uniform(tiny_pipe):
    uniform = latents(tiny_pipe, mode="uniform")
    ones = latents(tiny_pipe, policy=ConstantMask(1.0))
    assert torch.equal(uniform, ones)


def test_zero_weight_and_zero_mask_equal_no_identity(tiny_pipe):
    none = latents(tiny_pipe, mode="none")
    assert torch.equal(latents(tiny_pipe, mode="uniform", id_weight=0.0), none)
    assert torch.equal(latents(tiny_pipe, mode="spatial", id_weight=0.0), none)
    assert torch.equal(latents(tiny_pipe, policy=ConstantMask(0.0)), none)
    # ...and the identity does change the image, so the equalities above are not vacuous.
    assert not torch.allclose(latents(tiny_pipe, mode="uniform"), none)


def test_spatial_differs_from_uniform_and_from_none(tiny_pipe):
    spatial, uniform, none = (latents(tiny_pipe, mode=m) for m in ("spatial", "uniform", "none"))
    assert not torch.allclose(spatial, uniform)
    assert not torch.allclose(spatial, none)


def transformer_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows, cols = 3, 5
    img_ids = torch.zeros(rows * cols, 3)
    img_ids[:, 1] = torch.arange(rows).repeat_interleave(cols).float()
    img_ids[:, 2] = torch.arange(cols).repeat(rows).float()
    return dict(
        hidden_states=torch.randn(2, rows * cols, 64, generator=g),
        encoder_hidden_states=torch.randn(2, 7, 32, generator=g),
        pooled_projections=torch.randn(2, 32, generator=g),
        timestep=torch.tensor([0.5, 0.5]),
        img_ids=img_ids,
        txt_ids=torch.zeros(7, 3),
        guidance=torch.tensor([4.0, 4.0]),
    )


def reference_pulid_forward(transformer, adapter, id_tokens, id_weight, inputs):
    """PuLID-FLUX's own loop, on diffusers blocks: x += w * CA(id, x) after double i%2==0, single i%4==0."""
    t = transformer
    hidden = t.x_embedder(inputs["hidden_states"])
    temb = t.time_text_embed(
        inputs["timestep"] * 1000, inputs["guidance"] * 1000, inputs["pooled_projections"]
    )
    enc = t.context_embedder(inputs["encoder_hidden_states"])
    rope = t.pos_embed(torch.cat((inputs["txt_ids"], inputs["img_ids"]), dim=0))
    ca = 0
    for i, block in enumerate(t.transformer_blocks):
        enc, hidden = block(hidden_states=hidden, encoder_hidden_states=enc, temb=temb, image_rotary_emb=rope)
        if i % 2 == 0:
            hidden = hidden + id_weight * adapter.pulid_ca[ca](id_tokens, hidden)
            ca += 1
    for i, block in enumerate(t.single_transformer_blocks):
        enc, hidden = block(hidden_states=hidden, encoder_hidden_states=enc, temb=temb, image_rotary_emb=rope)
        if i % 4 == 0:
            hidden = hidden + id_weight * adapter.pulid_ca[ca](id_tokens, hidden)
            ca += 1
    assert ca == len(adapter.pulid_ca)
    return t.proj_out(t.norm_out(hidden, temb))


@torch.no_grad()
@pytest.mark.parametrize("id_weight", [1.0, 0.35])
def test_uniform_equals_the_reference_arithmetic(tiny_pipe, id_weight):
    transformer, adapter = tiny_pipe.flux.transformer, tiny_pipe.adapter
    inputs = transformer_inputs()
    id_tokens = adapter.encode(features().id_embedding, features().vit_hidden)
    expected = reference_pulid_forward(transformer, adapter, id_tokens, id_weight, inputs)
    with tiny_pipe.injector.run(InjectionRun(id_tokens=id_tokens, id_weight=id_weight, policy=UniformMask())):
        ours = transformer(**inputs).sample
    assert torch.equal(ours, expected)
    stock = transformer(**inputs).sample  # hooks are inert outside a run
    assert not torch.allclose(stock, expected)


def test_hooks_can_be_removed_and_transformer_is_stock_again(tiny_pipe):
    transformer, adapter = tiny_pipe.flux.transformer, tiny_pipe.adapter
    inputs = transformer_inputs()
    stock = transformer(**inputs).sample
    extra = FluxIdentityInjector(transformer, adapter)
    run = InjectionRun(id_tokens=adapter.encode(features().id_embedding, features().vit_hidden))
    with extra.run(run):
        assert not torch.allclose(transformer(**inputs).sample, stock)
    extra.remove()
    with extra.run(run):  # no hook is left to act on the run
        assert torch.equal(transformer(**inputs).sample, stock)


def test_adapter_must_fit_the_transformer(tiny_pipe):
    from dataclasses import replace

    wide = PuLIDAdapter(replace(TINY_PULID, ca_dim=48))
    with pytest.raises(CheckpointError, match="for transformer width 48, this transformer is 32 wide"):
        FluxIdentityInjector(tiny_pipe.flux.transformer, wide)
    fewer = PuLIDAdapter(replace(TINY_PULID, num_ca=3))
    with pytest.raises(CheckpointError, match="has 3 cross-attentions but this transformer has 4"):
        FluxIdentityInjector(tiny_pipe.flux.transformer, fewer)


def test_same_seed_same_image_other_seed_other_image(tiny_pipe):
    a = latents(tiny_pipe, mode="spatial", seed=11)
    b = latents(tiny_pipe, mode="spatial", seed=11)
    c = latents(tiny_pipe, mode="spatial", seed=12)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_recorder_keeps_every_step_and_point_and_follows_the_schedule(tiny_pipe):
    recorder = MaskRecorder()
    scheduler = TemporalSpatialScheduler.from_preset("v1")
    latents(tiny_pipe, policy=SpatialMask(scheduler), recorder=recorder)
    steps = SIZE["num_inference_steps"]
    assert len(recorder.records) == steps * 4
    assert recorder.steps() == list(range(steps))
    assert {r.point for r in recorder.records} == {"double.0", "double.2", "single.0", "single.4"}
    ts = [r.t for r in recorder.records if r.point == "double.0"]
    assert ts == sorted(ts, reverse=True) and ts[0] > 0.7
    prior = scheduler.prior((4, 6))
    for r in recorder.records:
        assert r.mask.shape == (1, 4, 6) and r.ca_norm.shape == (1, 4, 6)
        if r.t > 0.7:
            assert torch.equal(r.mask[0], prior)
    late = [r for r in recorder.records if r.t <= 0.3]
    assert late and all(r.mask.min() >= 0.5 for r in late)  # v1 late floor
    per_step = recorder.mean_mask_per_step()
    assert not torch.allclose(per_step[0][2], per_step[-1][2])  # the mask changes over the steps


def test_start_step_skips_early_steps(tiny_pipe):
    recorder = MaskRecorder()
    latents(tiny_pipe, mode="uniform", start_step=4, recorder=recorder)
    assert recorder.steps() == [4, 5]
    assert torch.equal(latents(tiny_pipe, mode="uniform", start_step=99), latents(tiny_pipe, mode="none"))


def test_true_cfg_uses_uncond_id_tokens_on_the_negative_pass():
    cond, uncond = torch.ones(1, 2, 3), torch.zeros(1, 2, 3)
    run = InjectionRun(id_tokens=cond, uncond_id_tokens=uncond)
    run.advance(0.9, (2, 2))
    assert run.step == 0 and run.tokens_for_call() is cond
    run.advance(0.9, (2, 2))  # the second call since the step began: the negative pass
    assert run.step == 0 and run.tokens_for_call() is uncond
    run.end_step()  # the pipeline marks the step's end (diffusers' callback_on_step_end)
    run.advance(0.8, (2, 2))
    assert run.step == 1 and run.tokens_for_call() is cond


def test_true_cfg_end_to_end(tiny_pipe):
    recorder = MaskRecorder()
    with_cfg = latents(
        tiny_pipe, mode="uniform", true_cfg_scale=3.0, negative_prompt="blurry", recorder=recorder
    )
    assert len(recorder.records) == 2 * SIZE["num_inference_steps"] * 4  # cond + uncond pass per step
    assert not torch.allclose(with_cfg, latents(tiny_pipe, mode="uniform"))


def test_entropy_extractor_and_fixed_mask_run_through_the_pipeline(tiny_pipe):
    from idgen.core.masks import AttentionEntropyExtractor, FixedMaskExtractor

    scheduler = TemporalSpatialScheduler.from_preset("v1", early_threshold=1.0)  # no prior stage
    recorder = MaskRecorder()
    latents(tiny_pipe, policy=SpatialMask(scheduler, AttentionEntropyExtractor()), recorder=recorder)
    assert all(r.mask.shape == (1, 4, 6) for r in recorder.records)
    # A fixed left-half mask through the mid stage: the refined mask is exactly refine(resized mask).
    user = torch.zeros(40, 60)
    user[:, :30] = 1.0
    mid_only = TemporalSpatialScheduler.from_preset("v1", early_threshold=1.0, late_threshold=0.0)
    recorder = MaskRecorder()
    latents(tiny_pipe, policy=SpatialMask(mid_only, FixedMaskExtractor(user)), recorder=recorder)
    expected = SpatialMask(mid_only).refiner(torch.tensor([[[1.0, 1, 1, 0, 0, 0]] * 4]))
    for r in recorder.records:
        assert torch.equal(r.mask, expected)


def test_mask_box_and_user_mask():
    from idgen.pipelines.pulid_flux import mask_box

    mask = torch.zeros(10, 20)
    assert mask_box(mask) is None
    mask[2:5, 10:15] = 1.0
    assert mask_box(mask) == (0.5, 0.2, 0.75, 0.5)


def test_the_pipeline_spatial_policy_is_a_template_for_presets(tiny_pipe):
    from dataclasses import replace

    from idgen.core.gate import AttentionAnchor
    from idgen.core.refine import GridScaledRefiner, MaskRefiner
    from idgen.pipelines.pulid_flux import mask_policy

    assert tiny_pipe.spatial == SpatialMask(TemporalSpatialScheduler.from_preset("v1"))  # the authors'
    world = SpatialMask(
        TemporalSpatialScheduler.from_preset("v1"), refiner=GridScaledRefiner(), anchor=AttentionAnchor()
    )
    balanced = mask_policy("spatial", "balanced", spatial=world)
    assert balanced == replace(world, scheduler=TemporalSpatialScheduler.from_preset("balanced"))
    assert mask_policy("spatial", "v1") == SpatialMask(TemporalSpatialScheduler(), refiner=MaskRefiner())
    # The pipeline's template is what mode="spatial" runs: same latents as passing it as the policy.
    recorder = MaskRecorder()
    tiny_pipe.spatial = world
    try:
        by_mode = latents(tiny_pipe, mode="spatial", preset="balanced", recorder=recorder)
    finally:
        tiny_pipe.spatial = SpatialMask(TemporalSpatialScheduler.from_preset("v1"))
    assert torch.equal(by_mode, latents(tiny_pipe, policy=balanced))
    early = [r for r in recorder.records if r.t > 0.7]
    prior = TemporalSpatialScheduler.from_preset("balanced").prior((4, 6))
    assert early and any(not torch.equal(r.mask[0], prior.clamp(min=0.3)) for r in early)  # anchored


def test_without_a_preset_the_spatial_mode_keeps_the_models_own_schedule(tiny_pipe):
    from dataclasses import replace

    from idgen.core.refine import GridScaledRefiner
    from idgen.pipelines.pulid_flux import mask_policy

    balanced = TemporalSpatialScheduler.from_preset("balanced")
    own = SpatialMask(balanced, refiner=GridScaledRefiner())
    assert mask_policy("spatial", spatial=own) is own
    assert mask_policy("spatial", "v1", spatial=own) == replace(own, scheduler=TemporalSpatialScheduler())
    assert mask_policy("spatial").scheduler == TemporalSpatialScheduler.from_preset("v1")  # the authors'
    tiny_pipe.spatial = own
    try:
        by_default = latents(tiny_pipe, mode="spatial")
        named = latents(tiny_pipe, mode="spatial", preset="balanced")
        v1 = latents(tiny_pipe, mode="spatial", preset="v1")
    finally:
        tiny_pipe.spatial = SpatialMask(TemporalSpatialScheduler.from_preset("v1"))
    assert torch.equal(by_default, named) and not torch.equal(by_default, v1)


def test_generate_builds_the_models_own_schedule_with_the_users_overrides():
    from idgen.core.refine import GridScaledRefiner
    from idgen.generation import MaskSettings, build_policy

    own = SpatialMask(TemporalSpatialScheduler.from_preset("balanced"), refiner=GridScaledRefiner())
    policy, scheduler = build_policy("spatial", MaskSettings(schedule={"late_floor": 0.6}), own)
    assert scheduler == TemporalSpatialScheduler.from_preset("balanced", late_floor=0.6)
    assert policy == SpatialMask(scheduler, refiner=GridScaledRefiner())
    _, named = build_policy("spatial", MaskSettings(preset="v1", schedule={"late_floor": 0.6}), own)
    assert named == TemporalSpatialScheduler.from_preset("v1", late_floor=0.6)
    _, authors = build_policy("spatial", MaskSettings(), None)
    assert authors == TemporalSpatialScheduler.from_preset("v1")
