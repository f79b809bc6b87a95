"""W+ adapter checkpoints load strictly under the official key names; wrong files are named."""

from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file

from idgen.backbones.sd15 import attention_layers, check_fits, wplus_config_for_unet
from idgen.errors import CheckpointError, IdgenError
from idgen.models.wplus import (
    SD15_ATTENTION_LAYERS,
    WPlusAdapter,
    WPlusConfig,
    identity_parameters,
    load_wplus_adapter,
    save_wplus_adapter,
)

from .conftest import tiny_unet

# Written out from the released SD1.5 UNet: every cross-attention is an odd slot of
# unet.attn_processors (down 0,0,1,1,2,2 / up 1,1,1,2,2,2,3,3,3 / mid), with its width.
SD15_WIDTHS = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280]


def official_wplus_shapes(groups, w_dim, token_dim, layers):
    """Key -> shape of a wplus_adapter.bin after flattening {"w_proj": ..., "wplus_adapter": ...}."""
    shapes = {}
    for g, (start, end) in enumerate(groups):
        shapes[f"w_proj.proj_{g}.weight"] = (token_dim, (end - start) * w_dim)
    shapes["w_proj.norm.weight"] = (token_dim,)
    shapes["w_proj.norm.bias"] = (token_dim,)
    for slot, width in layers:
        shapes[f"wplus_adapter.{slot}.to_k_wplus.weight"] = (width, token_dim)
        shapes[f"wplus_adapter.{slot}.to_v_wplus.weight"] = (width, token_dim)
        shapes[f"wplus_adapter.{slot}.to_q_wplus.weight"] = (width, width)
    return shapes


def tiny_config():
    return wplus_config_for_unet(tiny_unet())


def write_official_bin(path, config, edit=None, dtype=torch.float16):
    """torch.save of {"w_proj": OrderedDict, "wplus_adapter": OrderedDict}, as the release scripts do."""
    g = torch.Generator().manual_seed(0)
    shapes = official_wplus_shapes(config.groups, config.w_dim, config.token_dim, config.attention_layers)
    flat = {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}
    if edit:
        edit(flat)
    nested = {"w_proj": OrderedDict(), "wplus_adapter": OrderedDict()}
    for key, value in flat.items():
        top, rest = key.split(".", 1)
        nested[top][rest] = value
    torch.save(nested, str(path))
    return flat


def test_released_sd15_layout_matches_ours_exactly():
    layers = list(zip(range(1, 32, 2), SD15_WIDTHS, strict=True))
    official = official_wplus_shapes(((0, 4), (4, 8), (8, 12), (12, 18)), 512, 768, layers)
    with torch.device("meta"):
        adapter = WPlusAdapter()
    assert {k: tuple(v.shape) for k, v in adapter.state_dict().items()} == official
    assert official["w_proj.proj_3.weight"] == (768, 6 * 512)
    assert official["wplus_adapter.31.to_q_wplus.weight"] == (1280, 1280)


def test_sd15_slots_are_the_unets_cross_attentions():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    assert attention_layers(unet) == SD15_ATTENTION_LAYERS
    assert [w for _, w in SD15_ATTENTION_LAYERS] == SD15_WIDTHS
    with torch.device("meta"):
        check_fits(WPlusAdapter(), unet)


def test_official_bin_loads_strictly_with_values(tmp_path):
    config = tiny_config()
    assert [slot for slot, _ in config.attention_layers] == [1, 3, 5, 7, 9, 11, 13]
    path = tmp_path / "wplus_adapter.bin"
    flat = write_official_bin(path, config)
    adapter = load_wplus_adapter(path, config=config)
    loaded = adapter.state_dict()
    assert set(loaded) == set(flat)
    for key, value in flat.items():
        assert loaded[key].dtype == torch.float32
        assert torch.equal(loaded[key], value.float()), key


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.pop("wplus_adapter.3.to_v_wplus.weight"),
            "missing key 'wplus_adapter.3.to_v_wplus.weight'",
        ),
        (
            lambda t: t.__setitem__("wplus_adapter.2.to_k_wplus.weight", torch.zeros(32, 32)),
            "unexpected key 'wplus_adapter.2.to_k_wplus.weight'",
        ),
        (
            lambda t: t.__setitem__("w_proj.proj_1.weight", torch.zeros(32, 5)),
            "'w_proj.proj_1.weight' has shape (32, 5), expected (32, 64)",
        ),
    ],
)
def test_wrong_keys_are_named(tmp_path, edit, message):
    config = WPlusConfig(w_dim=16, token_dim=32, attention_layers=((1, 32), (3, 64)))
    path = tmp_path / "bad.bin"
    write_official_bin(path, config, edit=edit)
    with pytest.raises(CheckpointError) as info:
        load_wplus_adapter(path, config=config)
    assert message in str(info.value)
    assert "is not a W+ adapter checkpoint" in str(info.value) or "does not fit this W+ adapter" in str(
        info.value
    )
    assert "\n" not in str(info.value)


def test_sd15_file_on_a_different_unet_is_named(tmp_path):
    path = tmp_path / "wplus_adapter.bin"
    write_official_bin(path, tiny_config())
    with pytest.raises(CheckpointError, match=r"missing key 'wplus_adapter\.15\.to_q_wplus\.weight'"):
        load_wplus_adapter(path)  # released SD1.5 sizes expected
    with torch.device("meta"):
        sd15 = WPlusAdapter()
    with pytest.raises(CheckpointError, match="768-wide tokens, this UNet's cross-attention is 32 wide"):
        check_fits(sd15, tiny_unet())
    other = WPlusConfig(token_dim=32, w_dim=16, attention_layers=((1, 32), (3, 32)))
    with pytest.raises(CheckpointError, match="attention slot 3 is 32 wide in the adapter and 64 wide"):
        check_fits(WPlusAdapter(other), tiny_unet())


def test_folder_and_safetensors_round_trip(tmp_path):
    config = tiny_config()
    torch.manual_seed(0)
    adapter = WPlusAdapter(config)
    folder = save_wplus_adapter(adapter, tmp_path / "ours")
    loaded = load_wplus_adapter(folder)
    assert loaded.config == config
    for key, value in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # A bare .safetensors with the official flat keys loads too.
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(tmp_path / "w.safetensors"))
    assert torch.equal(
        load_wplus_adapter(tmp_path / "w.safetensors", config=config).w_proj.norm.weight,
        adapter.w_proj.norm.weight,
    )


def test_missing_sources_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"W\+ adapter checkpoint not found: \./nowhere\.bin"):
        load_wplus_adapter("./nowhere.bin")
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        load_wplus_adapter("nobody/no-such-wplus-repo")
    (tmp_path / "config.json").write_text('{"token_dim": 32, "colour": 1}')
    with pytest.raises(CheckpointError, match="unknown field 'colour'"):
        load_wplus_adapter(tmp_path)


def test_mapping_groups_coarse_to_fine():
    config = WPlusConfig(w_dim=3, token_dim=5, attention_layers=())
    torch.manual_seed(0)
    mapping = WPlusAdapter(config).w_proj
    w = torch.randn(2, 18, 3)
    tokens = mapping(w)
    assert tokens.shape == (2, 4, 5)
    for g, (start, end) in enumerate(((0, 4), (4, 8), (8, 12), (12, 18))):
        flat = w[:, start:end].reshape(2, -1)  # (2, n * 3), layer-major as the release flattens
        raw = flat @ getattr(mapping, f"proj_{g}").weight.T
        expected = torch.nn.functional.layer_norm(raw, (5,), mapping.norm.weight, mapping.norm.bias)
        torch.testing.assert_close(tokens[:, g], expected)
    with pytest.raises(IdgenError, match=r"got \(2, 17, 3\)"):
        mapping(torch.zeros(2, 17, 3))


def test_parameter_groups():
    adapter = WPlusAdapter(tiny_config())
    mapping, attention = adapter.mapping_parameters(), adapter.attention_parameters()
    assert len(mapping) == 4 + 2
    assert len(attention) == 3 * 7
    assert [id(p) for p in identity_parameters(adapter)] == [id(p) for p in mapping + attention]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"groups": ((0, 4), (5, 18))}, "contiguous non-empty ranges from 0"),
        ({"groups": ((0, 4), (4, 17))}, "W+ groups end at layer 17, the code has 18 layers"),
        ({"attention_layers": ((1, 8), (1, 8))}, "W+ attention slots must be distinct"),
        ({"token_dim": 0}, "token_dim must be >= 1, got 0"),
    ],
)
def test_bad_configs_are_named(fields, message):
    with pytest.raises(IdgenError) as info:
        WPlusConfig(**fields)
    assert message in str(info.value)
