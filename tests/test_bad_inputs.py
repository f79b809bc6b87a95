"""Bad inputs, one row each: the command line, the exit code, a fragment of the one-line message, and no
file written or changed in the working folder. Usage errors exit 2, every other refusal exits 1, before any
model loads (most rows take milliseconds)."""

from __future__ import annotations

import hashlib
import itertools
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idgen.cli import main
from idgen.world.bundle import ASSETS

GEN = ["generate", "--prompt", "a person on a beach", "--id-image", "{d}/me.png", "--out", "{d}/o.png"]
TINY = ["--flux", "tiny-random", "--pulid", "tiny-random", "--encoder", "tiny-random"]
RENDER = ["world", "render", "--out", "{d}/renders"]
TRAIN = ["world", "train", "--quick", "--work", "{d}/work"]
PIDIFF = ["train", "pidiff", "--data", "{d}/data", "--out", "{d}/run", "--model", "{d}/sd15"]
EDIT = ["edit", "{d}/code.npy", "--direction", "{d}/dir.npy", "--out", "{d}/edited.npy"]
EVAL = ["eval", "run", "--benchmark", "demo-quick", "--out", "{d}/eval"]
FINITE = "must be a finite number"

# (case, argv, exit code, message fragment)
ROWS = [
    # NaN, inf and negative numbers
    ("id-weight nan", [*GEN, "--id-weight", "nan"], 1, f"--id-weight {FINITE}, got nan"),
    ("id-weight inf", [*GEN, "--id-weight", "inf"], 1, f"--id-weight {FINITE}, got inf"),
    ("id-weight -inf", [*GEN, "--id-weight=-inf"], 1, f"--id-weight {FINITE}"),
    ("id-weight negative", [*GEN, "--id-weight", "-0.5"], 1, "--id-weight must be >= 0, got -0.5"),
    ("true-cfg nan", [*GEN, "--true-cfg", "nan"], 1, f"--true-cfg {FINITE}"),
    ("guidance inf", [*GEN, "--guidance", "inf"], 1, f"--guidance {FINITE}"),
    ("min-spread above 1", [*GEN, "--min-spread", "2"], 1, "--min-spread must be in [0, 1], got 2.0"),
    ("late-floor nan", [*GEN, "--late-floor", "nan"], 1, f"--late-floor {FINITE}"),
    ("prior-box nan", [*GEN, "--prior-box", "0,0,nan,1"], 2, "--prior-box must be four finite numbers"),
    ("prior-box three numbers", [*GEN, "--prior-box", "0,0,1"], 2, "left,top,right,bottom"),
    (
        "thresholds crossed",
        [*GEN, "--early-threshold", "0.2", "--late-threshold", "0.5"],
        1,
        "thresholds must satisfy 0 <= late < early <= 1",
    ),
    ("id-weight not a number", [*GEN, "--id-weight", "heavy"], 2, "invalid float value: 'heavy'"),
    ("steps not an integer", [*GEN, "--steps", "1.5"], 2, "invalid int value: '1.5'"),
    # sizes: the model's own multiple (8 in the demo world, 16 for FLUX), only the user's values named
    ("width 0", [*GEN, "--width", "0"], 1, "--width must be a positive multiple of 8 for this model, got 0"),
    ("width not a multiple of 8", [*GEN, "--width", "36"], 1, "multiple of 8 for this model, got 36"),
    ("height negative", [*GEN, "--height", "-64"], 1, "--height must be a positive multiple of 8"),
    (
        "flux width not a multiple of 16",
        [*GEN, *TINY, "--width", "40"],
        1,
        "multiple of 16 for this model, got 40",
    ),
    ("side too long", [*GEN, "--width", "100000", "--height", "100000"], 1, "--width must be at most 8192"),
    (
        "pixel limit",
        [*GEN, "--width", "8192", "--height", "8192"],
        1,
        "over the limit of 16777216 (4096x4096)",
    ),
    ("steps 0", [*GEN, "--steps", "0"], 1, "--steps must be in [1, 1000], got 0"),
    ("threads 0", [*GEN, "--threads", "0"], 1, "--threads must be in [1, 1024], got 0"),
    # offload, several images, seeds
    (
        "offload on the cpu",
        [*GEN, *TINY, "--offload", "model", "--device", "cpu"],
        1,
        "offload 'model' moves models between the CPU and an accelerator; it needs a GPU device",
    ),
    ("offload on the cpu, demo world", [*GEN, "--offload", "group", "--device", "cpu"], 1, "not 'cpu'"),
    ("eval offload on the cpu", [*EVAL, "--offload", "model", "--device", "cpu"], 1, "not 'cpu'"),
    ("offload unknown", [*GEN, "--offload", "disk"], 2, "argument --offload: invalid choice: 'disk'"),
    ("num-images 0", [*GEN, "--num-images", "0"], 1, "--num-images must be in [1, 1000], got 0"),
    ("num-images not an integer", [*GEN, "--num-images", "two"], 2, "invalid int value: 'two'"),
    ("seeds not integers", [*GEN, "--seeds", "1,x"], 2, "--seeds must be whole numbers separated by commas"),
    ("seeds negative", [*GEN, "--seeds", "3,-1"], 1, "--seeds must be in [0, 18446744073709551615], got -1"),
    (
        "seeds against num-images",
        [*GEN, "--seeds", "1,2", "--seeds", "3", "--num-images", "2"],
        1,
        "--seeds gives 3 seeds but --num-images is 2",
    ),
    (
        "seed plus images past the range",
        [*GEN, "--seed", str(2**64 - 1), "--num-images", "2"],
        1,
        "--seed must",
    ),
    (
        "out in a read-only file system",
        [*GEN[:-1], "/proc/o.png"],
        1,
        "cannot write --out: no write permission in /proc",
    ),
    ("eval threads negative", [*EVAL, "--threads", "-2"], 1, "--threads must be >= 1, got -2"),
    ("steps negative", [*GEN, "--steps", "-3"], 1, "--steps must be in [1, 1000], got -3"),
    ("start-step past the last", [*GEN, "--start-step", "20"], 1, "--start-step must be in [0, 19], got 20"),
    ("start-step of 5 steps", [*GEN, "--steps", "5", "--start-step", "5"], 1, "in [0, 4], got 5"),
    ("start-step negative", [*GEN, "--start-step", "-1"], 1, "--start-step must be in [0, 19], got -1"),
    (
        "max-sequence-length 0",
        [*GEN, "--max-sequence-length", "0"],
        1,
        "--max-sequence-length must be in [1, 512]",
    ),
    ("max-sequence-length huge", [*GEN, "--max-sequence-length", "99999"], 1, "in [1, 512], got 99999"),
    ("seed negative", [*GEN, "--seed", "-1"], 1, "--seed must be in [0, 18446744073709551615], got -1"),
    ("seed 2**70", [*GEN, "--seed", str(2**70)], 1, f"got {2**70}"),
    # devices
    ("device missing", [*GEN, "--device", "cuda:99"], 1, "--device cuda:99"),
    ("device unknown", [*GEN, "--device", "banana"], 1, "unknown device 'banana'"),
    # outputs: never a folder, never under a file, never an input, never replaced unasked
    ("out is a folder", [*GEN, "--out", "{d}/folder.png"], 1, "--out is a folder"),
    ("out under a file", [*GEN, "--out", "{d}/afile/o.png"], 1, "is a file, not a folder"),
    ("out is the id image", [*GEN, "--out", "{d}/me.png"], 1, "is also an input"),
    ("out is the id image, overwrite", [*GEN, "--out", "{d}/me.png", "--overwrite"], 1, "is also an input"),
    (
        "out is the mask",
        [*GEN, "--mask-image", "{d}/mask.png", "--out", "{d}/mask.png"],
        1,
        "is also an input",
    ),
    ("out exists", [*GEN, "--out", "{d}/old.png"], 1, "old.png exists; pass --overwrite to replace it"),
    ("sidecar exists", [*GEN, "--out", "{d}/side.png"], 1, "side.json exists; pass --overwrite"),
    ("compare exists", [*GEN, "--out", "{d}/cmp.png"], 1, "cmp.compare.png exists"),
    ("mask strip exists", [*GEN, "--out", "{d}/strip.png"], 1, "strip.masks.png exists"),
    ("out not png", [*GEN, "--out", "{d}/o.jpg"], 1, "--out must end in .png, got o.jpg"),
    ("control characters escaped", [*GEN, "--out", "{d}/o\x1b[31m.jpg"], 1, "got o\\x1b[31m.jpg"),
    # option combinations and inputs
    ("mask strip without spatial", [*GEN, "--mode", "uniform", "--mask-strip"], 1, "need --mode spatial"),
    ("mask gif without identity", [*GEN, "--mode", "none", "--mask-gif"], 1, "need --mode spatial"),
    (
        "mask image without spatial",
        [*GEN, "--mode", "uniform", "--mask-image", "{d}/mask.png"],
        1,
        "--mask-image needs --mode spatial",
    ),
    (
        "mask image of another shape",
        [*GEN, "--mask-image", "{d}/wide.png"],
        1,
        "mask image is 100x50 but the image is 64x64",
    ),
    ("mask image missing", [*GEN, "--mask-image", "{d}/nope.png"], 1, "mask image not found"),
    ("mask image black", [*GEN, "--mask-image", "{d}/black.png"], 1, "black everywhere"),
    ("id image missing", [*GEN, "--id-image", "{d}/nope.png"], 1, "id image not found"),
    ("id image is a folder", [*GEN, "--id-image", "{d}/folder.png"], 1, "id image is a directory"),
    ("id image corrupt", [*GEN, "--id-image", "{d}/corrupt.png"], 1, "corrupt.png"),
    (
        "no id image",
        ["generate", "--prompt", "a person", "--out", "{d}/o.png"],
        1,
        "--mode spatial needs --id-image",
    ),
    ("empty prompt", [*GEN, "--prompt", "   "], 1, "prompt is empty"),
    ("no prompt", ["generate", "--out", "{d}/o.png"], 2, "the following arguments are required: --prompt"),
    ("unknown preset", [*GEN, "--preset", "fancy"], 1, "unknown SpatialID preset 'fancy'"),
    (
        "mask settings in uniform mode",
        [*GEN, "--mode", "uniform", "--preset", "v1", "--prior-box", "0,0,0.5,0.5"],
        1,
        "--preset, --prior-box: SpatialID mask settings, which --mode uniform does not use",
    ),
    (
        "a compare strip without identity",
        [*GEN, "--mode", "none", "--compare-id-weight", "2"],
        1,
        "--compare and --compare-id-weight compare identity modes; --mode none injects none",
    ),
    (
        "true CFG settings with true CFG off",
        [*GEN, "--true-cfg", "1", "--negative-prompt", "blurry"],
        1,
        "--negative-prompt: a true CFG setting, but true CFG is off at 1 (give --true-cfg > 1)",
    ),
    (
        "true CFG settings on a model whose true CFG is off",
        [*GEN, *TINY, "--true-cfg-start-step", "2"],
        1,
        "--true-cfg-start-step: a true CFG setting, but true CFG is off at 1 (give --true-cfg > 1)",
    ),
    ("unknown mode", [*GEN, "--mode", "everywhere"], 2, "invalid choice: 'everywhere'"),
    ("unknown option", [*GEN, "--colour", "red"], 2, "unrecognized arguments: --colour"),
    (
        "pickle planted as a checkpoint",
        [
            *GEN,
            "--flux",
            "tiny-random",
            "--encoder",
            "tiny-random",
            "--pulid",
            "{d}/planted.pt",
            "--width",
            "32",
            "--height",
            "32",
        ],
        1,
        "planted.pt cannot be read with weights_only=True (it needs posix.getcwd)",
    ),
    # idgen world
    ("render count 0", [*RENDER, "--count", "0"], 1, "--count must be in [1, 1000000], got 0"),
    ("render seed negative", [*RENDER, "--seed", "-1"], 1, "--seed must be in [0, "),
    ("render out is a file", ["world", "render", "--out", "{d}/afile"], 1, "--out is a file, not a folder"),
    (
        "render over a render",
        ["world", "render", "--out", "{d}/rendered"],
        1,
        "index.jsonl exists; pass --overwrite",
    ),
    (
        "render over a killed render",
        [*RENDER[:-1], "{d}/killed", "--split", "test"],
        1,
        "test_00003.png exists",
    ),
    ("train threads 0", [*TRAIN, "--threads", "0"], 1, "--threads must be in [1, 1024], got 0"),
    ("train threads negative", [*TRAIN, "--threads", "-1"], 1, "--threads must be in [1, 1024], got -1"),
    ("train unknown stage", [*TRAIN, "--stage", "vae"], 1, "unknown stage 'vae'"),
    ("train adapter seed -1", [*TRAIN, "--adapter-seed", "-1"], 1, "--adapter-seed must be in [0, 1000]"),
    ("train seed -1", [*TRAIN, "--seed", "-1"], 1, "--seed must be in [0, 1000], got -1"),
    ("train seed 1001", [*TRAIN, "--seed", "1001"], 1, "--seed must be in [0, 1000], got 1001"),
    ("train seed not an integer", [*TRAIN, "--seed", "1.5"], 2, "invalid int value: '1.5'"),
    (
        "train seed and adapter seed",
        [*TRAIN, "--seed", "1", "--adapter-seed", "2"],
        1,
        "pass --seed or --adapter-seed, not both",
    ),
    (
        "train work of another seed",
        ["world", "train", "--quick", "--work", "{d}/seed-0-work", "--seed", "3"],
        1,
        "seed-0-work was started with --seed 0; pass another --work for --seed 3",
    ),
    (
        "train work of an earlier run",
        ["world", "train", "--quick", "--work", "{d}/rendered", "--seed", "3"],
        1,
        "rendered was started with --seed 0",
    ),
    ("train over the shipped assets", [*TRAIN, "--assets", str(ASSETS)], 1, "the package's shipped assets"),
    ("train work is a file", ["world", "train", "--work", "{d}/afile"], 1, "--work is a file, not a folder"),
    ("world without a command", ["world"], 2, "required: world_command"),
    # idgen train pidiff
    (
        "pidiff data missing",
        [*PIDIFF, "--data", "{d}/nope"],
        1,
        "--data must be a folder with metadata.jsonl",
    ),
    ("pidiff data without metadata", PIDIFF, 1, "metadata.jsonl not found"),
    ("pidiff lr nan", [*PIDIFF, "--lr", "nan"], 1, f"--lr {FINITE}"),
    ("pidiff steps 0", [*PIDIFF, "--steps", "0"], 1, "--steps must be >= 1, got 0"),
    ("pidiff batch size 0", [*PIDIFF, "--batch-size", "0"], 1, "--batch-size must be >= 1, got 0"),
    ("pidiff seed negative", [*PIDIFF, "--seed", "-5"], 1, "--seed must be in [0, "),
    ("pidiff no model", PIDIFF[:-2], 2, "required: --model"),
    # idgen edit
    ("edit alpha nan", [*EDIT, "--alpha", "nan"], 1, f"--alpha {FINITE}, got nan"),
    ("edit alpha inf", [*EDIT, "--alpha", "inf"], 1, f"--alpha {FINITE}, got inf"),
    ("edit out is the code", [*EDIT, "--out", "{d}/code.npy"], 1, "is also an input"),
    ("edit out exists", [*EDIT, "--out", "{d}/old.npy"], 1, "old.npy exists; pass --overwrite"),
    (
        "edit code missing",
        ["edit", "{d}/nope.npy", "--direction", "{d}/dir.npy", "--out", "{d}/e.npy"],
        1,
        "W+ code not found",
    ),
    ("edit out suffix", [*EDIT, "--out", "{d}/e.pt"], 1, "--out must end in .safetensors or .npy"),
    ("edit image without model", [*EDIT, "--image", "{d}/e.png"], 1, "--image needs --model and --adapter"),
    ("edit num-layers 0", [*EDIT, "--num-layers", "0"], 1, "--num-layers must be in [1, 1024], got 0"),
    (
        "edit swap without other",
        ["edit", "{d}/code.npy", "--swap", "fine", "--out", "{d}/e.npy"],
        1,
        "--swap needs --other",
    ),
    (
        "edit pickled code",
        ["edit", "{d}/pickled.npy", "--direction", "{d}/dir.npy", "--out", "{d}/e.npy"],
        1,
        "not readable",
    ),
    (
        "edit image device missing",
        [*EDIT, "--image", "{d}/e.png", "--model", "m", "--adapter", "a", "--device", "cuda:99"],
        1,
        "--device cuda:99",
    ),
    # idgen eval: arguments only (the run folder's own checks live in tests/eval)
    ("eval batch size 0", [*EVAL, "--batch-size", "0"], 1, "--batch-size must be >= 1"),
    (
        "transformer file without a base model",
        [*GEN, "--transformer", "{d}/afile"],
        1,
        "--transformer replaces a FLUX model's transformer: give --flux too (a FLUX folder or hub id)",
    ),
    (
        "transformer file on tiny-random",
        [*GEN, *TINY, "--transformer", "{d}/afile"],
        1,
        "needs the base model as a FLUX folder or hub id",
    ),
    ("eval shard", [*EVAL, "--shard", "1"], 2, "--shard must be i/n, got '1'"),
    ("eval seed policy", [*EVAL, "--seed-policy", "random"], 2, "invalid choice: 'random'"),
    ("eval report without out", ["eval", "report"], 1, "needs --out"),
    ("eval report of an empty folder", ["eval", "report", "--out", "{d}/folder.png"], 1, "plan.json"),
    # the program itself
    ("no command", [], 2, "required: command"),
    ("unknown command", ["paint"], 2, "invalid choice: 'paint'"),
]
# Messages must not name what the user did not give, nor repeat torch's advice to unpickle.
ABSENT = {
    "width not a multiple of 8": ["--height", "1024"],
    "pickle planted as a checkpoint": [
        "weights_only=False",
        "`False`",
        "Re-running",
        "Weights only load failed",
    ],
}


def make_folder(d: Path) -> None:
    """The inputs every row may point at."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "me.png")
    Image.new("L", (64, 64), 255).save(d / "mask.png")
    Image.new("L", (100, 50), 255).save(d / "wide.png")
    Image.new("L", (64, 64), 0).save(d / "black.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (d / "folder.png").mkdir()
    (d / "afile").write_text("a file\n")
    for name in ("old.png", "side.json", "cmp.compare.png", "strip.masks.png", "old.npy"):
        (d / name).write_bytes(b"the user's file")
    (d / "rendered").mkdir()
    (d / "rendered" / "index.jsonl").write_text("{}\n")
    (d / "killed").mkdir()
    (d / "seed-0-work").mkdir()
    (d / "seed-0-work" / "seed.json").write_text('{"seed": 0}\n')
    Image.new("RGB", (64, 64)).save(d / "killed" / "test_00003.png")
    (d / "data").mkdir()
    np.save(d / "code.npy", np.zeros((18, 512), np.float32))
    np.save(d / "dir.npy", np.ones(512, np.float32))
    np.save(d / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    torch.save({"pulid_encoder": Planted()}, d / "planted.pt")


class Planted:
    """Unpickling this would run os.getcwd: a stand-in for a malicious checkpoint."""

    def __reduce__(self):
        return (os.getcwd, ())


def snapshot(d: Path) -> dict[str, str]:
    return {
        p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(d.rglob("*"))
    }


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse exits on its own
        return int(e.code or 0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-inputs")
    make_folder(d)
    return d


def test_the_table_is_large_and_unique():
    assert len(ROWS) >= 60
    assert len({case for case, *_ in ROWS}) == len(ROWS)
    assert set(ABSENT) <= {case for case, *_ in ROWS}


@pytest.mark.parametrize(("case", "argv", "code", "fragment"), ROWS, ids=[row[0] for row in ROWS])
def test_bad_input(folder, capsys, monkeypatch, case, argv, code, fragment):
    monkeypatch.chdir(folder)  # a relative default (outputs/...) would land here too
    before = snapshot(folder)
    assert run([a.replace("{d}", str(folder)) for a in argv]) == code
    err = capsys.readouterr().err.strip()
    assert fragment in err, err
    assert len(err.splitlines()) == 1 and len(err) < 600, err
    assert err.startswith("idgen"), err
    for absent in ABSENT.get(case, []):
        assert absent not in err, err
    assert snapshot(folder) == before


def test_debug_shows_the_traceback(folder, capsys):
    assert run(["--debug", *[a.replace("{d}", str(folder)) for a in GEN], "--id-weight", "nan"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "IdgenError" in err
    assert err.strip().splitlines()[-1] == "idgen: error: --id-weight must be a finite number, got nan"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_folder(folder, capsys):
    locked = folder / "locked"
    locked.mkdir(exist_ok=True)
    locked.chmod(0o555)
    try:
        argv = [a.replace("{d}", str(folder)) for a in GEN] + ["--out", str(locked / "o.png")]
        assert run(argv) == 1
        assert "no write permission" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)
        locked.rmdir()


def test_a_long_value_is_cut_in_the_message(folder, capsys):
    assert run([*[a.replace("{d}", str(folder)) for a in GEN], "--preset", "x" * 20_000]) == 1
    err = capsys.readouterr().err.strip()
    assert "unknown SpatialID preset" in err and len(err) < 600 and "characters)" in err


def test_the_demo_prompt_warning_is_short(capsys):
    from idgen.cli.generate import warn_demo_prompt

    words = ["".join(letters) for letters in itertools.product("qxzj", repeat=6)]  # 4096 unknown words
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_demo_prompt("a person " + " ".join(words) + "\x1b[2J")
    lines = [str(w.message) for w in caught]  # the dropped words: through the warnings the CLI prints
    assert len(lines) == 1 and all(len(line) < 600 for line in lines)
    assert "not in the demo world's vocabulary: qqqqqq, qqqqqx" in lines[0] and "more)" in lines[0]
    assert "\x1b" not in "".join(lines) and capsys.readouterr().err == ""


def test_overwrite_replaces_and_refusal_keeps_the_files(tmp_path, capsys):
    reference = Path(__file__).resolve().parents[1] / "assets" / "examples" / "reference.png"
    argv = ["generate", *TINY, "--prompt", "a person", "--id-image", str(reference), "--width", "32"]
    argv += ["--height", "32", "--steps", "2", "--out", str(tmp_path / "o.png")]
    assert run(argv) == 0
    first = snapshot(tmp_path)
    assert sorted(first) == ["o.json", "o.png"]
    assert run([*argv, "--seed", "7"]) == 1  # refused: the first result stays as it was
    assert "o.png exists; pass --overwrite" in capsys.readouterr().err
    assert snapshot(tmp_path) == first
    assert run([*argv, "--seed", "7", "--overwrite"]) == 0
    assert snapshot(tmp_path)["o.png"] != first["o.png"]


def test_warnings_are_one_line():
    from idgen.cli import one_line_warning

    text = one_line_warning("no face found in x.png\nsecond line", UserWarning, "f.py", 3)
    assert text == "idgen: warning: no face found in x.png\n"
