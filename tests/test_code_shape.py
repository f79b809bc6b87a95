"""The project's shape limits: no function under src/ over 50 lines or cyclomatic complexity 12."""

import pytest

from tests import scripts


def load_script():
    pytest.importorskip("radon")
    return scripts.load_script("scripts/code_shape.py")


def test_no_function_over_the_limits():
    shape = load_script()
    over = [f"{f.path}:{f.line} {f.name} ({f.lines} lines, complexity {f.complexity})"
            for f in shape.functions() if f.over()]  # fmt: skip
    assert over == []


def test_the_measure_counts_lines_and_branches(tmp_path):
    shape = load_script()
    body = "\n".join(f"    if x == {i}:\n        return {i}" for i in range(12))
    (tmp_path / "m.py").write_text(
        f"def branchy(x):\n{body}\n    return -1\n\n\ndef short():\n    return 0\n"
    )
    found = {f.name: f for f in shape.functions(tmp_path)}
    assert (found["branchy"].lines, found["branchy"].complexity) == (26, 13)
    assert (found["short"].lines, found["short"].complexity) == (2, 1)
    assert found["branchy"].over() and not found["short"].over()
