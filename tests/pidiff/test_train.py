"""PIDiff identity-tailored fine-tuning on a tiny SD1.5 pipeline: loss, frozen weights, resume, bad data."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from idgen.errors import IdgenError
from idgen.models.wplus import load_wplus_adapter
from idgen.pidiff.train import CHECKPOINT, PIDiffDataset, PIDiffTrainConfig, new_adapter, train_pidiff

from .conftest import tiny_sd_pipeline

L, D, RES = 6, 8, 32  # a small W+ shape; 32 px images -> 16x16 latents in the tiny VAE


def write_dataset(folder, n=2, shared=False):
    """n items: random images, a centred square face mask, random W+ codes."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    codes = {}
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        mask = np.zeros((40, 36), np.uint8)
        mask[10:30, 8:28] = 255
        Image.fromarray(mask).save(folder / f"{i}.mask.png")
        w = torch.from_numpy(rng.standard_normal((L, D)).astype(np.float32))
        item = {"image": f"{i}.png", "mask": f"{i}.mask.png", "caption": "a photo of a person"}
        if shared:
            codes[f"id{i}"] = w
            item["id"] = f"id{i}"
        else:
            save_file({"w_plus": w}, str(folder / f"{i}.wplus.safetensors"))
            item["wplus"] = f"{i}.wplus.safetensors"
        lines.append(item)
    if shared:
        save_file(codes, str(folder / "wplus.safetensors"))
    write_lines(folder, lines)
    return lines


def write_lines(folder, lines):
    (folder / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def config(**changes):
    base = dict(
        steps=6, batch_size=2, resolution=RES, num_layers=L, w_dim=D, lr=1e-3,
        checkpoint_every=100, log_every=1, progress=False,
    )  # fmt: skip
    return PIDiffTrainConfig(**{**base, **changes})


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def run(tmp_path, cfg, out="out", pipe=None, **kwargs):
    pipe = pipe or tiny_sd_pipeline()
    adapter = new_adapter(pipe.unet, cfg)
    result = train_pidiff(cfg, pipe, adapter, tmp_path / "data", tmp_path / out, **kwargs)
    return pipe, adapter, result


@pytest.fixture
def data(tmp_path):
    return write_dataset(tmp_path / "data")


def smoothed(values, k=5):
    return float(np.mean(values[:k])), float(np.mean(values[-k:]))


# The tiny UNet is random, so its denoising error is mostly out of the identity branch's reach: the
# drop is small but deterministic (fixed batch, noise and timesteps). Stage 2 trades a little
# preservation for denoising, so its total falls less than its denoising part.
@pytest.mark.parametrize(("stage", "lr", "drop"), [("stage1", 3e-2, 0.05), ("stage2", 1e-2, 0.01)])
def test_loss_goes_down_on_a_fixed_batch(tmp_path, data, stage, lr, drop):
    cfg = config(stage=stage, steps=20, overfit_one_batch=True, lr=lr)
    _, _, result = run(tmp_path, cfg)
    log = [json.loads(line) for line in (tmp_path / "out/log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == list(range(20))
    first, last = smoothed([line["loss"] for line in log])
    print(f"{stage}: smoothed loss {first:.4f} -> {last:.4f}")
    assert last < (1 - drop) * first
    first, last = smoothed([line["denoise"] for line in log])
    assert last < 0.97 * first
    assert result["step"] == 20


@pytest.mark.parametrize(
    ("mode", "stage"), [("general", "stage2"), ("general", "stage1"), ("identity", "stage2")]
)
def test_frozen_parameters_are_bit_identical(tmp_path, data, mode, stage):
    pipe = tiny_sd_pipeline()
    frozen = {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder}
    before = {name: state(m) for name, m in frozen.items()}
    cfg = config(mode=mode, stage=stage, steps=3)
    adapter = new_adapter(pipe.unet, cfg)
    mapping_before, attention_before = state(adapter.w_proj), state(adapter.wplus_adapter)
    train_pidiff(cfg, pipe, adapter, tmp_path / "data", tmp_path / "out")
    for name, module in frozen.items():
        after = module.state_dict()
        assert all(torch.equal(v, after[k]) for k, v in before[name].items()), name
    mapping_same = all(torch.equal(v, adapter.w_proj.state_dict()[k]) for k, v in mapping_before.items())
    assert mapping_same == (stage == "stage2" or mode == "identity")
    assert any(not torch.equal(v, adapter.wplus_adapter.state_dict()[k]) for k, v in attention_before.items())
    # The UNet is stock again and the caller's requires_grad flags are back.
    assert all(p.requires_grad for p in pipe.unet.parameters())
    assert type(next(iter(pipe.unet.attn_processors.values()))).__name__ != "WPlusAttnProcessor"


def test_final_weights_load_back(tmp_path, data):
    _, adapter, result = run(tmp_path, config(steps=2))
    loaded = load_wplus_adapter(result["adapter"])
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in adapter.state_dict().items())


def test_resume_matches_an_uninterrupted_run(tmp_path, data):
    cfg = config(steps=6, checkpoint_every=3)
    _, whole, _ = run(tmp_path, cfg, out="whole")
    _, _, first = run(tmp_path, cfg, out="split", stop_after=3)  # "killed" after the step-3 checkpoint
    assert first["step"] == 3 and (tmp_path / "split" / CHECKPOINT).exists()
    assert not (tmp_path / "split/adapter").exists()
    # Fresh pipeline and adapter, as in a new process; a stray log line past the checkpoint is dropped.
    with open(tmp_path / "split/log.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "loss": 123.0}) + "\n")
    _, resumed, second = run(tmp_path, cfg, out="split")
    assert second["resumed_from"] == 3
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())
    whole_log = (tmp_path / "whole/log.jsonl").read_text()
    assert (tmp_path / "split/log.jsonl").read_text() == whole_log


def test_resume_refuses_other_settings(tmp_path, data):
    run(tmp_path, config(steps=2, checkpoint_every=1), stop_after=1)
    with pytest.raises(IdgenError, match="lr="):
        run(tmp_path, config(steps=2, lr=5e-4))


def test_a_second_live_run_into_the_same_folder_is_refused(tmp_path, data):
    from idgen.io import folder_lock

    refused = r"^another PIDiff training run \(process \d+ on .*\) is using "
    # The lock is held by this (live) process.
    with (
        folder_lock(tmp_path / "out", "PIDiff training run"),
        pytest.raises(IdgenError, match=refused),
    ):
        run(tmp_path, config(steps=2))
    assert not (tmp_path / "out" / CHECKPOINT).exists()
    run(tmp_path, config(steps=1))  # the lock went with its holder


def test_shared_code_file(tmp_path):
    write_dataset(tmp_path / "data", shared=True)
    data = PIDiffDataset(tmp_path / "data", RES, L, D)
    image, mask = data.pixels(1)
    assert image.shape == (3, RES, RES) and mask.shape == (RES, RES) and mask.dtype == torch.bool
    assert image.min() >= -1 and image.max() <= 1 and mask.any() and not mask.all()
    assert data.items[1].w_plus.shape == (L, D)


def break_item(folder, lines, how):
    item = lines[1]
    if how == "mask":
        (folder / item["mask"]).unlink()
    elif how == "shape":
        save_file({"w_plus": torch.zeros(L + 1, D)}, str(folder / item["wplus"]))
    elif how == "image":
        (folder / item["image"]).write_bytes(b"not a png")
    elif how == "caption":
        del item["caption"]
        write_lines(folder, lines)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("mask", "line 2 \\(1.png\\): mask file not found"),
        ("shape", "line 2 \\(1.png\\): W\\+ code must have shape \\(6, 8\\)"),
        ("image", "line 2 \\(1.png\\): image is not a readable image"),
        ("caption", "line 2 \\(1.png\\): missing caption"),
    ],
)
def test_bad_items_are_named(tmp_path, how, message):
    folder = tmp_path / "data"
    lines = write_dataset(folder)
    break_item(folder, lines, how)
    with pytest.raises(IdgenError, match=message) as e:
        PIDiffDataset(folder, RES, L, D).verify()
    assert "\n" not in str(e.value)


def test_cli_trains(tmp_path, data, monkeypatch, capsys):
    import idgen.pidiff.train as train_module
    from idgen.cli.pidiff import run_train_pidiff

    from .test_edit import parse

    monkeypatch.setattr(train_module, "load_sd_pipeline", lambda _: tiny_sd_pipeline())
    args = parse(
        ["train", "pidiff", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--model", "x",
         "--mode", "identity", "--steps", "2", "--resolution", "32", "--num-layers", "6", "--w-dim", "8",
         "--no-progress"]
    )  # fmt: skip
    assert args.func is run_train_pidiff
    assert run_train_pidiff(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 2 and (tmp_path / "out/adapter/model.safetensors").exists()


KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {root!r})
from pathlib import Path
import idgen.pidiff.train as train
from tests.pidiff.test_train import config, run

call = train.PIDiffStep.__call__
def dying(self, step):
    if step == 3:  # after the step-2 checkpoint and the step-2 log line
        os.kill(os.getpid(), signal.SIGKILL)
    return call(self, step)
train.PIDiffStep.__call__ = dying
run(Path({tmp!r}), config(steps=5, checkpoint_every=2), out="killed")
"""


def test_sigkill_and_resume(tmp_path, data):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    script = KILLED_RUN.format(root=root, tmp=str(tmp_path))
    # The killed run's steps must be computed as this process computes the whole run's: same thread count.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert [json.loads(x)["step"] for x in (tmp_path / "killed/log.jsonl").read_text().splitlines()] == [
        0,
        1,
        2,
    ]
    _, resumed, result = run(tmp_path, config(steps=5, checkpoint_every=2), out="killed")
    _, whole, _ = run(tmp_path, config(steps=5, checkpoint_every=2), out="whole")
    assert result["resumed_from"] == 2
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())
    assert (tmp_path / "killed/log.jsonl").read_text() == (tmp_path / "whole/log.jsonl").read_text()
    assert not list((tmp_path / "killed").glob(".*tmp*"))  # no stray temp files
