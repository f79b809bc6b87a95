"""One FLUX transformer file in place of the base folder's (`idgen.load(..., transformer=)`, `--transformer`):
diffusers' layout on tiny models, Black Forest Labs' and ComfyUI's official key layouts (fp8 and GGUF
included) at FLUX's real width, and one-line refusals of files that cannot be loaded."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import idgen
from idgen.cli import main
from idgen.errors import CheckpointError, IdgenError
from idgen.pipelines import lowvram
from idgen.pipelines.tiny import tiny_flux_pipeline
from tests.test_lowvram import write_gguf_q8_0

TINY = ["--pulid", "tiny-random", "--encoder", "tiny-random"]


def original_flux_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers FluxTransformer2DModel state dict under Black Forest Labs' names (their `flux` package's
    modules, as flux1-dev.safetensors stores them): q, k, v fused into one qkv (single blocks: with the
    MLP's input), RMSNorm weights as `scale`, and the final modulation's halves in (shift, scale) order."""
    state, out = dict(state), {}

    def move(src: str, dst: str) -> None:
        for part in ("weight", "bias"):
            if f"{src}.{part}" in state:
                out[f"{dst}.{part}"] = state.pop(f"{src}.{part}")

    def fuse(sources: list[str], dst: str) -> None:
        for part in ("weight", "bias"):
            out[f"{dst}.{part}"] = torch.cat([state.pop(f"{s}.{part}") for s in sources])

    for src, dst in (
        ("x_embedder", "img_in"),
        ("context_embedder", "txt_in"),
        ("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
        ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
        ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
        ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
        ("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
        ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
        ("proj_out", "final_layer.linear"),
    ):
        move(src, dst)
    for part in ("weight", "bias"):
        scale, shift = state.pop(f"norm_out.linear.{part}").chunk(2)
        out[f"final_layer.adaLN_modulation.1.{part}"] = torch.cat([shift, scale])
    i = 0
    while f"transformer_blocks.{i}.norm1.linear.weight" in state:
        src, dst = f"transformer_blocks.{i}", f"double_blocks.{i}"
        move(f"{src}.norm1.linear", f"{dst}.img_mod.lin")
        move(f"{src}.norm1_context.linear", f"{dst}.txt_mod.lin")
        fuse([f"{src}.attn.to_{x}" for x in "qkv"], f"{dst}.img_attn.qkv")
        fuse([f"{src}.attn.add_{x}_proj" for x in "qkv"], f"{dst}.txt_attn.qkv")
        for stream, q, k in (("img", "norm_q", "norm_k"), ("txt", "norm_added_q", "norm_added_k")):
            out[f"{dst}.{stream}_attn.norm.query_norm.scale"] = state.pop(f"{src}.attn.{q}.weight")
            out[f"{dst}.{stream}_attn.norm.key_norm.scale"] = state.pop(f"{src}.attn.{k}.weight")
        move(f"{src}.attn.to_out.0", f"{dst}.img_attn.proj")
        move(f"{src}.attn.to_add_out", f"{dst}.txt_attn.proj")
        for ff, stream in (("ff", "img"), ("ff_context", "txt")):
            move(f"{src}.{ff}.net.0.proj", f"{dst}.{stream}_mlp.0")
            move(f"{src}.{ff}.net.2", f"{dst}.{stream}_mlp.2")
        i += 1
    i = 0
    while f"single_transformer_blocks.{i}.norm.linear.weight" in state:
        src, dst = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        move(f"{src}.norm.linear", f"{dst}.modulation.lin")
        fuse(
            [f"{src}.attn.to_q", f"{src}.attn.to_k", f"{src}.attn.to_v", f"{src}.proj_mlp"], f"{dst}.linear1"
        )
        move(f"{src}.proj_out", f"{dst}.linear2")
        out[f"{dst}.norm.query_norm.scale"] = state.pop(f"{src}.attn.norm_q.weight")
        out[f"{dst}.norm.key_norm.scale"] = state.pop(f"{src}.attn.norm_k.weight")
        i += 1
    assert not state, sorted(state)  # every tensor has its place in the original layout
    return out


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A FLUX transformer at the released width (24 heads of 128, which diffusers' converter of the
    original layout assumes), one block of each kind, bfloat16; its config in a folder."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=128, num_attention_heads=24,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
    ).to(torch.bfloat16)  # fmt: skip
    folder = tmp_path_factory.mktemp("wide")
    model.save_config(folder)
    return model, folder


@pytest.mark.slow
@pytest.mark.parametrize(
    ("prefix", "storage"),
    [("", torch.bfloat16), ("model.diffusion_model.", torch.float8_e4m3fn)],
    ids=["flux1-dev layout", "ComfyUI fp8 layout"],
)
def test_the_original_layouts_load_to_exactly_their_weights(wide, prefix, storage):
    model, folder = wide
    original = original_flux_layout(model.state_dict())
    file = folder / f"flux-{storage}.safetensors"
    save_file({prefix + k: v.to(storage) for k, v in original.items()}, file)
    loaded = lowvram.load_transformer_file(file, folder, torch.bfloat16)
    expected = {k: v.to(storage).to(torch.bfloat16) for k, v in model.state_dict().items()}
    got = loaded.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_a_gguf_file_in_the_original_layout_runs_like_its_weights(wide):
    model, folder = wide
    file = folder / "flux-Q8_0.gguf"
    write_gguf_q8_0(original_flux_layout(model.state_dict()), file)
    loaded = lowvram.load_transformer_file(file, folder, torch.bfloat16)
    assert loaded.transformer_blocks[0].attn.to_q.weight.dtype == torch.uint8  # still packed Q8_0
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 4, 16, generator=g, dtype=torch.bfloat16),
        encoder_hidden_states=torch.randn(1, 3, 32, generator=g, dtype=torch.bfloat16),
        pooled_projections=torch.randn(1, 32, generator=g, dtype=torch.bfloat16),
        timestep=torch.tensor([0.5]),
        guidance=torch.tensor([3.5]),
        img_ids=torch.zeros(4, 3),
        txt_ids=torch.zeros(3, 3),
    )
    with torch.no_grad():
        want, got = model(**inputs).sample.float(), loaded(**inputs).sample.float()
    assert ((got - want).norm() / want.norm()).item() < 0.02  # Q8_0 against bfloat16


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny FLUX folder, and another tiny transformer's weights as one safetensors file."""
    folder = tmp_path_factory.mktemp("base")
    tiny_flux_pipeline(0).save_pretrained(folder)
    other = tiny_flux_pipeline(1).transformer
    save_file(other.state_dict(), folder / "other.safetensors")
    return folder, other


def test_the_file_replaces_the_base_transformer(base):
    folder, other = base
    pipe = idgen.load(
        str(folder), "tiny-random", "tiny-random", device="cpu", transformer=folder / "other.safetensors"
    )
    got = pipe.flux.transformer.state_dict()
    assert all(torch.equal(got[k], v) for k, v in other.state_dict().items())
    plain = idgen.load(str(folder), "tiny-random", "tiny-random", device="cpu")
    assert not torch.equal(
        plain.flux.transformer.x_embedder.weight, pipe.flux.transformer.x_embedder.weight
    )  # the folder's own differs, so the file is what runs
    assert pipe.flux.vae is not None and pipe.flux.text_encoder is not None  # the rest from the base


def test_the_cli_generates_with_a_transformer_file_and_records_it(base, tmp_path):
    folder, _ = base
    from PIL import Image

    Image.new("RGB", (64, 64), "grey").save(tmp_path / "me.png")
    out = tmp_path / "o.png"
    argv = ["generate", "--prompt", "a person", "--id-image", str(tmp_path / "me.png"), "--out", str(out)]
    argv += ["--flux", str(folder), *TINY, "--transformer", str(folder / "other.safetensors"), "--steps", "2"]
    assert main(argv) == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["parameters"]["transformer"] == str(folder / "other.safetensors")
    assert sidecar["model"] == {
        "flux": str(folder),
        "pulid": "tiny-random",
        "encoder": "tiny-random",
        "transformer": str(folder / "other.safetensors"),
    }


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.safetensors", None, "transformer file not found"),
        ("weights.bin", b"x", "a transformer file is .safetensors or .sft or .gguf, not 'weights.bin'"),
        ("garbage.safetensors", b"not a safetensors header", "is not a readable safetensors file"),
        ("vae.safetensors", "vae", "holds no FLUX transformer"),
    ],
)
def test_files_that_cannot_be_loaded_are_refused_in_one_line(base, tmp_path, name, content, message):
    folder, _ = base
    file = tmp_path / name
    if content == "vae":
        save_file({"decoder.conv_in.weight": torch.zeros(2, 2)}, file)
    elif content is not None:
        file.write_bytes(content)
    with pytest.raises(IdgenError, match=message):
        idgen.load(str(folder), "tiny-random", "tiny-random", device="cpu", transformer=file)


def test_a_file_of_another_shape_is_a_checkpoint_error(base, tmp_path):
    folder, _ = base
    state = tiny_flux_pipeline(0).transformer.state_dict()
    state["x_embedder.weight"] = torch.zeros(3, 3)
    save_file(state, tmp_path / "t.safetensors")
    with pytest.raises(CheckpointError, match=r"t\.safetensors does not fit the transformer of"):
        lowvram.load_transformer_file(tmp_path / "t.safetensors", folder, torch.float32)


def test_a_transformer_file_needs_a_flux_folder_or_hub_id(base):
    folder, _ = base
    file = folder / "other.safetensors"
    with pytest.raises(IdgenError, match="needs the base model as a FLUX folder or hub id"):
        idgen.load("tiny-random", "tiny-random", "tiny-random", device="cpu", transformer=file)
    with pytest.raises(IdgenError, match="no such folder, nor a hub id"):
        idgen.load("/no/such/flux", "tiny-random", "tiny-random", device="cpu", transformer=file)
    with pytest.raises(IdgenError, match="backbone 'sd15-wplus' has none"):
        idgen.load(
            str(folder), "tiny-random", "tiny-random", device="cpu", backbone="sd15-wplus", transformer=file
        )
    with pytest.raises(IdgenError, match="one file, not a folder"):
        idgen.load(str(folder), "tiny-random", "tiny-random", device="cpu", transformer=folder)


def test_a_gguf_file_takes_no_quantisation(tmp_path):
    (tmp_path / "t.gguf").write_bytes(b"GGUF")  # refused before the file is read
    with pytest.raises(
        IdgenError, match=r"t\.gguf is a GGUF file, already quantised: it takes no quantisation"
    ):
        lowvram.check_transformer_file(tmp_path / "t.gguf", "fp8")


def test_the_cli_refuses_a_transformer_file_before_anything_is_written(base, tmp_path, capsys):
    folder, _ = base
    argv = [
        "generate",
        "--prompt",
        "a person",
        "--id-image",
        str(tmp_path / "me.png"),
        "--out",
        str(tmp_path / "o.png"),
    ]
    from PIL import Image

    Image.new("RGB", (64, 64), "grey").save(tmp_path / "me.png")
    assert main([*argv, "--transformer", str(folder / "other.safetensors")]) == 1  # the demo world
    assert capsys.readouterr().err.strip() == (
        "idgen: error: --transformer replaces a FLUX model's transformer: "
        "give --flux too (a FLUX folder or hub id)"
    )
    assert main([*argv, "--flux", str(folder), *TINY, "--transformer", str(tmp_path / "no.gguf")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("idgen: error: transformer file not found") and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["me.png"]


def test_eval_plans_key_on_the_transformer_file_and_the_quantisation(base, tmp_path):
    from idgen.cli import build_parser
    from idgen.cli.eval import _settings

    folder, _ = base
    parse = build_parser().parse_args
    plain = parse(["eval", "--flux", str(folder), *TINY])
    given = parse(["eval", "--flux", str(folder), *TINY, "--transformer", str(folder / "other.safetensors")])
    quantised = parse(["eval", *TINY, "--flux", str(folder), "--quantize", "fp8"])
    models = [_settings(args, None, {}, {})["models"] for args in (plain, given, quantised)]
    assert "transformer" not in models[0] and "quantize" not in models[0]  # old plans resume
    assert models[1]["transformer"].startswith("file sha256:")
    assert models[2]["quantize"] == "fp8"
