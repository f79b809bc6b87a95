"""The run folder: plan keys and the differing field named, lock, kill leftovers, moves, links, escapes."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from idgen.cli import main
from idgen.errors import IdgenError
from idgen.eval.folder import differences, next_free_folder, run_lock
from idgen.eval.manifest import from_files
from idgen.eval.report import write_report
from idgen.eval.runner import run_eval
from tests.eval.fakes import COLOURS, METHODS, FakeGenerator, benchmark, fake_models, markdown_tables, photo


def test_a_changed_setting_is_refused_naming_it(tmp_path):
    bench = benchmark(tmp_path / "photos", identities=1, prompts=2)
    out = tmp_path / "out"
    run_eval(out, bench, METHODS, FakeGenerator(), fake_models(), batch_size=8, progress=False)
    with pytest.raises(IdgenError) as e:
        run_eval(out, bench, METHODS, FakeGenerator(), fake_models(), batch_size=4, progress=False)
    assert str(e.value) == (
        f"{out} holds results of a different plan: batch_size: 8 in the folder, 4 now; "
        "use another --out, or --new-run"
    )
    other = FakeGenerator()
    other.settings = {"fake": True, "steps": 3}
    with pytest.raises(IdgenError, match=r"generation.steps: absent in the folder, 3 now"):
        run_eval(out, bench, METHODS, other, fake_models(), batch_size=8, progress=False)
    (tmp_path / "photos/id_0.png").write_bytes((tmp_path / "photos/id_0.png").read_bytes() + b"x")
    changed = from_files(tmp_path / "photos", _prompts(tmp_path), bench.seeds)
    assert "benchmark.identities[0].sha256" in differences(
        {"benchmark": bench.describe()}, {"benchmark": changed.describe()}
    )


def _prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a person in place number 0\na person in place number 1\n")
    return path


def test_new_run_picks_the_next_free_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out/plan.json").write_text(json.dumps({"benchmark": {}, "methods": [], "x": 1}))
    assert next_free_folder(tmp_path / "out", {"benchmark": {}, "methods": [], "x": 2}) == tmp_path / "out-2"
    assert next_free_folder(tmp_path / "out", {"benchmark": {}, "methods": [], "x": 1}) == tmp_path / "out"


def test_a_live_lock_is_a_clear_error_and_a_dead_ones_is_taken_over(tmp_path):
    message = r"another eval run \(process \d+ on .*\) is using"
    with run_lock(tmp_path), pytest.raises(IdgenError, match=message), run_lock(tmp_path):
        pass
    assert not (tmp_path / ".lock").exists()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    import socket

    (tmp_path / ".lock").write_text(f"{socket.gethostname()} {dead.stdout.strip()}\n")
    with run_lock(tmp_path):
        assert (tmp_path / ".lock").read_text().split()[1] == str(os.getpid())


def test_kill_leftovers_never_crash_a_run_or_a_report(tmp_path):
    bench = benchmark(tmp_path / "photos", identities=1, prompts=2)
    out = tmp_path / "out"
    run_eval(out, bench, METHODS, FakeGenerator(), fake_models(), progress=False)
    for folder in ("problems", "timings", "scores/spatial/id_0"):
        (out / folder).mkdir(parents=True, exist_ok=True)
        (out / folder / ".x.0123456789ab.tmp.json").write_text("{half a reco")
    write_report(out, bench, METHODS)  # a report ignores them
    run_eval(out, bench, METHODS, FakeGenerator(), fake_models(), progress=False)  # a run removes them
    assert not list(out.rglob("*.tmp*"))


def test_a_moved_folder_reports_from_any_directory_with_relative_links(tmp_path, monkeypatch):
    root = tmp_path / "a"
    photos = root / "photos"
    photos.mkdir(parents=True)
    names = ["a#1.png", "b?.png", "<img src=x onerror=alert(1)>.png"]
    for name, colour in zip(names, COLOURS, strict=False):
        photo(colour).save(photos / name)
    bench = from_files(photos, _prompts(tmp_path))
    run_eval(root / "out", bench, METHODS, FakeGenerator(), fake_models(), progress=False)
    shutil.move(root, tmp_path / "b")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "b/out"
    assert main(["eval", "report", "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "file://" not in page and "missing" not in page
    assert 'src="../photos/a%231.png"' in page and 'src="../photos/b%3F.png"' in page
    assert 'src="images/spatial/a_1/000-s42.png"' in page
    report = (out / "report.md").read_text()
    assert "<img" not in report and "&lt;img src=x onerror=alert(1)&gt;.png" in report
    markdown_tables(report)


def test_nothing_evaluated_exits_non_zero(tmp_path, capsys):
    bench = benchmark(tmp_path / "photos", identities=1, prompts=1)

    class Faceless(FakeGenerator):
        def encode(self, photo, what):  # type: ignore[no-untyped-def]
            raise IdgenError(f"no face found in {what}")

    out = tmp_path / "out"
    run_eval(out, bench, METHODS, Faceless(), fake_models(), progress=False)
    assert main(["eval", "report", "--out", str(out)]) == 1
    report = (out / "report.md").read_text()
    assert "- Photo id_0 skipped: no face found in photo of identity id_0" in report


def test_temp_files_are_kept_while_another_shard_holds_the_folder(tmp_path):
    from idgen.eval.folder import clean_temp_files

    (tmp_path / "scores").mkdir()
    temp = tmp_path / "scores" / ".a.0123456789ab.tmp.json"
    temp.write_text("{")
    (tmp_path / ".lock-shard-1-of-2").write_text("host 1\n")
    assert clean_temp_files(tmp_path, ".lock-shard-0-of-2") == 0 and temp.exists()
    (tmp_path / ".lock-shard-1-of-2").unlink()
    assert clean_temp_files(tmp_path, ".lock-shard-0-of-2") == 1 and not temp.exists()
