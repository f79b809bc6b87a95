"""`idgen generate`: outputs, sidecar, mask strip, and one-line errors that leave no file behind."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from idgen.cli import main

REFERENCE = Path(__file__).resolve().parents[1] / "assets" / "examples" / "reference.png"
TINY = ["--flux", "tiny-random", "--pulid", "tiny-random", "--encoder", "tiny-random"]


def run(argv):
    """main()'s exit code, also when argparse exits on its own."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def generate(tmp_path, *extra, out="out.png"):
    # --id-image repeats for several people, so a test's own --id-image replaces the default one.
    photo = [] if "--id-image" in extra else ["--id-image", str(REFERENCE)]
    argv = [
        "generate",
        *TINY,
        "--prompt",
        "a person on a beach",
        *photo,
        "--width",
        "64",
        "--height",
        "48",
        "--steps",
        "5",
        "--out",
        str(tmp_path / out),
        *extra,
    ]
    return run(argv)


def test_generate_writes_png_sidecar_and_mask_strip(tmp_path, capsys):
    assert generate(tmp_path, "--mask-strip", "--mask-gif", "--seed", "3") == 0
    image = Image.open(tmp_path / "out.png")
    assert image.size == (64, 48)
    sidecar = json.loads((tmp_path / "out.json").read_text())
    assert sidecar["seed"] == 3
    assert sidecar["parameters"]["mode"] == "spatial"
    assert sidecar["parameters"]["id_weight"] == 1.0
    assert sidecar["schedule"]["late_floor"] == 0.5 and sidecar["schedule"]["prior_sigma"] == 0.3
    assert {"idgen", "torch", "diffusers", "transformers", "python"} <= set(sidecar["versions"])
    strip = Image.open(tmp_path / "out.masks.png")
    assert strip.width == 5 * strip.height - 5 * 12 or strip.width > image.width  # one frame per step
    gif = Image.open(tmp_path / "out.masks.gif")
    assert gif.n_frames == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out.json",
        "out.masks.gif",
        "out.masks.png",
        "out.png",
    ]
    printed = capsys.readouterr().out.split()
    assert printed[0].endswith("out.png")


def test_same_seed_same_file(tmp_path):
    assert generate(tmp_path, "--seed", "5", out="a.png") == 0
    assert generate(tmp_path, "--seed", "5", out="b.png") == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_preset_and_overrides_reach_the_schedule(tmp_path):
    assert (
        generate(tmp_path, "--preset", "balanced", "--late-floor", "0.6", "--prior-box", "0,0,0.5,0.5") == 0
    )
    schedule = json.loads((tmp_path / "out.json").read_text())["schedule"]
    assert schedule["late_floor"] == 0.6
    assert schedule["prior_sigma"] == 0.7 and schedule["global_floor"] == 0.3
    assert schedule["prior_box"] == [0.0, 0.0, 0.5, 0.5]


def test_refiner_and_anchor_choices_reach_the_policy(tmp_path):
    assert generate(tmp_path, out="paper.png") == 0
    policy = json.loads((tmp_path / "paper.json").read_text())["mask_policy"]
    assert "refiner=MaskRefiner(kernel_size=5, sigma=1.5" in policy and "anchor=None" in policy
    assert generate(tmp_path, "--refiner", "grid-scaled", "--anchor", "attention", out="world.png") == 0
    policy = json.loads((tmp_path / "world.json").read_text())["mask_policy"]
    assert "refiner=GridScaledRefiner(" in policy and "anchor=AttentionAnchor(" in policy
    # An explicit prior box is where the user wants the prior: no anchor moves it.
    assert generate(tmp_path, "--anchor", "attention", "--prior-box", "0,0,0.5,0.5", out="box.png") == 0
    assert "anchor=None" in json.loads((tmp_path / "box.json").read_text())["mask_policy"]


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# Usage errors (argparse) exit 2; a bad value exits 1. The full table is tests/test_bad_inputs.py.
BAD_CASES = {
    "missing id image": (["--id-image", "/nonexistent/me.jpg"], "me.jpg", 1),
    "not divisible by 16": (["--width", "40"], "--width must be a positive multiple of 16", 1),
    "empty prompt": (["--prompt", "  "], "prompt is empty", 1),
    "negative id weight": (["--id-weight", "-0.5"], "--id-weight must be >= 0", 1),
    "unknown preset": (["--preset", "fancy"], "fancy", 1),
    "unknown option": (["--colour", "red"], "unrecognized arguments: --colour", 2),
    "unknown mode": (["--mode", "everywhere"], "invalid choice: 'everywhere'", 2),
    "unknown refiner": (["--refiner", "sharp"], "invalid choice: 'sharp'", 2),
    "not png": (["--out", "x.jpg"], "--out must end in .png", 1),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_one_line_nonzero_and_writes_nothing(tmp_path, capsys, case):
    extra, message, code = BAD_CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    assert generate(out, *extra) == code
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1, err
    assert list(out.iterdir()) == []


def test_corrupt_and_non_image_id_files(tmp_path, capsys):
    for name, data in [("corrupt.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40), ("notes.jpg", b"hello, world")]:
        path = write(tmp_path, name, data)
        out = tmp_path / f"out-{name}"
        out.mkdir()
        assert generate(out, "--id-image", path) == 1
        err = capsys.readouterr().err.strip()
        assert name in err and len(err.splitlines()) == 1
        assert list(out.iterdir()) == []


def test_wrong_checkpoint_architecture(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "not_pulid.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(path))
    argv = [
        "generate",
        "--flux",
        "tiny-random",
        "--encoder",
        "tiny-random",
        "--pulid",
        str(path),
        "--prompt",
        "a person",
        "--id-image",
        str(REFERENCE),
        "--out",
        str(tmp_path / "o.png"),
    ]
    assert run(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "is not a PuLID-FLUX checkpoint: missing key 'pulid_encoder" in err
    assert not (tmp_path / "o.png").exists()


def test_mask_image_confines_the_identity_and_centres_the_prior(tmp_path):
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (32, 0, 64, 24))  # top-right quarter
    mask.save(tmp_path / "mask.png")
    assert generate(tmp_path, "--mask-image", str(tmp_path / "mask.png"), "--mask-strip") == 0
    schedule = json.loads((tmp_path / "out.json").read_text())["schedule"]
    assert schedule["prior_box"] == [0.5, 0.0, 1.0, 0.5]


def test_black_mask_image_is_an_error(tmp_path, capsys):
    Image.new("L", (32, 24), 0).save(tmp_path / "black.png")
    out = tmp_path / "o"
    out.mkdir()
    assert generate(out, "--mask-image", str(tmp_path / "black.png")) == 1
    assert "black everywhere" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_no_face_with_a_detector_is_an_error(tmp_path, capsys):
    pytest.importorskip("dlib")
    Image.new("RGB", (128, 128), (90, 140, 200)).save(tmp_path / "sky.png")
    out = tmp_path / "o"
    out.mkdir()
    assert generate(out, "--id-image", str(tmp_path / "sky.png"), "--detector", "dlib") == 1
    err = capsys.readouterr().err.strip()
    assert "no face" in err and "sky.png" in err and len(err.splitlines()) == 1
    assert list(out.iterdir()) == []


def test_the_library_call_gives_what_the_cli_writes(tmp_path, tiny_pipe):
    """`idgen.generation.generate` is the CLI's generation: same image bytes, strips and sidecar."""
    from idgen.errors import IdgenError
    from idgen.generation import GenerationRequest
    from idgen.generation import generate as generate_result

    assert generate(tmp_path, "--compare", "--mask-strip", "--seed", "3") == 0
    request = GenerationRequest("a person on a beach", REFERENCE, width=64, height=48, num_inference_steps=5,
                                seed=3, compare=True, record_masks=True)  # fmt: skip
    result = generate_result(tiny_pipe, request)
    assert [step for step, _, _ in result.masks_per_step] == [0, 1, 2, 3, 4]
    written = result.save(tmp_path / "lib.png", mask_strip=True)
    assert [p.name for p in written] == ["lib.png", "lib.masks.png", "lib.compare.png", "lib.json"]
    for suffix in (".png", ".masks.png", ".compare.png"):
        assert (tmp_path / f"lib{suffix}").read_bytes() == (tmp_path / f"out{suffix}").read_bytes()
    sidecar = json.loads((tmp_path / "lib.json").read_text())
    assert sidecar["parameters"]["seed"] == 3 and sidecar["sampling"]["num_inference_steps"] == 5
    with pytest.raises(IdgenError, match=r"lib\.png exists; pass --overwrite"):
        result.save(tmp_path / "lib.png")


def test_every_backbone_from_the_command_line(tmp_path):
    for backbone in ("flux-wplus", "sd15-wplus"):
        out = f"{backbone}.png"
        assert generate(tmp_path, "--backbone", backbone, "--compare", "--mask-strip", out=out) == 0
        sidecar = json.loads((tmp_path / out).with_suffix(".json").read_text())
        assert sidecar["parameters"]["backbone"] == backbone
        assert Image.open(tmp_path / out).size == (64, 48)
        assert Image.open((tmp_path / out).with_suffix(".compare.png")).size[0] == 4 * 128  # panels at 2x


def test_a_backbone_without_hub_defaults_needs_its_models(tmp_path, capsys):
    argv = ["generate", "--backbone", "sd15-wplus", "--flux", str(tmp_path / "sd15"), "--prompt", "a person",
            "--id-image", str(REFERENCE), "--out", str(tmp_path / "out.png")]  # fmt: skip
    assert run(argv) == 1
    assert capsys.readouterr().err == (
        "idgen: error: --backbone sd15-wplus needs --base-model and --adapter (it has no hub default)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_sd15_is_checked_against_its_own_limits_not_flux_s(tmp_path, capsys):
    # SD takes multiples of 8 (FLUX 16), so 40x40 runs; without --steps, SD's own 30 bound --start-step.
    assert generate(tmp_path, "--backbone", "sd15-wplus", "--width", "40", "--height", "40") == 0
    assert Image.open(tmp_path / "out.png").size == (40, 40)
    argv = [
        "generate",
        "--backbone",
        "sd15-wplus",
        *TINY,
        "--prompt",
        "a person",
        "--id-image",
        str(REFERENCE),
    ]
    assert run([*argv, "--start-step", "30", "--out", str(tmp_path / "b.png")]) == 1
    assert capsys.readouterr().err == "idgen: error: --start-step must be in [0, 29], got 30\n"


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (
            ["--true-cfg", "3", "--max-sequence-length", "64"],
            "--true-cfg, --max-sequence-length: FLUX options",
        ),
        (["--id-image", str(REFERENCE), "--id-image", str(REFERENCE)], "several people or photos (repeated"),
        (["--id-image", str(REFERENCE), "--id-box", "0,0,1,1"], "several people or photos (repeated"),
    ],
)
def test_flux_only_options_are_refused_on_sd15_before_anything_loads(tmp_path, capsys, extra, named):
    # SD1.5's pipeline would swallow these keywords and ignore them.
    assert generate(tmp_path, "--backbone", "sd15-wplus", *extra) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"idgen: error: {named}") and err.endswith(
        ", which --backbone sd15-wplus does not take\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_threads_default_to_one_for_the_demo_world_and_obey_the_flag():
    import argparse

    from idgen.cli.common import cpu_threads

    def args(**given):
        return argparse.Namespace(**{"flux": None, "pulid": None, "encoder": None, "threads": None, **given})

    assert cpu_threads(args()) == 1
    assert cpu_threads(args(threads=3)) == 3
    assert cpu_threads(args(flux="tiny-random")) is None  # torch's own default for other models


def test_several_images_are_numbered_and_each_is_its_seeds_single_image(tmp_path, capsys):
    assert generate(tmp_path, "--num-images", "2", "--seed", "5", out="many.png") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "many-0.json",
        "many-0.png",
        "many-1.json",
        "many-1.png",
    ]
    assert [json.loads((tmp_path / f"many-{k}.json").read_text())["seed"] for k in (0, 1)] == [5, 6]
    assert generate(tmp_path, "--seed", "6", out="one.png") == 0
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "many-1.png").read_bytes()
    assert generate(tmp_path, "--seeds", "6,5", out="listed.png") == 0
    assert (tmp_path / "listed-0.png").read_bytes() == (tmp_path / "one.png").read_bytes()
    assert json.loads((tmp_path / "listed-1.json").read_text())["seed"] == 5


def test_several_images_refuse_any_existing_output_before_writing(tmp_path, capsys):
    (tmp_path / "o-1.png").write_bytes(b"mine")
    assert generate(tmp_path, "--seeds", "1,2", out="o.png") == 1
    assert "o-1.png exists; pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o-1.png"]
    assert (tmp_path / "o-1.png").read_bytes() == b"mine"


def test_offload_loads_on_the_cpu_and_hands_the_gpu_to_diffusers(monkeypatch):
    """No GPU here: the offload method is recorded instead of run (its arithmetic is tested on the CPU in
    test_diffusers_conventions)."""
    import idgen
    from idgen.pipelines.pulid_flux import IdentityFluxPipeline

    called = []
    monkeypatch.setattr(
        IdentityFluxPipeline, "enable_model_cpu_offload", lambda self, **kw: called.append(kw)
    )
    tiny = idgen.TINY_RANDOM
    pipe = idgen.load(tiny, tiny, tiny, device="cuda", offload="model")
    assert called == [{"device": "cuda"}]
    assert next(pipe.flux.transformer.parameters()).device.type == "cpu"
    assert next(pipe.flux.transformer.parameters()).dtype == torch.bfloat16  # the GPU's default dtype


def test_a_real_weights_size_on_the_demo_world_is_flagged(capsys):
    from idgen.cli.generate import warn_demo_size

    warn_demo_size(896, 1152)
    assert capsys.readouterr().err == (
        "idgen: warning: this is the demo world, trained at 64x64, not 896x1152; "
        "real FLUX needs --flux (e.g. black-forest-labs/FLUX.1-dev)\n"
    )
    for width, height in ((None, None), (128, 128), (None, 96)):  # the world's own sizes stay quiet
        warn_demo_size(width, height)
    assert capsys.readouterr().err == ""
