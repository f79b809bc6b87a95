"""PuLID-FLUX checkpoints load strictly under their official key names, and wrong files are named."""

import pytest
import torch
from safetensors.torch import save_file

from idgen.errors import CheckpointError
from idgen.models.loading import load_pulid_adapter, save_pulid_adapter
from idgen.models.pulid import PuLIDAdapter, PuLIDConfig
from idgen.pipelines.tiny import TINY_PULID


def official_pulid_shapes(c: PuLIDConfig) -> dict[str, tuple[int, ...]]:
    """The key -> shape table of a pulid_flux_v0.9.x file, written out from the released layout."""
    shapes: dict[str, tuple[int, ...]] = {
        "pulid_encoder.latents": (1, c.num_queries, c.dim),
        "pulid_encoder.proj_out": (c.dim, c.output_dim),
    }

    def linear(name, n_in, n_out, bias=True):
        shapes[f"{name}.weight"] = (n_out, n_in)
        if bias:
            shapes[f"{name}.bias"] = (n_out,)

    def norm(name, n):
        shapes[f"{name}.weight"] = (n,)
        shapes[f"{name}.bias"] = (n,)

    inner = c.dim_head * c.heads
    for i in range(c.depth):
        p = f"pulid_encoder.layers.{i}"
        norm(f"{p}.0.norm1", c.dim)
        norm(f"{p}.0.norm2", c.dim)
        linear(f"{p}.0.to_q", c.dim, inner, bias=False)
        linear(f"{p}.0.to_kv", c.dim, 2 * inner, bias=False)
        linear(f"{p}.0.to_out", inner, c.dim, bias=False)
        norm(f"{p}.1.0", c.dim)
        linear(f"{p}.1.1", c.dim, c.dim * c.ff_mult, bias=False)
        linear(f"{p}.1.3", c.dim * c.ff_mult, c.dim, bias=False)
    mappings = [(f"pulid_encoder.mapping_{i}", c.vit_dim, c.dim) for i in range(5)]
    mappings.append(("pulid_encoder.id_embedding_mapping", c.id_dim, c.dim * c.num_id_token))
    for p, n_in, n_out in mappings:
        linear(f"{p}.0", n_in, c.mapping_dim)
        norm(f"{p}.1", c.mapping_dim)
        linear(f"{p}.3", c.mapping_dim, c.mapping_dim)
        norm(f"{p}.4", c.mapping_dim)
        linear(f"{p}.6", c.mapping_dim, n_out)
    ca_inner = c.ca_dim_head * c.ca_heads
    for i in range(c.num_ca):
        p = f"pulid_ca.{i}"
        norm(f"{p}.norm1", c.output_dim)
        norm(f"{p}.norm2", c.ca_dim)
        linear(f"{p}.to_q", c.ca_dim, ca_inner, bias=False)
        linear(f"{p}.to_kv", c.output_dim, 2 * ca_inner, bias=False)
        linear(f"{p}.to_out", ca_inner, c.ca_dim, bias=False)
    return shapes


def random_official_file(path, config, dtype=torch.bfloat16, edit=None):
    g = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(s, generator=g).to(dtype) for k, s in official_pulid_shapes(config).items()}
    if edit:
        edit(tensors)
    save_file(tensors, str(path))
    return tensors


def test_released_sizes_match_official_layout_exactly():
    with torch.device("meta"):
        adapter = PuLIDAdapter(PuLIDConfig())
    ours = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    official = official_pulid_shapes(PuLIDConfig())
    assert ours == official
    assert len([k for k in official if k.startswith("pulid_ca.") and k.endswith("to_q.weight")]) == 20
    assert official["pulid_ca.0.to_kv.weight"] == (4096, 2048)
    assert official["pulid_encoder.id_embedding_mapping.6.weight"] == (5120, 1024)


def test_official_file_loads_strictly_with_values(tmp_path):
    path = tmp_path / "pulid_flux_v0.9.1.safetensors"
    tensors = random_official_file(path, TINY_PULID)
    adapter = load_pulid_adapter(path, config=TINY_PULID)
    loaded = adapter.state_dict()
    assert set(loaded) == set(tensors)
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value.float()), key


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.pop("pulid_ca.3.to_out.weight"), "missing key 'pulid_ca.3.to_out.weight'"),
        (
            lambda t: t.__setitem__("pulid_ca.3.to_out.weight_extra", torch.zeros(1)),
            "unexpected key 'pulid_ca.3.to_out.weight_extra'",
        ),
        (
            lambda t: t.__setitem__("pulid_ca.0.to_q.weight", torch.zeros(32, 33)),
            "'pulid_ca.0.to_q.weight' has shape (32, 33), expected (32, 32)",
        ),
    ],
)
def test_wrong_keys_are_named(tmp_path, edit, message):
    path = tmp_path / "bad.safetensors"
    random_official_file(path, TINY_PULID, edit=edit)
    with pytest.raises(CheckpointError) as info:
        load_pulid_adapter(path, config=TINY_PULID)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_wrong_architecture_is_rejected(tmp_path):
    # A FLUX transformer file is not a PuLID file.
    from diffusers import FluxTransformer2DModel

    from idgen.pipelines.tiny import TINY_FLUX_TRANSFORMER

    path = tmp_path / "transformer.safetensors"
    save_file(FluxTransformer2DModel(**TINY_FLUX_TRANSFORMER).state_dict(), str(path))
    with pytest.raises(CheckpointError, match="is not a PuLID-FLUX checkpoint: missing key 'pulid_encoder"):
        load_pulid_adapter(path, config=TINY_PULID)


def test_released_sizes_reject_a_tiny_file(tmp_path):
    path = tmp_path / "tiny.safetensors"
    random_official_file(path, TINY_PULID)
    with pytest.raises(
        CheckpointError, match=r"missing key 'pulid_encoder.layers.5.0.norm1.weight' \(and 166 more\)"
    ):
        load_pulid_adapter(path)  # no config: the released sizes


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"broken\.safetensors is not a readable safetensors file"):
        load_pulid_adapter(bad, config=TINY_PULID)
    with pytest.raises(CheckpointError, match="not found"):
        load_pulid_adapter(tmp_path / "nope.safetensors")


def test_pickle_files_are_read_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.bin"
    torch.save({"x": Evil()}, str(path))
    with pytest.raises(CheckpointError, match="cannot be read with weights_only=True"):
        load_pulid_adapter(path, config=TINY_PULID)


def test_folder_round_trip(tmp_path):
    from idgen.pipelines.tiny import tiny_pulid_adapter

    adapter = tiny_pulid_adapter(seed=3)
    save_pulid_adapter(adapter, tmp_path / "pulid")
    assert sorted(p.name for p in (tmp_path / "pulid").iterdir()) == ["config.json", "model.safetensors"]
    again = load_pulid_adapter(tmp_path / "pulid")
    assert again.config == TINY_PULID
    for key, value in adapter.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_hub_id_not_cached_is_a_clear_error():
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        load_pulid_adapter("guozinan/PuLID")
