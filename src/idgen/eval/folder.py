"""The run folder: where each job's files live, plan.json (what a resume must match), the lock, temp files.

plan.json keys a run on what changes its results: the benchmark (ids, photo file hashes, prompts, pairs),
the methods, the generation settings and model keys, the metric models and the batch size. Paths are
stored relative to the run folder, and never compared, so a folder (or the photos beside it) can be moved
and a run resumed or reported from any working directory.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idgen.errors import IdgenError
from idgen.eval.manifest import Pair
from idgen.io import atomic_write_text, folder_lock
from idgen.pipelines.names import NONE

PLAN = "plan.json"
PLAN_VERSION = 2
LOCK = ".lock"
UNCOMPARED = frozenset({"path"})  # where files are is not what they are: their sha256 is compared


def json_records(folder: Path) -> list[Path]:
    """The *.json files of a folder, sorted; hidden ones (a killed write's temp file) are not records."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith(".") and p.is_file())


def clean_temp_files(out: Path, lock: str = LOCK) -> int:
    """Remove temp files an interrupted run left (`.<name>.<hex>.tmp<suffix>`, see idgen.io); their count.

    Only while `lock` is the folder's one lock: another shard's temp files may be writes in flight."""
    removed = 0
    if not out.is_dir() or any(p.name != lock for p in out.glob(".lock*")):
        return 0
    for path in out.rglob(".*.tmp*"):
        if path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Dotted names of the fields that differ (paths excluded), in a stable order."""
    if isinstance(old, dict) and isinstance(new, dict):
        return _dict_differences(old, new, where)
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d
            for k, (a, b) in enumerate(zip(old, new, strict=True))
            for d in differences(a, b, f"{where}[{k}]")
        ]
    return [] if old == new else [where or "plan"]


def _dict_differences(old: dict[str, Any], new: dict[str, Any], where: str) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        if key in UNCOMPARED:
            continue
        name = f"{where}.{key}" if where else str(key)
        out += [name] if key not in old or key not in new else differences(old[key], new[key], name)
    return out


def _shown(record: Any, name: str) -> str:
    value: Any = record
    for part in name.replace("[", ".[").split("."):
        try:
            value = value[int(part[1:-1])] if part.startswith("[") else value[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return "absent"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def read_plan(out: Path) -> dict[str, Any]:
    path = out / PLAN
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IdgenError(f"no eval results in {out} ({PLAN} missing)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IdgenError(f"{path} is not a readable plan ({e}); use another --out") from None
    if not isinstance(record, dict) or "benchmark" not in record or "methods" not in record:
        raise IdgenError(f"{path} is not an idgen eval plan; use another --out")
    return record


def plan_conflict(out: Path, record: dict[str, Any]) -> str | None:
    """None when `out` is new or holds this plan, else a one-line description of what differs."""
    if not (out / PLAN).exists():
        return None
    new = json.loads(json.dumps(record, default=str))
    changed = differences(read_plan(out), new)
    if not changed:
        return None
    old = read_plan(out)
    first = changed[0]
    more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
    return f"{first}: {_shown(old, first)} in the folder, {_shown(new, first)} now{more}"


def check_plan(out: Path, record: dict[str, Any]) -> None:
    """Write plan.json, or check an existing one matches: resuming into another plan's folder is refused."""
    conflict = plan_conflict(out, record)
    if conflict is not None:
        raise IdgenError(
            f"{out} holds results of a different plan: {conflict}; use another --out, or --new-run"
        )
    if not (out / PLAN).exists():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / PLAN, json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")


def next_free_folder(out: Path, record: dict[str, Any]) -> Path:
    """`out`, or the first of out-2, out-3, ... that is new or holds this very plan (for --new-run)."""
    candidate, n = out, 1
    while plan_conflict(candidate, record) is not None:
        n += 1
        candidate = out.with_name(f"{out.name}-{n}")
    return candidate


def run_lock(out: Path, name: str = LOCK) -> contextlib.AbstractContextManager[None]:
    """Hold `out/<name>` for the run (`idgen.io.folder_lock`): another live eval run is a one-line error."""
    return folder_lock(out, "eval run", name)


@dataclass(frozen=True)
class Job:
    """One image of a run and where its files live in the run folder."""

    method: str  # a Method name, or "none"
    pair: Pair

    @property
    def image(self) -> str:
        p = self.pair
        stem = f"{p.prompt.id}-s{p.seed}.png"
        return (
            f"images/{NONE}/{stem}" if self.method == NONE else f"images/{self.method}/{p.identity.id}/{stem}"
        )

    @property
    def score(self) -> str:
        p = self.pair
        return f"scores/{self.method}/{p.identity.id}/{p.prompt.id}-s{p.seed}.json"

    @property
    def none_image(self) -> str:
        return Job(NONE, self.pair).image


def mask_strip_path(image: Path) -> Path:
    return image.with_suffix(".masks.png")
