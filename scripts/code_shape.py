"""The size and cyclomatic complexity of every function under src/, against the project's limits.

    python scripts/code_shape.py            # the functions over a limit, then the largest of each kind
    python scripts/code_shape.py --all      # every function

Lines are counted from `def` to the function's last line (decorators excluded); complexity is radon's
cyclomatic complexity (`radon cc`), which counts a nested function inside its parent as well.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

MAX_LINES = 50
MAX_COMPLEXITY = 12
SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass(frozen=True)
class Function:
    path: str
    name: str
    line: int
    lines: int
    complexity: int

    def over(self) -> bool:
        return self.lines > MAX_LINES or self.complexity > MAX_COMPLEXITY


def complexities(code: str) -> dict[int, int]:
    """Line of each function's `def` -> its cyclomatic complexity (methods and closures included)."""
    from radon.complexity import cc_visit

    out: dict[int, int] = {}
    pending = list(cc_visit(code))
    while pending:
        block = pending.pop()
        pending += list(getattr(block, "methods", [])) + list(getattr(block, "closures", []))
        if not hasattr(block, "methods"):  # classes have their own score; only functions count here
            out[block.lineno] = block.complexity
    return out


def functions(root: Path = SRC) -> list[Function]:
    found = []
    for path in sorted(root.rglob("*.py")):
        code = path.read_text()
        scores = complexities(code)
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                name = str(path.relative_to(root.parent))
                found.append(Function(name, node.name, node.lineno, lines, scores.get(node.lineno, 1)))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--all", action="store_true", help="list every function")
    args = parser.parse_args()
    found = functions()
    shown = found if args.all else [f for f in found if f.over()]
    for f in sorted(shown, key=lambda f: (f.path, f.line)):
        print(f"{f.path}:{f.line} {f.name}: {f.lines} lines, complexity {f.complexity}")
    longest = max(found, key=lambda f: f.lines)
    hardest = max(found, key=lambda f: f.complexity)
    print(f"{len(found)} functions; over the limits ({MAX_LINES} lines, complexity {MAX_COMPLEXITY}): "
          f"{sum(f.over() for f in found)}")  # fmt: skip
    print(f"longest: {longest.path}:{longest.line} {longest.name}, {longest.lines} lines")
    print(f"most complex: {hardest.path}:{hardest.line} {hardest.name}, complexity {hardest.complexity}")
    return 1 if any(f.over() for f in found) else 0


if __name__ == "__main__":
    sys.exit(main())
