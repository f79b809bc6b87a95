"""Low-VRAM FLUX: quantised and fp8 transformers, diffusers' caches and torch.compile with identity hooks.

Every check runs the tiny random pipeline against the plain one in the same test: bit-exact where the
arithmetic is the same, within a stated tolerance where quantisation or a cache changes it.
"""

from __future__ import annotations

import json

import pytest
import torch

from idgen.errors import CheckpointError, IdgenError
from idgen.pipelines import lowvram
from idgen.pipelines.lowvram import QUANTIZE_CHOICES, check_quantize, quantize_transformer
from idgen.pipelines.pulid_flux import IdentityFluxPipeline
from idgen.pipelines.tiny import tiny_flux_pipeline, tiny_identity_encoder, tiny_pulid_adapter
from tests.test_flux_injection import features

SIZE = dict(height=64, width=96, num_inference_steps=4)  # 4x6 token grid
PROMPT = "a photo of a person on a beach"


def wrap(flux, dtype=torch.float32):
    return IdentityFluxPipeline(flux, tiny_pulid_adapter(0).to(dtype), tiny_identity_encoder(0))


def latents(pipe, mode="spatial", **kwargs):
    args = dict(id_features=features(), seed=7, output_type="latent", mode=mode, **SIZE)
    args.update(kwargs)
    return pipe(PROMPT, **args).images


@pytest.fixture(scope="module")
def plain():
    """The plain float32 pipeline's latents: spatial identity and none."""
    pipe = wrap(tiny_flux_pipeline(0))
    return {mode: latents(pipe, mode) for mode in ("spatial", "none")}


def strength(with_id, without):
    return (with_id - without).norm().item()


# Largest |latent - plain latent| on the tiny model (4 steps, seed 7; latents of unit scale, up to ~2.5),
# about 2x what was measured: fp8 0.075, int8 0.076, int8-quanto 0.084, fp8-quanto 0.107, nf4 0.064.
QUANTISED_TOLERANCE = {"fp8": 0.15, "int8": 0.15, "int8-quanto": 0.2, "fp8-quanto": 0.2, "nf4": 0.15}


@pytest.mark.parametrize("scheme", [s for s in QUANTIZE_CHOICES if s != "none"])
def test_wrapping_a_quantised_transformer_works(plain, scheme):
    flux = tiny_flux_pipeline(0)
    quantize_transformer(flux.transformer, scheme)
    pipe = wrap(flux)
    # The identity networks keep their own float32, whatever the transformer stores its weights in.
    assert {p.dtype for p in pipe.adapter.parameters()} == {torch.float32}
    spatial, none = latents(pipe, "spatial"), latents(pipe, "none")
    assert (spatial - plain["spatial"]).abs().max().item() < QUANTISED_TOLERANCE[scheme]
    # The identity's effect on the image stays what it is on the plain transformer (within 5%).
    assert strength(spatial, none) == pytest.approx(strength(plain["spatial"], plain["none"]), rel=0.05)
    # A zero weight is still exactly no identity on the quantised transformer.
    assert torch.equal(latents(pipe, "spatial", id_weight=0.0), none)


def test_quantised_weights_are_really_stored_quantised():
    for scheme, stored in (("fp8", torch.float8_e4m3fn), ("nf4", torch.uint8)):
        flux = tiny_flux_pipeline(0)
        quantize_transformer(flux.transformer, scheme)
        assert flux.transformer.transformer_blocks[0].attn.to_q.weight.dtype == stored


def test_fp8_storage_with_bfloat16_compute_runs_the_identity_in_bfloat16(plain):
    flux = tiny_flux_pipeline(0).to(dtype=torch.bfloat16)
    flux.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    pipe = wrap(flux)  # a float32 adapter joins the transformer's compute dtype, never its fp8 storage
    assert {p.dtype for p in pipe.adapter.parameters()} == {torch.bfloat16}
    spatial, none = latents(pipe, "spatial"), latents(pipe, "none")
    assert spatial.dtype == torch.bfloat16
    # Relative RMS against float32; the error depends on the CPU's bfloat16 kernels: 2.5% measured on an
    # AVX512-BF16 x86 CPU (largest element 0.21, against 0.10 on the machine where this test was written).
    error = (spatial.float() - plain["spatial"]).norm() / plain["spatial"].norm()
    assert error.item() < 0.05
    assert strength(spatial.float(), none.float()) == pytest.approx(
        strength(plain["spatial"], plain["none"]), rel=0.05
    )


def write_gguf_q8_0(tensors, path):
    """Named tensors (a state dict, under whichever key names) in a GGUF file: Q8_0 for each matrix whose
    rows split into Q8_0's 32-value blocks, float32 for the rest."""
    gguf = pytest.importorskip("gguf", reason="GGUF needs the gguf package (idgen[lowvram])")
    writer = gguf.GGUFWriter(str(path), arch="flux")
    q8_0 = gguf.GGMLQuantizationType.Q8_0
    for name, tensor in tensors.items():
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[1] % 32 == 0:
            packed = gguf.quants.quantize(array, q8_0)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_wrapping_a_gguf_transformer_works(plain, tmp_path):
    flux = tiny_flux_pipeline(0)
    flux.transformer.save_config(tmp_path)
    write_gguf_q8_0(flux.transformer.state_dict(), tmp_path / "transformer-q8_0.gguf")
    transformer = lowvram.load_gguf_transformer(tmp_path / "transformer-q8_0.gguf", tmp_path, torch.float32)
    assert transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.uint8  # still packed Q8_0
    flux.transformer = transformer
    pipe = wrap(flux)
    spatial, none = latents(pipe, "spatial"), latents(pipe, "none")
    assert (spatial - plain["spatial"]).abs().max().item() < 0.03  # measured 0.009
    assert strength(spatial, none) == pytest.approx(strength(plain["spatial"], plain["none"]), rel=0.05)


def test_a_gguf_file_of_another_architecture_is_refused(tmp_path):
    flux = tiny_flux_pipeline(0)
    write_gguf_q8_0(flux.transformer.state_dict(), tmp_path / "t.gguf")
    other = dict(flux.transformer.config)
    other["num_single_layers"] = 6  # the file has 5 single blocks
    from diffusers import FluxTransformer2DModel

    FluxTransformer2DModel.from_config(other).save_config(tmp_path)
    with pytest.raises(CheckpointError, match=r"t\.gguf does not fit the transformer of"):
        lowvram.load_gguf_transformer(tmp_path / "t.gguf", tmp_path, torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="diffusers' bitsandbytes loading needs a CUDA GPU")
def test_wrapping_a_bitsandbytes_loaded_transformer_works(plain, tmp_path):  # pragma: no cover - GPU only
    from diffusers import BitsAndBytesConfig, FluxTransformer2DModel

    flux = tiny_flux_pipeline(0)
    flux.transformer.save_pretrained(tmp_path)
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    flux.transformer = FluxTransformer2DModel.from_pretrained(tmp_path, quantization_config=config)
    flux.to("cuda")
    spatial = latents(wrap(flux), "spatial").cpu()
    assert (spatial - plain["spatial"]).abs().max().item() < QUANTISED_TOLERANCE["nf4"]


def test_unknown_or_unserved_schemes_get_one_line_errors(monkeypatch):
    with pytest.raises(IdgenError, match="unknown quantisation 'int3'; choose one of none, fp8"):
        check_quantize("int3")
    monkeypatch.setattr(lowvram, "installed", lambda module: False)
    with pytest.raises(
        IdgenError, match=r"--quantize int8 needs the torchao package: pip install 'torchao>="
    ):
        check_quantize("int8")
    with pytest.raises(
        IdgenError, match=r"--quantize nf4 needs the bitsandbytes package: pip install 'bitsandbytes"
    ):
        check_quantize("nf4", "cuda")
    check_quantize("fp8")  # no package needed
    check_quantize("none")
    with pytest.raises(IdgenError, match="fp8 cannot run on mps"):
        check_quantize("fp8", "mps")


# --- diffusers' caches ---------------------------------------------------------------------------------

CACHE_STEPS = 8


class PointLog:
    """A recorder that keeps which injection points added the identity at each step."""

    def __init__(self) -> None:
        self.points: dict[int, list[str]] = {}

    def record(self, step, t, point, mask, heads_out, grid) -> None:
        self.points.setdefault(step, []).append(point)


@pytest.fixture(scope="module")
def cached():
    """A wrapped tiny pipeline; its latents without a cache (uniform identity and none), and a counter of
    the steps on which the last block really ran."""
    pipe = wrap(tiny_flux_pipeline(0))
    ran: list[int] = []
    tail = pipe.flux.transformer.single_transformer_blocks[-1]
    tail.norm.register_forward_hook(lambda *args: ran.append(1))
    plain = {mode: latents(pipe, mode, num_inference_steps=CACHE_STEPS) for mode in ("uniform", "none")}
    return pipe, plain, ran


def cache_run(pipe, config, ran):
    """(uniform latents, none latents, steps the last block ran, points logged) with `config` enabled."""
    log = PointLog()
    pipe.flux.transformer.enable_cache(config)
    try:
        ran.clear()
        uniform = latents(pipe, "uniform", num_inference_steps=CACHE_STEPS, recorder=log)
        computed = len(ran)
        none = latents(pipe, "none", num_inference_steps=CACHE_STEPS)
    finally:
        pipe.flux.transformer.disable_cache()
    return uniform, none, computed, log.points


def test_first_block_cache_skips_the_identity_with_the_blocks_it_skips(cached):
    from diffusers import FirstBlockCacheConfig

    pipe, plain, ran = cached
    uniform, none, computed, points = cache_run(pipe, FirstBlockCacheConfig(threshold=0.5), ran)
    assert 0 < computed < CACHE_STEPS  # the cache did skip steps (3 of 8 ran on the tiny model)
    all_points = ["double.0", "double.2", "single.0", "single.4"]
    # A skipped step runs the first block alone: its residual is the only one added; the others come back
    # once, inside the residual the cache reuses.
    assert sorted(len(p) for p in points.values()) == [1] * (CACHE_STEPS - computed) + [4] * computed
    assert all(p in (["double.0"], all_points) for p in points.values())
    # Identity strength equals the uncached one within the cache's own error on the run without identity
    # (0.66 on latents of norm 44.5; strengths 18.65 and 18.71; hooks outside the cache gave 21.65).
    cache_error = (none - plain["none"]).norm().item()
    assert cache_error > 0
    assert abs(strength(uniform, none) - strength(plain["uniform"], plain["none"])) <= cache_error


def test_a_first_block_cache_that_never_skips_is_bit_identical(cached):
    from diffusers import FirstBlockCacheConfig

    pipe, plain, ran = cached
    uniform, none, computed, _ = cache_run(pipe, FirstBlockCacheConfig(threshold=0.0), ran)
    assert computed == CACHE_STEPS
    assert torch.equal(uniform, plain["uniform"]) and torch.equal(none, plain["none"])


def other_caches(pipe):
    from diffusers import MagCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

    return {
        "pyramid-attention-broadcast": PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 1001),
            current_timestep_callback=lambda: pipe.flux.current_timestep,
        ),
        "taylorseer": TaylorSeerCacheConfig(),
        "magcache": MagCacheConfig(
            num_inference_steps=CACHE_STEPS,
            mag_ratios=[1.0] * CACHE_STEPS,
            threshold=0.5,
            retention_ratio=0.25,
        ),
    }


@pytest.mark.parametrize("name", ["pyramid-attention-broadcast", "taylorseer", "magcache"])
def test_other_caches_keep_the_identity_strength(cached, name):
    pipe, plain, ran = cached
    uniform, none, _, _ = cache_run(pipe, other_caches(pipe)[name], ran)
    cache_error = (none - plain["none"]).norm().item()
    assert cache_error > 0  # the cache changed something
    assert abs(strength(uniform, none) - strength(plain["uniform"], plain["none"])) <= cache_error


def test_wrapping_a_transformer_whose_cache_is_on_is_refused():
    from diffusers import FirstBlockCacheConfig

    flux = tiny_flux_pipeline(0)
    flux.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.5))
    with pytest.raises(IdgenError, match=r"a diffusers cache is already enabled .* wrap it first"):
        wrap(flux)


# --- torch.compile -------------------------------------------------------------------------------------


COMPILE_CALLS = [("spatial", 1.0), ("spatial", 1.0), ("uniform", 1.0), ("uniform", 0.5), ("uniform", 0.3),
                 ("none", 1.0), ("spatial", 0.7), ("spatial", 0.4), ("uniform", 1.0)]  # fmt: skip
# Graphs compiled so far after each call: spatial mode one per stage of its schedule (early, mid, late),
# uniform one, none one; id_weight is a graph input (no recompile); no step or repeated call recompiles.
COMPILED_GRAPHS = [3, 3, 4, 4, 4, 5, 5, 5, 5]


@pytest.mark.slow
@pytest.mark.parametrize("order", ["compile-after-wrapping", "compile-before-wrapping"])
def test_compiled_transformer_takes_the_identity_without_graph_breaks_or_per_call_recompiles(plain, order):
    """fullgraph=True refuses any graph break, so running at all proves none. Graphs are counted with
    dynamo's counters. backend="eager" traces exactly as inductor would (CPU inductor codegen is slow)."""
    from torch._dynamo.utils import counters

    torch.compiler.reset()
    counters.clear()
    flux = tiny_flux_pipeline(0)
    if order == "compile-before-wrapping":
        flux.transformer = torch.compile(flux.transformer, fullgraph=True, backend="eager")
    pipe = wrap(flux)
    if order == "compile-after-wrapping":
        flux.transformer = torch.compile(flux.transformer, fullgraph=True, backend="eager")
    graphs = []
    for mode, id_weight in COMPILE_CALLS:
        out = latents(pipe, mode, id_weight=id_weight)
        graphs.append(counters["stats"]["unique_graphs"])
        if (mode, id_weight) == ("spatial", 1.0):
            assert torch.equal(out, plain["spatial"])  # the same arithmetic as eager
    assert not counters["graph_break"]
    assert graphs == COMPILED_GRAPHS


def memory_benchmark():
    """benchmarks/memory.py as a module, wherever the repository is."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "memory.py"
    spec = importlib.util.spec_from_file_location("idgen_memory_benchmark", path)
    assert spec is not None and spec.loader is not None
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    return memory


def test_memory_benchmark_measures_each_option_against_the_plain_pipeline(tmp_path):
    memory = memory_benchmark()
    out = tmp_path / "rows.json"
    options = ["none", "fp8", "nf4", "model-offload"]
    rows = memory.main(["--options", *options, "--steps", "1", "--size", "32", "--json", str(out)])
    assert json.loads(out.read_text()) == rows and [r["option"] for r in rows] == options
    assert [p.name for p in tmp_path.iterdir()] == ["rows.json"]  # written whole, no temporary file left
    by_option = {row["option"]: row for row in rows}
    plain = by_option["none"]["weights_mb"]
    # Weights as stored: fp8 keeps 1 byte per quantised value, nf4 half a byte (plus scales).
    assert by_option["nf4"]["weights_mb"] < by_option["fp8"]["weights_mb"] < plain / 2
    assert all(row["step_s"] > 0 for row in rows if not row.get("skipped"))
    if not torch.cuda.is_available():
        assert by_option["model-offload"]["skipped"] == "offloading to the CPU needs an accelerator device"


# --- the CLI -------------------------------------------------------------------------------------------


def cli_generate(tmp_path, *extra):
    from idgen.cli import main
    from tests.test_cli import REFERENCE, TINY

    size = ["--width", "64", "--height", "48", "--steps", "2"]
    argv = ["generate", *TINY, "--prompt", "a person on a beach", "--id-image", str(REFERENCE), *size,
            "--out", str(tmp_path / "out.png"), *extra]  # fmt: skip
    try:
        return main(argv)
    except SystemExit as exit:
        return exit.code


def test_cli_quantize_generates_with_a_quantised_transformer(tmp_path, monkeypatch):
    quantised = []
    real = lowvram.quantize_transformer
    monkeypatch.setattr(lowvram, "quantize_transformer", lambda t, s: quantised.append(s) or real(t, s))
    assert cli_generate(tmp_path, "--quantize", "fp8") == 0
    assert quantised == ["fp8"] and (tmp_path / "out.png").is_file()


def test_cli_quantize_without_its_package_is_one_line_before_any_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lowvram, "installed", lambda module: False)
    monkeypatch.setattr("idgen.load", lambda *a, **k: pytest.fail("a model was loaded"))
    assert cli_generate(tmp_path, "--quantize", "int8") != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs the torchao package: pip install 'torchao>=" in err
    assert not (tmp_path / "out.png").exists()


def test_memory_benchmark_full_path_runs_on_a_small_stand_in(monkeypatch):
    """--full's code path (a transformer and adapter built in bf16, one injected call per step), on the
    tiny sizes: the full FLUX.1-dev sizes need a GPU."""
    from idgen.pipelines.tiny import TINY_FLUX_TRANSFORMER, TINY_PULID

    memory = memory_benchmark()
    monkeypatch.setattr(memory, "FULL_MODEL", (TINY_FLUX_TRANSFORMER, TINY_PULID))
    rows = memory.main(
        ["--full", "--device", "cpu", "--options", "none", "int8", "--steps", "1", "--size", "64"]
    )
    plain, int8 = rows
    assert int8["weights_mb"] < plain["weights_mb"] and plain["step_s"] > 0
