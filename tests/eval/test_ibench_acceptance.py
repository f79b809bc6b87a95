"""Acceptance: IBench's chineseid layout and prompt file format, through the one documented command, killed
mid-run and resumed, with a report that accounts for every photo, image and metric."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from idgen.cli import main
from idgen.eval.metrics import registered
from tests.eval.fakes import markdown_tables

COMMAND = ["eval", "--protocol", "spatialid-ibench", "--limit-photos", "3", "--limit-prompts", "2",
           "--flux", "tiny-random", "--pulid", "tiny-random", "--encoder", "tiny-random"]  # fmt: skip


def chineseid(root):
    """IBench's photo folder as published: same stems with two extensions, a byte-identical copy."""
    folder = root / "data/images/chineseid"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("R (1).jpg", "R (1).png", "R.jpg", "R.png", "R (2).jpg"):
        Image.fromarray(rng.integers(0, 256, (40, 32, 3), dtype=np.uint8)).save(folder / name)
    shutil.copyfile(folder / "R (1).jpg", folder / "R (10).jpg")  # the same person twice
    prompts = root / "data/prompts/human_longer_template.json"
    prompts.parent.mkdir(parents=True)
    datas = [
        {"num": n, "prompt": f"A woman, number {n}, walks through a quiet park at dusk."} for n in range(4)
    ]
    prompts.write_text(json.dumps({"datas": datas}, indent=4))
    return folder, prompts


@pytest.mark.slow
def test_ibench_layout_runs_resumes_after_a_kill_and_accounts_for_everything(tmp_path, monkeypatch, capsys):
    import idgen.eval.runner as runner

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # metric models that are not on disk are "not computed"
    photos, prompts = chineseid(tmp_path)
    out = tmp_path / "out"
    command = [
        *COMMAND,
        "--photos",
        str(photos),
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--no-progress",
    ]
    original = runner.FluxEvalGenerator.generate
    calls = []

    def dies_on_the_third_batch(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill would: mid-run, after two batches were written
        return original(self, *args, **kwargs)

    monkeypatch.setattr(runner.FluxEvalGenerator, "generate", dies_on_the_third_batch)
    assert main(command) == 130  # the CLI reports the interrupt in one line and exits as SIGINT does
    assert capsys.readouterr().err == "idgen: interrupted\n"
    written = sorted(
        p.relative_to(out).as_posix() for p in out.glob("images/**/*.png") if ".masks" not in p.name
    )
    assert len(written) == 2 + 6  # the no-id images (seed 42 for all: one per prompt) and uniform's batch

    assert main(command) == 0
    printed = capsys.readouterr()
    assert "generated 12 images" in printed.out  # only what the kill left undone: spatial and balanced

    plan = json.loads((out / "plan.json").read_text())
    assert plan["generation"]["protocol"] == "spatialid-ibench"
    assert plan["generation"]["sampling"] == {  # the protocol's, at the tiny model's own size
        "width": 64, "height": 64, "num_inference_steps": 25, "guidance_scale": 4.0, "true_cfg_scale": 1.0
    }  # fmt: skip
    assert [m["name"] for m in plan["methods"]] == ["uniform", "spatial", "spatial-balanced"]
    assert {seed for _, _, seed in plan["benchmark"]["pairs"]} == {42}
    assert str(tmp_path) not in json.dumps(plan)  # relative paths only

    summary = json.loads((out / "summary.json").read_text())
    # Photos: 6 files; R (10).jpg is R (1).jpg again; of the 5 distinct, the first 3 (sorted) are used.
    # Sorted: R (1).jpg, R (1).png, R (10).jpg (a copy), R (2).jpg, R.jpg, R.png.
    assert summary["identities"] == {"R (1)-jpg": "R (1).jpg", "R (1)-png": "R (1).png", "R (2)": "R (2).jpg"}
    assert summary["limited_from"] == [5, 4]
    assert summary["ignored_files"] == {"R (10).jpg": "byte-identical to R (1).jpg"}
    assert (
        "- File R (10).jpg not used as an identity: byte-identical to R (1).jpg"
        in (out / "report.md").read_text()
    )
    # Images: 3 photos x 2 prompts per method, each scored once.
    for name in ("none", "uniform", "spatial", "spatial-balanced"):
        assert summary["methods"][name]["images_scored"] == summary["methods"][name]["images_expected"] == 6
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all((out / r["image"]).is_file() for r in rows)
    # Metrics: every registered metric is either computed with a named model or "not computed: why".
    assert set(summary["metrics"]) == {m.key for m in registered()}
    report = (out / "report.md").read_text()
    results, metrics, *_ = markdown_tables(report)
    assert [row[-1] for row in results[1:]] == ["–"] * 4  # "no face" is not 0 when no face model ran
    assert [row[0] for row in metrics[1:]] == [m.title for m in registered()]
    for row in metrics[1:]:
        assert row[1].startswith("not computed: ") or "better)" in row[1], row
    assert "not computed: cannot load CLIP model 'openai/clip-vit-large-patch14'" in report
    assert "- Photos and images without a face: not checked (no face model)." in report
    assert "- A subset (--limit-photos/--limit-prompts) of 5 photos and 4 prompts." in report
    page = (out / "index.html").read_text()
    assert "file://" not in page and page.count("<tr>") == 1 + 6
