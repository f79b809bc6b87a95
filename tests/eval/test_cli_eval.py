import json

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
    assert "skipped metric aesthetic" in capsys.readouterr().err
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
    ],
)
def test_bad_eval_arguments_give_one_line_errors(tmp_path, capsys, args, message):
    assert main(["eval", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_an_empty_prompts_file_is_named(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos/a.png").write_bytes(b"x")
    (tmp_path / "prompts.txt").write_text("\n# nothing\n")
    code = main(["eval", "--photos", str(tmp_path / "photos"), "--prompts", str(tmp_path / "prompts.txt")])
    assert code == 2
    assert f"prompts file has no prompts: {tmp_path / 'prompts.txt'}" in capsys.readouterr().err
