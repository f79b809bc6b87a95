"""The README's gates blocks: in sync with the committed summaries, rewritten exactly when one changes,
and bad markers or summaries refused before anything is written."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from idgen.errors import IdgenError
from idgen.world.readme import BLOCKS, END, SUMMARIES, main, refresh, seeds_table

ROOT = Path(__file__).resolve().parents[2]


def test_committed_readme_is_in_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = ROOT / "README.md"
    text, stale = refresh(readme)
    assert stale == []
    assert text == readme.read_text(encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # the summaries are found beside the README, not in the working directory
    assert main(["--check", "--readme", str(readme)]) == 0


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the README and the two summaries it is made from."""
    (tmp_path / "docs").mkdir()
    shutil.copyfile(ROOT / "README.md", tmp_path / "README.md")
    for relative in SUMMARIES.values():
        shutil.copyfile(ROOT / relative, tmp_path / relative)
    return tmp_path


def _edit_summary(repo: Path, key: str, edit: Callable[[dict], None]) -> None:
    path = repo / SUMMARIES[key]
    summary = json.loads(path.read_text())
    edit(summary)
    path.write_text(json.dumps(summary))


def _line_of(lines: list[str], start: str, after: int = 0) -> int:
    """The index of the first line from `after` on that starts with `start`."""
    return next(i for i, line in enumerate(lines) if i >= after and line.startswith(start))


def test_stale_block_is_named_then_rewritten_exactly(repo: Path, capsys: pytest.CaptureFixture) -> None:
    readme = repo / "README.md"
    before = readme.read_text(encoding="utf-8")
    _edit_summary(repo, "world-gates", lambda s: s.update(face_px_outside_person_region=0.1234))
    assert main(["--check", "--readme", str(readme)]) == 1
    lines = before.split("\n")
    marker = lines.index("<!-- generated: world-gates modes -->")
    err = capsys.readouterr().err
    assert (
        err == f"{readme}:{marker + 1}: block 'world-gates modes' is stale; `make world-readme` rewrites it\n"
    )
    assert readme.read_text(encoding="utf-8") == before  # --check writes nothing

    assert main(["--readme", str(readme)]) == 0
    assert capsys.readouterr().out == f"{readme}: 1 of {len(BLOCKS)} generated blocks rewritten\n"
    index = _line_of(lines, "- no-identity face pixels outside the renderer's person region: ", marker)
    lines[index] = "- no-identity face pixels outside the renderer's person region: 12.34%"
    assert readme.read_text(encoding="utf-8") == "\n".join(lines)
    assert main(["--check", "--readme", str(readme)]) == 0


def test_gate_row_and_multi_table_follow_their_summaries(repo: Path) -> None:
    readme = repo / "README.md"
    lines = readme.read_text(encoding="utf-8").split("\n")
    _edit_summary(repo, "world-gates", lambda s: s.update(scene_accuracy_none=[0.5, 0.01]))
    _edit_summary(
        repo, "world-multi-gates", lambda s: s["modes"]["spatial"].update(assignment=[0.5, 0.4, 0.6, 9])
    )
    text, stale = refresh(readme)
    assert [name for name, _ in stale] == [
        "world-gates modes",
        "world-gates gates",
        "world-seeds",
        "world-multi-gates",
    ]
    changed = [(old, new) for old, new in zip(lines, text.split("\n"), strict=True) if old != new]
    assert [new for _, new in changed] == [
        "- scene adherence of the base model (no identity): 50.0% (gate: >= 90%)",
        "| scene adherence of the base model | ≥ 90% | 50.0% | **not met** |",
        "| scene adherence of the base model (≥ 90%) | 50.0% | 96.3% | 98.3% |",
        "| spatial, boxes = halves | 50.0% [40.0, 60.0] | 0.236 ± 0.014 | -0.075 ± 0.013 |",
        "- assignment, spatial, boxes = halves: 50.0% [40.0, 60.0] against uniform 49.7% [46.2, 53.2] and "
        "single 83.0% [80.2, 85.4] (gate: >= 90%; **not met**)",
    ]


def _drop_line(index: Callable[[list[str]], int]) -> Callable[[list[str]], list[str]]:
    return lambda lines: lines[: index(lines)] + lines[index(lines) + 1 :]


def _last(line: str) -> Callable[[list[str]], int]:
    return lambda lines: len(lines) - 1 - lines[::-1].index(line)


def _first(line: str) -> Callable[[list[str]], int]:
    return lambda lines: lines.index(line)


MODES_START = "<!-- generated: world-gates modes -->"
BAD_MARKERS = {
    "last end marker gone": (_drop_line(_last(END)), "block 'world-multi-gates' has no end marker"),
    "first end marker gone": (_drop_line(_first(END)), "block 'world-gates backdrops' starts inside"),
    "a start marker gone": (_drop_line(_first(MODES_START)), "end marker without a start marker"),
    "a block gone": (
        lambda lines: _drop_line(_first(MODES_START))(_drop_line(_first(END))(lines)),
        "no block 'world-gates modes'",
    ),
    "unknown block": (
        lambda lines: [*lines, "<!-- generated: world-fates -->", END],
        "unknown block 'world-fates'",
    ),
    "block twice": (lambda lines: [*lines, MODES_START, END], "block 'world-gates modes' appears twice"),
    "malformed marker": (lambda lines: [*lines, "<!-- generated:world-gates -->"], "malformed marker"),
}


def _untouched(readme: Path, before: bytes, mtime: int) -> bool:
    return readme.read_bytes() == before and readme.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("case", list(BAD_MARKERS))
def test_bad_markers_are_refused(repo: Path, case: str, capsys: pytest.CaptureFixture) -> None:
    readme = repo / "README.md"
    edit, message = BAD_MARKERS[case]
    readme.write_text("\n".join(edit(readme.read_text(encoding="utf-8").split("\n"))), encoding="utf-8")
    _edit_summary(
        repo, "world-gates", lambda s: s.update(pairs=1)
    )  # a block is stale, yet nothing is written
    before, mtime = readme.read_bytes(), readme.stat().st_mtime_ns
    with pytest.raises(IdgenError, match=message) as error:
        refresh(readme)
    assert "\n" not in str(error.value)
    assert main(["--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert _untouched(readme, before, mtime)


def _remove(path: Path) -> None:
    path.unlink()


BAD_SUMMARIES = {
    "multi summary missing": ("world-multi-gates", _remove, "world-multi-gates.json not found"),
    "gates summary not JSON": ("world-gates", lambda p: p.write_text("{"), "world-gates.json is not JSON"),
    "gates summary lacks a key": (
        "world-gates",
        lambda p: p.write_text(
            json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "pairs"})
        ),
        "block 'world-gates modes': .* lacks 'pairs'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SUMMARIES))
def test_bad_summaries_are_refused(repo: Path, case: str, capsys: pytest.CaptureFixture) -> None:
    key, spoil, message = BAD_SUMMARIES[case]
    readme = repo / "README.md"
    spoil(repo / SUMMARIES[key])
    before, mtime = readme.read_bytes(), readme.stat().st_mtime_ns
    with pytest.raises(IdgenError, match=message) as error:
        refresh(readme)
    assert "\n" not in str(error.value)
    assert main(["--readme", str(readme)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert _untouched(readme, before, mtime)


def test_missing_readme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IdgenError, match=r"README\.md not found"):
        refresh(tmp_path / "README.md")


def test_seeds_table_sets_each_run_in_its_own_column() -> None:
    shipped = json.loads((ROOT / SUMMARIES["world-gates"]).read_text())
    other = json.loads(json.dumps(shipped))
    other["scene_accuracy_none"] = [0.5, 0.01]
    other["contamination_by_backdrop"]["crimson"]["uniform"] = [1.0, 2.0]  # no longer clearly above zero
    lines = seeds_table(shipped, other, shipped)
    assert lines[:2] == [
        "| conclusion | shipped | adapter retrained, other seeds | whole world retrained, `--seed 1` |",
        "|---|---|---|---|",
    ]
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines[2:]}
    assert rows["scene adherence of the base model (≥ 90%)"] == ["96.3%", "50.0%", "96.3% |"]
    assert rows["backdrops uniform clearly leaks towards"] == ["10 of 10", "9 of 10", "10 of 10 |"]
    assert rows["FaceSim, uniform above none (paired)"] == ["+0.297 ± 0.028"] * 2 + ["+0.297 ± 0.028 |"]
    assert rows["SpatialID: FaceSim drop (≤ 0.03)"][0] == "0.029 ± 0.015"
    assert rows["likeness, mean of the five attributes, uniform (%)"][0] == "37.1 ± 2.2"
    assert rows["likeness, the same without identity (%)"][0] == "20.1 ± 2.1"
    assert len(rows) == 8
