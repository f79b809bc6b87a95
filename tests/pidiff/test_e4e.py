"""The e4e encoder: the official key layout at full size, strict loading, and its W+ structure."""

import argparse
from collections import OrderedDict

import pytest
import torch

from idgen.errors import CheckpointError, IdgenError
from idgen.models.e4e import E4EConfig, E4EEncoder, load_e4e_encoder, save_e4e_encoder

TINY_E4E = E4EConfig(
    w_dim=16, input_size=32, stage_channels=(8, 8, 16, 16), stage_units=(1, 2, 2, 1), se_reduction=4
)


def official_e4e_shapes(channels, units, w_dim, num_styles, input_size, se_reduction):
    """Key -> shape of the "encoder.*" part of e4e_ffhq_encode.pt's state_dict, from the
    released architecture: IR-SE-50 units, 18 GradualStyleBlocks, two FPN lateral convs."""
    shapes = {}

    def conv(name, c_in, c_out, k, bias):
        shapes[f"{name}.weight"] = (c_out, c_in, k, k)
        if bias:
            shapes[f"{name}.bias"] = (c_out,)

    def batch_norm(name, c):
        for part in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{part}"] = (c,)
        shapes[f"{name}.num_batches_tracked"] = ()

    conv("encoder.input_layer.0", 3, 64, 3, bias=False)
    batch_norm("encoder.input_layer.1", 64)
    shapes["encoder.input_layer.2.weight"] = (64,)  # PReLU
    i, c_in = 0, 64
    for depth, count in zip(channels, units, strict=True):
        for _ in range(count):
            p = f"encoder.body.{i}"
            if c_in != depth:
                conv(f"{p}.shortcut_layer.0", c_in, depth, 1, bias=False)
                batch_norm(f"{p}.shortcut_layer.1", depth)
            batch_norm(f"{p}.res_layer.0", c_in)
            conv(f"{p}.res_layer.1", c_in, depth, 3, bias=False)
            shapes[f"{p}.res_layer.2.weight"] = (depth,)
            conv(f"{p}.res_layer.3", depth, depth, 3, bias=False)
            batch_norm(f"{p}.res_layer.4", depth)
            conv(f"{p}.res_layer.5.fc1", depth, depth // se_reduction, 1, bias=False)
            conv(f"{p}.res_layer.5.fc2", depth // se_reduction, depth, 1, bias=False)
            i, c_in = i + 1, depth
    for s in range(num_styles):
        spatial = input_size // (16 if s < 3 else 8 if s < 7 else 4)
        for j in range(spatial.bit_length() - 1):  # log2(spatial) stride-2 convs, LeakyReLU between
            conv(f"encoder.styles.{s}.convs.{2 * j}", w_dim, w_dim, 3, bias=True)
        shapes[f"encoder.styles.{s}.linear.weight"] = (w_dim, w_dim)
        shapes[f"encoder.styles.{s}.linear.bias"] = (w_dim,)
    conv("encoder.latlayer1", channels[2], w_dim, 1, bias=True)
    conv("encoder.latlayer2", channels[1], w_dim, 1, bias=True)
    return shapes


def tiny_shapes():
    c = TINY_E4E
    return official_e4e_shapes(c.stage_channels, c.stage_units, c.w_dim, 18, c.input_size, c.se_reduction)


def write_official_pt(path, edit=None, latent_avg_shape=(18, 16), opts=None):
    """torch.save of what e4e's training coach writes: state_dict (encoder + decoder), latent_avg, opts."""
    g = torch.Generator().manual_seed(0)
    state = OrderedDict()
    for key, shape in tiny_shapes().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1
    # A few generator keys, which the encoder skips.
    state["decoder.style.1.weight"] = torch.randn(16, 16, generator=g)
    state["decoder.input.input"] = torch.randn(1, 16, 4, 4, generator=g)
    if edit:
        edit(state)
    options = vars(
        argparse.Namespace(
            encoder_type="Encoder4Editing",
            dataset_type="ffhq_encode",
            start_from_latent_avg=True,
            progressive_steps=[0, 20000, 22000],
            checkpoint_path=None,
            lpips_lambda=0.8,
            device="cuda:0",
        )
    )
    options.update(opts or {})
    latent_avg = torch.randn(latent_avg_shape, generator=g)
    torch.save({"state_dict": state, "latent_avg": latent_avg, "opts": options}, str(path))
    return state, latent_avg


def test_released_sizes_match_official_layout_exactly():
    with torch.device("meta"):
        model = E4EEncoder(E4EConfig())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = official_e4e_shapes((64, 128, 256, 512), (3, 4, 14, 3), 512, 18, 256, 16)
    official["latent_avg"] = (18, 512)
    assert ours == official
    assert len([k for k in official if k.endswith("res_layer.5.fc1.weight")]) == 24  # IR-SE-50 units
    assert official["encoder.styles.0.convs.6.weight"] == (512, 512, 3, 3)  # 16x16 -> 1x1: 4 convs
    assert "encoder.styles.17.convs.10.weight" in official  # 64x64 -> 1x1: 6 convs
    assert official["encoder.latlayer1.weight"] == (512, 256, 1, 1)
    assert official["encoder.body.3.shortcut_layer.0.weight"] == (128, 64, 1, 1)


def test_official_file_loads_strictly_with_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "e4e_ffhq_encode.pt"
    state, latent_avg = write_official_pt(path)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    model = load_e4e_encoder(path, config=TINY_E4E)
    assert calls and all(k.get("weights_only") is True for k in calls)
    loaded = model.state_dict()
    assert not any(k.startswith("decoder.") for k in loaded)
    for key, value in loaded.items():
        expected = latent_avg if key == "latent_avg" else state[key]
        assert torch.equal(value, expected.to(value.dtype)), key
    assert not model.training


def test_w_plus_is_base_w_plus_per_layer_deltas_plus_average(tmp_path):
    path = tmp_path / "e4e.pt"
    _, latent_avg = write_official_pt(path)
    model = load_e4e_encoder(path, config=TINY_E4E)
    faces = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        w_plus = model(faces)
        offsets = model.encoder(faces)
        assert w_plus.shape == (2, 18, 16)
        assert torch.equal(w_plus, offsets + latent_avg)
        # Without the delta heads (1..17), every layer is the base w of head 0.
        for head in list(model.encoder.styles)[1:]:
            head.linear.weight.zero_()
            head.linear.bias.zero_()
        flat = model.encoder(faces)
    assert torch.equal(flat[:, 0], offsets[:, 0])
    assert torch.equal(flat, flat[:, :1].expand(-1, 18, -1))
    assert not torch.equal(offsets, flat)  # the deltas did move the other layers
    with pytest.raises(
        IdgenError, match=r"e4e expects faces of shape \(B, 3, 32, 32\), got \(2, 3, 64, 64\)"
    ):
        model(torch.zeros(2, 3, 64, 64))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("encoder.styles.5.linear.bias"), "missing key 'encoder.styles.5.linear.bias'"),
        (
            lambda s: s.__setitem__("encoder.extra.weight", torch.zeros(1)),
            "unexpected key 'encoder.extra.weight'",
        ),
        (
            lambda s: s.__setitem__("encoder.latlayer2.weight", torch.zeros(16, 9, 1, 1)),
            "'encoder.latlayer2.weight' has shape (16, 9, 1, 1), expected (16, 8, 1, 1)",
        ),
    ],
)
def test_wrong_keys_are_named(tmp_path, edit, message):
    path = tmp_path / "bad.pt"
    write_official_pt(path, edit=edit)
    with pytest.raises(CheckpointError) as info:
        load_e4e_encoder(path, config=TINY_E4E)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_other_files_are_refused_with_a_reason(tmp_path):
    path = tmp_path / "psp.pt"
    write_official_pt(path, opts={"encoder_type": "GradualStyleEncoder"})
    with pytest.raises(CheckpointError, match="holds a GradualStyleEncoder encoder, not Encoder4Editing"):
        load_e4e_encoder(path, config=TINY_E4E)
    torch.save({"state_dict": {}}, str(tmp_path / "no_avg.pt"))
    with pytest.raises(CheckpointError, match="no 'latent_avg' tensor"):
        load_e4e_encoder(tmp_path / "no_avg.pt", config=TINY_E4E)
    torch.save(
        {"state_dict": {}, "latent_avg": torch.zeros(3), "opts": argparse.Namespace()},
        str(tmp_path / "ns.pt"),
    )
    with pytest.raises(CheckpointError, match="cannot be read with weights_only=True"):
        load_e4e_encoder(tmp_path / "ns.pt", config=TINY_E4E)
    path = tmp_path / "avg.pt"
    write_official_pt(path, latent_avg_shape=(17, 16))
    with pytest.raises(CheckpointError, match=r"latent_avg has shape \(17, 16\), expected \(18, 16\)"):
        load_e4e_encoder(path, config=TINY_E4E)
    with pytest.raises(CheckpointError, match="e4e checkpoint not found"):
        load_e4e_encoder(tmp_path / "missing.pt")


def test_older_files_without_step_counters_or_with_a_single_average(tmp_path):
    path = tmp_path / "old.pt"

    def drop_counters(state):
        for key in [k for k in state if k.endswith("num_batches_tracked")]:
            del state[key]

    _, latent_avg = write_official_pt(path, edit=drop_counters, latent_avg_shape=(16,))
    model = load_e4e_encoder(path, config=TINY_E4E)
    assert torch.equal(model.latent_avg, latent_avg.expand(18, -1))


def test_our_folder_round_trip(tmp_path):
    path = tmp_path / "e4e.pt"
    write_official_pt(path)
    model = load_e4e_encoder(path, config=TINY_E4E)
    folder = save_e4e_encoder(model, tmp_path / "ours")
    again = load_e4e_encoder(folder)
    assert again.config == TINY_E4E
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"stage_channels": (64, 128, 256, 256)}, "last stage width 256 must equal w_dim 512"),
        ({"input_size": 100}, "power of two >= 32, got 100"),
        ({"se_reduction": 128}, "se_reduction 128 leaves a squeeze-excitation with no channels"),
    ],
)
def test_bad_configs_are_named(fields, message):
    with pytest.raises(IdgenError) as info:
        E4EConfig(**fields)
    assert message in str(info.value)
