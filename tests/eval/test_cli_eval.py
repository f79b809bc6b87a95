import hashlib
import json
import shutil

import pytest

from idgen.cli import main


def test_demo_quick_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(["eval", "--benchmark", "demo-quick", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    )
    for name in ("report.md", "index.html", "summary.json", "results.jsonl", "plots/facesim.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    spatial, uniform = summary["methods"]["spatial"], summary["methods"]["uniform"]
    assert spatial["images_scored"] == uniform["images_scored"] == 12
    assert spatial["backdrop_shift"]["mean"] < uniform["backdrop_shift"]["mean"]
    assert spatial["contamination_px"]["mean"] < uniform["contamination_px"]["mean"]
    err = capsys.readouterr().err
    assert "idgen: metric aesthetic not computed: no LAION head exists for the demo world" in err
    assert summary["metrics"]["facesim"] == {"computed": True, "model": "world-face"}
    assert not (out / ".lock-shard-0-of-1").exists()
    # a re-run finds everything done
    assert main(["eval", "--benchmark", "demo-quick", "--out", str(out), "--no-progress"]) == 0
    assert "generated 0 images" in capsys.readouterr().out
    assert main(["eval", "report", "--out", str(out)]) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--benchmark", "nope"], "unknown benchmark 'nope'"),
        (["--photos", "x"], "give --benchmark, or --photos and --prompts"),
        (["--benchmark", "demo-quick", "--methods", "magic"], "unknown method 'magic'"),
        (["--benchmark", "demo-quick", "--shard", "3/2"], "shard must be i/n"),
        (["--benchmark", "demo-quick", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["--benchmark", "demo-quick", "--methods", "spatial:preset=balnced"], "unknown preset 'balnced'"),
        (["--benchmark", "demo-quick", "--methods", "uniform", "uniform"], "the same method is listed twice"),
        (["--benchmark", "demo-quick", "--steps", "0"], "--steps must be >= 1, got 0"),
        (
            ["--benchmark", "demo-quick", "--guidance", "nan"],
            "--guidance must be a finite number >= 0, got nan",
        ),
        (["--benchmark", "demo-quick", "--limit-photos", "0"], "--limit-photos must be >= 1, got 0"),
        (
            ["--benchmark", "demo-quick", "--protocol", "ibench"],
            "unknown protocol 'ibench' (known: spatialid-",
        ),
        (
            ["--benchmark", "demo-quick", "--backbone", "sd15-wplus", "--true-cfg", "3"],
            "--true-cfg: a FLUX option, which --backbone sd15-wplus does not take",
        ),
    ],
)
def test_bad_eval_arguments_give_one_line_errors(tmp_path, capsys, args, message):
    assert main(["eval", *args, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_an_empty_prompts_file_is_named(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos/a.png").write_bytes(b"x")
    (tmp_path / "prompts.txt").write_text("\n# nothing\n")
    code = main(["eval", "--photos", str(tmp_path / "photos"), "--prompts", str(tmp_path / "prompts.txt")])
    assert code == 1
    assert f"prompts file has no prompts: {tmp_path / 'prompts.txt'}" in capsys.readouterr().err


def test_python_code_is_not_a_prompt_list(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos/a.png").write_bytes(b"x")
    (tmp_path / "config").mkdir()
    (tmp_path / "config/prompt.py").write_text('SYSTEM = """You judge images."""\n')
    args = ["eval", "--photos", str(tmp_path / "photos"), "--prompts", str(tmp_path / "config/prompt.py")]
    assert main([*args, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "prompts file must be IBench's json or a .txt with one prompt per line, not .py" in err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_a_refused_eval_leaves_nothing_rendered(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "plan.json").write_text(json.dumps({"benchmark": {"name": "other"}, "methods": []}))
    assert main(["eval", "--benchmark", "demo-quick", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "holds results of a different plan: batch_size: absent in the folder, 8 now (and " in err
    assert sorted(p.name for p in out.iterdir()) == ["plan.json"]


def test_protocol_settings_and_explicit_flags():
    from idgen.eval.protocols import PROTOCOLS, resolve_sampling
    from idgen.pipelines.pulid_flux import FLUX_DEFAULTS

    ibench = PROTOCOLS["spatialid-ibench"]
    full = resolve_sampling(
        FLUX_DEFAULTS, ibench, {"num_inference_steps": 30, "width": None}, small_model=False
    )
    assert full == {
        "width": 896,
        "height": 1152,
        "num_inference_steps": 30,
        "guidance_scale": 4.0,
        "true_cfg_scale": 1.0,
    }  # fmt: skip  (an explicit flag wins over the protocol)
    tiny = resolve_sampling({**FLUX_DEFAULTS, "width": 64, "height": 64}, ibench, {}, small_model=True)
    assert (tiny["width"], tiny["height"], tiny["num_inference_steps"]) == (64, 64, 25)
    told = resolve_sampling({"width": 64, "height": 64}, ibench, {"width": 128}, small_model=True)
    assert told["width"] == 128
    assert (ibench.seed_policy, ibench.seed, ibench.methods) == (
        "fixed", 42, ("uniform", "spatial", "spatial:preset=balanced")
    )  # fmt: skip


def test_models_are_keyed_by_hub_id_or_content_never_by_where_they_are(tmp_path, monkeypatch):
    from idgen.eval.protocols import source_key

    (tmp_path / "a").mkdir()
    (tmp_path / "a/pulid.safetensors").write_bytes(b"weights")
    assert source_key("guozinan/PuLID") == "guozinan/PuLID" and source_key(None) is None
    key = source_key(str(tmp_path / "a/pulid.safetensors"))
    assert key == "file sha256:" + hashlib.sha256(b"weights").hexdigest()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    monkeypatch.chdir(tmp_path / "b")
    assert source_key("pulid.safetensors") == key  # the same file elsewhere, by a relative path: same key
    assert source_key(str(tmp_path / "a")) == source_key(str(tmp_path / "b"))  # folders by content


def test_the_sd15_backbone_runs_with_its_own_sampling_defaults(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (32, 32), "grey").save(tmp_path / "photos/a.png")  # the tiny encoder takes any photo
    (tmp_path / "prompts.txt").write_text("a person on a beach\n")
    tiny = ["--flux", "tiny-random", "--pulid", "tiny-random", "--encoder", "tiny-random"]
    args = ["eval", "--photos", str(tmp_path / "photos"), "--prompts", str(tmp_path / "prompts.txt")]
    out = tmp_path / "o"
    assert (
        main([*args, "--backbone", "sd15-wplus", *tiny, "--steps", "2", "--no-progress", "--out", str(out)])
        == 0
    )
    plan = json.loads((out / "plan.json").read_text())["generation"]
    assert plan["models"]["backbone"] == "sd15-wplus"
    sampling = plan["sampling"]
    assert (sampling["guidance_scale"], sampling["num_inference_steps"]) == (
        7.5,
        2,
    )  # SD's guidance, not FLUX's
    assert "true_cfg_scale" not in sampling
    assert json.loads((out / "summary.json").read_text())["methods"]["spatial"]["images_scored"] == 1
