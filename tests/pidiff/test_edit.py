"""`idgen edit`: W+ code files in and out, swap / mix / direction maths through the CLI, errors."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from idgen.cli.common import ArgumentParser
from idgen.cli.pidiff import add_edit, add_train_pidiff, run_edit
from idgen.errors import IdgenError
from idgen.pidiff.edit import generate_with_code, read_w_plus

from .conftest import tiny_sd_pipeline


def parse(argv):
    parser = ArgumentParser(prog="idgen")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    add_train_pidiff(sub)
    add_edit(sub)
    return parser.parse_args(argv)


def edit(*argv):
    args = parse(["edit", *map(str, argv)])
    assert args.func is run_edit
    return run_edit(args)


@pytest.fixture
def codes(tmp_path):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(18, 512, generator=g), torch.randn(18, 512, generator=g)
    save_file({"w_plus": a}, str(tmp_path / "a.safetensors"))
    np.save(tmp_path / "b.npy", b[None].numpy())  # (1, 18, 512) is accepted too
    return a, b


def test_swap_fine_layers(tmp_path, codes):
    a, b = codes
    assert edit(tmp_path / "a.safetensors", "--other", tmp_path / "b.npy", "--swap", "fine",
                "--out", tmp_path / "c.safetensors") == 0  # fmt: skip
    c = load_file(str(tmp_path / "c.safetensors"))["w_plus"]
    assert torch.equal(c[:8], a[:8]) and torch.equal(c[8:], b[8:])


def test_mix_explicit_layers_to_npy(tmp_path, codes):
    a, b = codes
    edit(tmp_path / "a.safetensors", "--other", tmp_path / "b.npy", "--mix", "0-3,8", "--alpha", "0.25",
         "--out", tmp_path / "c.npy")  # fmt: skip
    c = torch.from_numpy(np.load(tmp_path / "c.npy", allow_pickle=False))
    chosen = [0, 1, 2, 3, 8]
    rest = [i for i in range(18) if i not in chosen]
    assert torch.allclose(c[chosen], a[chosen] + 0.25 * (b[chosen] - a[chosen]), atol=1e-6)
    assert torch.equal(c[rest], a[rest])


def test_direction_on_coarse_layers(tmp_path, codes):
    a, _ = codes
    d = torch.linspace(-1, 1, 512)
    save_file({"direction": d}, str(tmp_path / "smile.safetensors"))
    edit(tmp_path / "a.safetensors", "--direction", tmp_path / "smile.safetensors", "--layers", "coarse",
         "--alpha", "2", "--out", tmp_path / "c.safetensors")  # fmt: skip
    c = read_w_plus(tmp_path / "c.safetensors")
    assert torch.equal(c[:8], a[:8] + 2 * d) and torch.equal(c[8:], a[8:])


def test_swap_then_direction(tmp_path, codes):
    a, b = codes
    d = torch.ones(18, 512)
    np.save(tmp_path / "d.npy", d.numpy())
    edit(tmp_path / "a.safetensors", "--other", tmp_path / "b.npy", "--swap", "17", "--direction",
         tmp_path / "d.npy", "--layers", "0", "--out", tmp_path / "c.safetensors")  # fmt: skip
    c = read_w_plus(tmp_path / "c.safetensors")
    assert torch.equal(c[17], b[17]) and torch.equal(c[0], a[0] + 1) and torch.equal(c[1:17], a[1:17])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--other", "b.npy", "--swap", "0-18"], "--swap: W\\+ layer 18 is out of range 0-17"),
        (["--other", "b.npy", "--mix", "fine,x"], "--mix: unknown W\\+ layer name 'x'"),
        (["--swap", "fine"], "--swap needs --other"),
        (["--other", "b.npy"], "--other needs --swap"),
        (["--layers", "0"], "give --direction"),
        ([], "nothing to edit"),
        (["--other", "missing.npy", "--swap", "fine"], "--other code .*missing.npy"),
        (["--other", "bad.npy", "--swap", "fine"], "must have shape \\(18, 512\\)"),
        (["--direction", "d.npy"], "edit direction not found: d.npy"),
        (["--other", "b.npy", "--mix", "fine", "--direction", "b.npy"], "share --alpha"),
    ],
)
def test_edit_errors(tmp_path, codes, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "bad.npy", np.zeros((17, 512), np.float32))
    with pytest.raises(IdgenError, match=message) as e:
        edit("a.safetensors", *extra, "--out", "c.safetensors")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "c.safetensors").exists()


def test_bad_input_files(tmp_path):
    save_file({"codes": torch.zeros(18, 512)}, str(tmp_path / "k.safetensors"))
    (tmp_path / "x.npy").write_bytes(b"garbage")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(IdgenError, match="has no tensor 'w_plus'"):
        read_w_plus(tmp_path / "k.safetensors")
    with pytest.raises(IdgenError, match="not readable"):
        read_w_plus(tmp_path / "x.npy")
    with pytest.raises(IdgenError, match="not readable"):  # pickled objects are refused, never loaded
        read_w_plus(tmp_path / "obj.npy")
    with pytest.raises(IdgenError, match=r"\.safetensors or \.npy"):
        read_w_plus(tmp_path / "w.pt")
    with pytest.raises(IdgenError, match="not found"):
        read_w_plus(tmp_path / "nope.safetensors")
    for bad in (float("nan"), float("inf")):
        code = torch.zeros(18, 512)
        code[3, 7] = bad
        np.save(tmp_path / "bad.npy", code.numpy())
        with pytest.raises(IdgenError, match=r"W\+ code .*bad\.npy holds NaN or infinite values"):
            read_w_plus(tmp_path / "bad.npy")


def test_generate_with_code_is_deterministic_and_removes_the_branch():
    from idgen.pidiff.train import PIDiffTrainConfig, new_adapter

    pipe = tiny_sd_pipeline()
    adapter = new_adapter(pipe.unet, PIDiffTrainConfig(num_layers=6, w_dim=8))
    w = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    kwargs = dict(num_inference_steps=2, guidance_scale=2.0, height=32, width=32, output_type="np")
    one = generate_with_code(pipe, adapter, w, "a photo of a person", **kwargs)
    two = generate_with_code(pipe, adapter, w, "a photo of a person", **kwargs)
    assert one.shape == (32, 32, 3) and np.array_equal(one, two)
    assert not any("WPlus" in type(p).__name__ for p in pipe.unet.attn_processors.values())
