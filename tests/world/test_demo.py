"""The embedded demo world: `idgen generate` with no model arguments, and `idgen world train --quick`."""

import json
import warnings

import pytest
from PIL import Image

from idgen.cli import main
from idgen.cli.world import WORLD_STAGES
from idgen.world.build import STAGES
from idgen.world.bundle import ASSETS, GENERATOR_PARTS, reference_photos

shipped = pytest.mark.skipif(
    not all((ASSETS / part).is_dir() for part in GENERATOR_PARTS) or not reference_photos(),
    reason="the demo world's trained assets are not in this checkout",
)


@shipped
def test_generate_on_the_demo_world(tmp_path, capsys):
    reference = reference_photos()[0]
    out = tmp_path / "demo.png"
    prompt = "a person in a snowy forest at night, wearing a red shirt"
    argv = ["generate", "--id-image", str(reference), "--prompt", prompt]
    argv += ["--mode", "spatial", "--steps", "8", "--out", str(out), "--mask-gif"]
    assert main(argv) == 0
    assert Image.open(out).size == (64, 64)
    compare = Image.open(tmp_path / "demo.compare.png")
    assert compare.width == 4 * (compare.height - 12)  # reference | none | uniform | spatial
    gif = Image.open(tmp_path / "demo.masks.gif")
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(gif.convert("RGB").tobytes())
    assert len(frames) == 8 and len(set(frames)) > 1  # the mask changes over the steps
    sidecar = json.loads((tmp_path / "demo.json").read_text())
    assert sidecar["model"] == "demo world" and sidecar["sampling"]["height"] == 64
    # The demo world's SpatialID: the authors' balanced schedule, the refiner scaled to its 8x8 token grid.
    assert "GridScaledRefiner(" in sidecar["mask_policy"] and "anchor=None" in sidecar["mask_policy"]
    assert (sidecar["schedule"]["prior_sigma"], sidecar["schedule"]["global_floor"]) == (0.7, 0.3)
    assert capsys.readouterr().err == ""  # every word is in the vocabulary


@shipped
def test_out_of_vocabulary_words_warn_but_run(tmp_path, capsys):
    argv = [
        "generate",
        "--id-image",
        str(reference_photos()[0]),
        "--prompt",
        "a person on a beach with a giraffe",
    ]
    argv += ["--steps", "4", "--no-compare", "--no-mask-strip", "--out", str(tmp_path / "o.png")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == 0
    messages = [str(w.message) for w in caught]
    # Named once, though the prompt is encoded by two tokenizers, twice each: the word is dropped.
    assert messages == ["dropped, not in the demo world's vocabulary: giraffe"]
    assert (tmp_path / "o.png").exists()


@shipped
@pytest.mark.parametrize("adapter", ["pulid", "pidiff"])
def test_a_photo_without_a_face_is_refused_as_pulid_refuses_it(tmp_path, capsys, adapter):
    """The world's detector finds no face on a plain field of colour: one line, exit 1, nothing written;
    among several photos of one person it is skipped, and the others carry the identity."""
    Image.new("RGB", (64, 64), (30, 200, 40)).save(tmp_path / "green.png")
    out = tmp_path / "out"
    out.mkdir()
    argv = ["generate", "--world-adapter", adapter, "--prompt", "a person on a beach", "--steps", "2"]
    argv += ["--no-compare", "--no-mask-strip"]
    assert main([*argv, "--id-image", str(tmp_path / "green.png"), "--out", str(out / "o.png")]) == 1
    assert capsys.readouterr().err == f"idgen: error: no face found in {tmp_path / 'green.png'}\n"
    assert list(out.iterdir()) == []
    both = f"{reference_photos()[0]},{tmp_path / 'green.png'}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*argv, "--id-image", both, "--out", str(out / "o.png")]) == 0
    assert [str(w.message) for w in caught] == [
        f"identity 1: photo skipped: no face found in {tmp_path / 'green.png'}"
    ]
    assert (out / "o.png").exists()


def test_world_train_quick_end_to_end(tmp_path, capsys):
    train = ["world", "train", "--quick", "--work", str(tmp_path / "work"), "--assets", str(tmp_path / "a")]
    assert main(train) == 0
    assert list(json.loads(capsys.readouterr().out)) == list(STAGES)
    # One stage again: it resumes from its finished checkpoint, and the manifest still covers every file.
    assert main([*train, "--stage", "adapter"]) == 0
    assert list(json.loads(capsys.readouterr().out)) == ["adapter"]
    from idgen.world.bundle import load_world, verify

    verify(tmp_path / "a")
    pipe = load_world(assets=tmp_path / "a", require_face=False)  # a 3-step detector finds no face
    assert pipe("a person on a beach", reference_photos(tmp_path / "a")[0], num_inference_steps=2).images[
        0
    ].size == (64, 64)
    from idgen.world.pidiff import load_pidiff_world

    pidiff = load_pidiff_world(assets=tmp_path / "a", require_face=False)
    image = pidiff("a person on a beach", reference_photos(tmp_path / "a")[0], num_inference_steps=2).images[
        0
    ]
    assert image.size == (64, 64)


def test_world_train_stages(tmp_path, capsys):
    assert WORLD_STAGES == STAGES  # the CLI's help spells the list without importing torch
    argv = ["world", "train", "--quick", "--work", str(tmp_path), "--stage", "base", "vae"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    stages = "identity, evaluators, base, two-people, wplus, pidiff, adapter"
    assert err == f"idgen: error: unknown stage 'vae' (stages: {stages})"
    assert not any(tmp_path.iterdir())


def test_a_second_live_world_training_run_into_the_same_work_folder_is_refused(tmp_path, capsys):
    from idgen.io import folder_lock

    with folder_lock(tmp_path, "world training run"):  # held by this (live) process
        assert main(["world", "train", "--quick", "--work", str(tmp_path), "--stage", "identity"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("idgen: error: another world training run (process ") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # nothing trained, nothing recorded


@shipped
def test_every_demo_world_loader_drops_unknown_words():
    from idgen.world.bundle import load_world
    from idgen.world.pidiff import load_pidiff_world
    from idgen.world.tokenizer import build_tokenizer

    plain = build_tokenizer()
    text = "a person on a beach holding an umbrella"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for load in (load_world, load_pidiff_world):
            flux = load().flux
            for tok in (flux.tokenizer, flux.tokenizer_2):
                assert tok(text)["input_ids"] == plain("a person on a beach an")["input_ids"]


@shipped
def test_the_compare_strip_adds_uniform_and_spatial_at_more_id_weights(tmp_path):
    out = tmp_path / "w.png"
    argv = ["generate", "--id-image", str(reference_photos()[0]), "--prompt", "a person in a library"]
    argv += ["--steps", "4", "--no-mask-strip", "--out", str(out), "--compare-id-weight", "2"]
    assert main(argv) == 0
    strip = Image.open(tmp_path / "w.compare.png").convert("RGB")
    side = strip.height - 12
    assert strip.width == 6 * side  # reference | none | uniform w=1 | spatial w=1 | uniform w=2 | spatial w=2
    tiles = [strip.crop((i * side, 12, (i + 1) * side, strip.height)).tobytes() for i in range(6)]
    assert tiles[3] == Image.open(out).convert("RGB").resize((side, side), Image.Resampling.NEAREST).tobytes()
    assert tiles[4] != tiles[2] and tiles[5] != tiles[3]  # a stronger identity changes the picture
    sidecar = json.loads((tmp_path / "w.json").read_text())
    assert sidecar["parameters"]["compare_id_weight"] == [2.0]
    assert main([*argv[:-1], "-1", "--overwrite"]) == 1  # a negative weight is refused


@shipped
@pytest.mark.slow
def test_the_w_plus_branch_trains_in_two_stages_with_pulids_id_term_and_without_it_when_asked(tmp_path):
    import torch
    from safetensors.torch import load_file

    from idgen.world.pidiff import QUICK_BRANCH, train_pidiff_branch

    assets = tmp_path / "assets"
    assets.mkdir()
    for part in ("flux", "identity", "wplus"):
        (assets / part).symlink_to(ASSETS / part, target_is_directory=True)
    no_term = tuple(s._replace(id_loss_weight=0.0) for s in QUICK_BRANCH.stages)
    pidiff_losses = QUICK_BRANCH._replace(stages=no_term)
    plain = train_pidiff_branch(tmp_path / "plain", assets, recipe=pidiff_losses)
    assert set(plain) == {"loss", "denoise", "disentangle", "preserve"}  # PIDiff's losses alone
    after_align = torch.load(tmp_path / "plain" / "pidiff-stage-1" / "checkpoint.pt", weights_only=True)
    shipped = load_file(assets / "pidiff" / "model.safetensors")
    for name, value in after_align["modules"]["branch"].items():  # stage II leaves F_w as stage I left it
        assert torch.equal(shipped[name], value) == name.startswith("w_proj."), name
    assert [s.id_loss_weight for s in QUICK_BRANCH.stages] == [1.0, 1.0]  # the committed recipe's, shortened
    report = train_pidiff_branch(tmp_path / "id", assets, recipe=QUICK_BRANCH)
    assert set(report) == {"loss", "denoise", "disentangle", "preserve", "id"} and 0 < report["id"] <= 2


@shipped
@pytest.mark.slow
def test_a_fresh_process_prints_no_chatter_from_optional_packages(tmp_path):
    """transformers imports torchao when it is installed (the lowvram extra); its kernel-loading notes and
    torch's deprecation note must not reach a newcomer's terminal."""
    import subprocess
    import sys

    reference = reference_photos()[0]
    argv = [sys.executable, "-m", "idgen.cli", "generate", "--id-image", str(reference)]
    argv += ["--prompt", "a person in a forest", "--steps", "2", "--out", str(tmp_path / "o.png")]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert not [line for line in lines if "Failed to load" in line or "_pytree" in line], lines
