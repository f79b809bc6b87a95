"""The W+ branch on FLUX: same injector and gate as PuLID, so the same equivalences hold."""

import pytest
import torch

from idgen.backbones.flux import FluxIdentityInjector, InjectionRun, injection_points
from idgen.core.gate import ConstantMask, UniformMask
from idgen.errors import CheckpointError
from idgen.models.wplus_flux import (
    WPlusFluxAdapter,
    WPlusFluxConfig,
    load_wplus_flux_adapter,
    save_wplus_flux_adapter,
)
from idgen.pipelines.tiny import tiny_flux_pipeline

CONFIG = WPlusFluxConfig(num_layers=6, w_dim=8, groups=((0, 2), (2, 4), (4, 6)), heads=2)


@pytest.fixture(scope="module")
def flux():
    return tiny_flux_pipeline()


def branch(flux) -> WPlusFluxAdapter:
    t = flux.transformer
    config = WPlusFluxConfig(
        CONFIG.num_layers, CONFIG.w_dim, CONFIG.groups, t.inner_dim, CONFIG.heads,
        len(injection_points(len(t.transformer_blocks), len(t.single_transformer_blocks))),
    )  # fmt: skip
    torch.manual_seed(0)
    return WPlusFluxAdapter(config).eval()


def run_latents(flux, injector, adapter, policy, id_weight=1.0):
    w = torch.randn(1, CONFIG.num_layers, CONFIG.w_dim, generator=torch.Generator().manual_seed(3))
    tokens = adapter.encode(w.flatten(1))
    call = dict(prompt="a person", height=32, width=48, num_inference_steps=3, output_type="latent",
                generator=torch.Generator().manual_seed(1))  # fmt: skip
    if policy is None:
        return flux(**call).images
    run = InjectionRun(id_tokens=tokens, policy=policy, id_weight=id_weight)
    with injector.run(run):
        return flux(**call, callback_on_step_end=run.step_end_callback).images


def test_ones_mask_equals_uniform_and_zero_weight_equals_stock(flux):
    adapter = branch(flux)
    injector = FluxIdentityInjector(flux.transformer, adapter)
    try:
        stock = run_latents(flux, injector, adapter, None)
        uniform = run_latents(flux, injector, adapter, UniformMask())
        assert torch.equal(run_latents(flux, injector, adapter, ConstantMask(1.0)), uniform)
        assert torch.equal(run_latents(flux, injector, adapter, UniformMask(), id_weight=0.0), stock)
        assert not torch.allclose(uniform, stock)
    finally:
        injector.remove()


def test_projections_start_from_each_block_s_own_q_k_v(flux):
    adapter = branch(flux)
    t = flux.transformer
    points = injection_points(len(t.transformer_blocks), len(t.single_transformer_blocks))
    adapter.init_from_transformer(t, points)
    first, last = adapter.identity_attention(0).proj, adapter.identity_attention(len(points) - 1).proj
    assert torch.equal(first.to_k_wplus.weight, t.transformer_blocks[0].attn.to_k.weight)
    assert torch.equal(
        last.to_q_wplus.weight, t.single_transformer_blocks[points[-1].block_index].attn.to_q.weight
    )


def test_save_and_load_are_strict_round_trips(flux, tmp_path):
    adapter = branch(flux)
    save_wplus_flux_adapter(adapter, tmp_path / "b")
    again = load_wplus_flux_adapter(tmp_path / "b")
    for (k, a), (_, b) in zip(adapter.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    (tmp_path / "b" / "config.json").write_text('{"kind": "pulid"}')
    with pytest.raises(CheckpointError, match="not a W\\+ FLUX branch"):
        load_wplus_flux_adapter(tmp_path / "b")


def test_a_branch_for_another_width_is_refused(flux):
    config = WPlusFluxConfig(6, 8, ((0, 6),), ca_dim=flux.transformer.inner_dim * 2, heads=2, num_ca=4)
    with pytest.raises(CheckpointError, match="wide"):
        FluxIdentityInjector(flux.transformer, WPlusFluxAdapter(config))
