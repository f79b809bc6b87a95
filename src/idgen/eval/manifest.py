"""What a benchmark generates: identity photos x prompts, with a seed policy.

Sources: IBench's prompts json (`{"datas": [{"num": 0, "prompt": "..."}]}`), a folder of photos (with an
optional IBench-style `manifest.json` giving genders), a text file of prompts (one per line, `#` comments),
and the built-in demo-world benchmarks (held-out identities x held-out prompts).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from idgen.errors import IdgenError
from idgen.io import file_sha256

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SEED_POLICIES = ("fixed", "per-prompt", "per-pair")


@dataclass(frozen=True)
class IdentityPhoto:
    """One reference photo. backdrop_rgb (0-1) is known in the demo world only (renderer ground truth)."""

    id: str
    path: Path
    gender: str | None = None
    backdrop_rgb: tuple[float, float, float] | None = None
    sha256: str | None = None  # of the file; None for photos rendered from the benchmark's own seeds


@dataclass(frozen=True)
class BenchPrompt:
    id: str
    text: str


@dataclass(frozen=True)
class SeedPolicy:
    """fixed: one seed for every image; per-prompt: base + prompt index (no-id images shared by identities);
    per-pair: a hash of (base, identity id, prompt id)."""

    kind: str = "per-prompt"
    base: int = 42

    def __post_init__(self) -> None:
        if self.kind not in SEED_POLICIES:
            raise IdgenError(f"unknown seed policy {self.kind!r} (choose from {', '.join(SEED_POLICIES)})")

    def seed(self, identity: IdentityPhoto, prompt_index: int, prompt: BenchPrompt) -> int:
        if self.kind == "fixed":
            return self.base
        if self.kind == "per-prompt":
            return self.base + prompt_index
        digest = hashlib.sha256(f"{self.base}:{identity.id}:{prompt.id}".encode()).digest()
        return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class Pair:
    identity: IdentityPhoto
    prompt: BenchPrompt
    seed: int


@dataclass(frozen=True)
class Benchmark:
    """identities x prompts (or the explicit `pairs`, as (identity index, prompt index, seed))."""

    name: str
    identities: tuple[IdentityPhoto, ...]
    prompts: tuple[BenchPrompt, ...]
    seeds: SeedPolicy = field(default_factory=SeedPolicy)
    pairs: tuple[tuple[int, int, int], ...] | None = None
    # Files of the photo folder that are not used, and why ("byte-identical to R.jpg", "a folder", ...).
    ignored: tuple[tuple[str, str], ...] = ()
    # (photos, prompts) before --limit-photos/--limit-prompts took a subset; None: not a subset.
    limited_from: tuple[int, int] | None = None
    # Writes the photos when they are rendered, not read (called after the plan is checked).
    render: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise IdgenError(f"benchmark {self.name!r} has no prompts")
        if not self.identities:
            raise IdgenError(f"benchmark {self.name!r} has no identity photos")
        for kind, ids in (
            ("identity", [i.id for i in self.identities]),
            ("prompt", [p.id for p in self.prompts]),
        ):
            seen: set[str] = set()
            for i in ids:
                if i in seen:
                    raise IdgenError(f"duplicate {kind} id {i!r} in benchmark {self.name!r}")
                seen.add(i)

    def all_pairs(self) -> list[Pair]:
        if self.pairs is not None:
            return [Pair(self.identities[i], self.prompts[p], s) for i, p, s in self.pairs]
        return [
            Pair(identity, prompt, self.seeds.seed(identity, j, prompt))
            for identity in self.identities
            for j, prompt in enumerate(self.prompts)
        ]

    def prepare(self) -> None:
        if self.render is not None:
            self.render()

    def describe(self, out: Path | None = None) -> dict[str, Any]:
        """What plan.json records: enough to refuse resuming into a folder made for another benchmark.
        Photo paths are relative to `out` (the run folder), so the folder can be moved with its photos."""
        identities = [
            {"id": i.id, "path": relative_path(i.path, out), "gender": i.gender, "sha256": i.sha256}
            for i in self.identities
        ]
        return {
            "name": self.name,
            "identities": identities,
            "prompts": [{"id": p.id, "text": p.text} for p in self.prompts],
            "pairs": [[p.identity.id, p.prompt.id, p.seed] for p in self.all_pairs()],
            "ignored": [list(x) for x in self.ignored],
            "limited_from": list(self.limited_from) if self.limited_from else None,
        }

    def limited(self, photos: int | None = None, prompts: int | None = None) -> Benchmark:
        """The first `photos` identities (sorted) and first `prompts` prompts (file order): a subset that
        is the same on every run. Explicit pairs are kept where both of their ends are kept."""
        for flag, n in (("--limit-photos", photos), ("--limit-prompts", prompts)):
            if n is not None and n < 1:
                raise IdgenError(f"{flag} must be >= 1, got {n}")
        ids, texts = self.identities[:photos], self.prompts[:prompts]
        pairs = None
        if self.pairs is not None:
            pairs = tuple(p for p in self.pairs if p[0] < len(ids) and p[1] < len(texts))
        if len(ids) == len(self.identities) and len(texts) == len(self.prompts):
            return self
        whole = self.limited_from or (len(self.identities), len(self.prompts))
        return replace(self, identities=ids, prompts=texts, pairs=pairs, limited_from=whole)


def relative_path(path: Path, out: Path | None) -> str:
    """`path` relative to the run folder `out` (posix), as plan.json stores it."""
    if out is None:
        return path.as_posix()
    return Path(os.path.relpath(path.resolve(), out.resolve())).as_posix()


def benchmark_from_record(record: dict[str, Any], out: Path) -> Benchmark:
    """The inverse of `Benchmark.describe` (what `idgen eval report` reads back from plan.json in `out`)."""
    identities = tuple(
        IdentityPhoto(i["id"], out / i["path"], i.get("gender"), sha256=i.get("sha256"))
        for i in record["identities"]
    )
    prompts = tuple(BenchPrompt(p["id"], p["text"]) for p in record["prompts"])
    where_i = {i.id: k for k, i in enumerate(identities)}
    where_p = {p.id: k for k, p in enumerate(prompts)}
    pairs = tuple((where_i[i], where_p[p], int(s)) for i, p, s in record["pairs"])
    ignored = tuple((str(a), str(b)) for a, b in record.get("ignored", []))
    whole = record.get("limited_from")
    return Benchmark(
        record["name"], identities, prompts, SeedPolicy("fixed"), pairs=pairs, ignored=ignored,
        limited_from=(int(whole[0]), int(whole[1])) if whole else None,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Readers.
# ---------------------------------------------------------------------------------------------------------
MAX_PROMPTS = 100_000
MAX_PROMPT_CHARS = 20_000


def _prompt_entry(k: int, item: Any, path: Path) -> BenchPrompt:
    where = f"prompts file entry {k}"
    if not isinstance(item, dict) or "prompt" not in item or "num" not in item:
        raise IdgenError(f"{where} lacks 'num' or 'prompt': {path}")
    num, text = item["num"], item["prompt"]
    if isinstance(num, bool) or not isinstance(num, int) or num < 0:
        raise IdgenError(f"{where} has 'num' {json.dumps(num)[:40]}, not a whole number >= 0: {path}")
    if not isinstance(text, str):
        raise IdgenError(f"{where} (num {num}) has 'prompt' {json.dumps(text)[:40]}, not text: {path}")
    if not text.strip():
        raise IdgenError(f"{where} (num {num}) has an empty prompt: {path}")
    if len(text) > MAX_PROMPT_CHARS:
        raise IdgenError(
            f"{where} (num {num}) is {len(text)} characters (at most {MAX_PROMPT_CHARS}): {path}"
        )
    return BenchPrompt(id=f"{num:03d}", text=text.strip())


def read_ibench_prompts(path: str | os.PathLike[str]) -> list[BenchPrompt]:
    """IBench's prompts json, as shipped (data/prompts/human_longer_template.json):
    {"datas": [{"num": int, "prompt": str}, ...]}; ids are the `num`s."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IdgenError(f"prompts file not found: {path}") from None
    except IsADirectoryError:
        raise IdgenError(f"prompts file is a folder: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IdgenError(f"prompts file is not valid json: {path} ({str(e)[:80]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("datas"), list):
        raise IdgenError(f"prompts file has no 'datas' list (IBench format): {path}")
    if len(data["datas"]) > MAX_PROMPTS:
        raise IdgenError(f"prompts file has {len(data['datas'])} prompts (at most {MAX_PROMPTS}): {path}")
    prompts = [_prompt_entry(k, item, path) for k, item in enumerate(data["datas"])]
    if not prompts:
        raise IdgenError(f"prompts file has no prompts: {path}")
    return prompts


TEXT_SUFFIXES = ("", ".txt", ".prompts")
# Lines that show a file is source code, not prompts (IBench's config/prompt.py is the classic mistake).
_CODE = re.compile(r"^\s*(import |from \S+ import |def |class |[A-Za-z_]\w*\s*=[^=]|\"\"\"|\'\'\')")


def _text_lines(path: Path) -> list[str]:
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise IdgenError(
            f"prompts file must be IBench's json or a .txt with one prompt per line, "
            f"not {path.suffix}: {path}"
        )
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise IdgenError(f"prompts file not found: {path}") from None
    except IsADirectoryError:
        raise IdgenError(f"prompts file is a folder: {path}") from None
    except UnicodeDecodeError:
        raise IdgenError(f"prompts file is not UTF-8 text: {path}") from None


def read_prompts_text(path: str | os.PathLike[str]) -> list[BenchPrompt]:
    """One prompt per line; blank lines and lines starting with '#' are skipped; ids are line order."""
    path = Path(path)
    lines = _text_lines(path)
    texts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if any(_CODE.match(t) for t in texts):
        raise IdgenError(f"prompts file looks like source code, not one prompt per line: {path}")
    if not texts:
        raise IdgenError(f"prompts file has no prompts: {path}")
    if len(texts) > MAX_PROMPTS or max(len(t) for t in texts) > MAX_PROMPT_CHARS:
        raise IdgenError(
            f"prompts file is too long (at most {MAX_PROMPTS} prompts of {MAX_PROMPT_CHARS} "
            f"characters): {path}"
        )
    return [BenchPrompt(id=f"{i:03d}", text=t) for i, t in enumerate(texts)]


def read_prompts(path: str | os.PathLike[str]) -> list[BenchPrompt]:
    return read_ibench_prompts(path) if str(path).lower().endswith(".json") else read_prompts_text(path)


def safe_id(name: str) -> str:
    """A folder-safe identity id from a file stem: never empty, never starting with a dot (so never "." or
    ".."), no path separators or characters that break links (#, ?, %)."""
    text = re.sub(r"[^\w .()+,=@-]", "_", name).strip()
    text = re.sub(r"^\.+", lambda m: "_" * len(m.group()), text)
    return text[:100] or "_"


def photo_ids(paths: list[Path]) -> list[str]:
    """Stable, distinct ids: the safe stem; where stems collide, the stem plus the extension
    ("R (1)-jpg", "R (1)-png"); then a counter for anything still equal after sanitising."""
    stems = [safe_id(p.stem) for p in paths]
    ids = [
        f"{stem}-{safe_id(p.suffix.lstrip('.').lower())}" if stems.count(stem) > 1 else stem
        for stem, p in zip(stems, paths, strict=True)
    ]
    seen: dict[str, int] = {}
    out = []
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
        out.append(i if seen[i] == 1 else f"{i}-{seen[i]}")
    return out


def _genders(folder: Path) -> dict[str, str]:
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return {}
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8")).get("faces", [])
        return {str(e["file"]): str(e["gender"]) for e in entries if "file" in e and "gender" in e}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as e:
        raise IdgenError(f"photo manifest is not valid: {manifest} ({str(e)[:80]})") from None


def _scan(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Photo files (sorted) and what else the folder holds, with why it is not used."""
    photos, ignored = [], []
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise IdgenError(f"photo folder cannot be read: {folder} ({e.strerror})") from None
    for path in entries:
        if path.name == "manifest.json" or path.name.startswith("."):
            continue
        if path.is_dir():
            ignored.append((path.name, "a folder (photo folders are not searched recursively)"))
        elif path.suffix.lower() not in PHOTO_SUFFIXES:
            ignored.append((path.name, "not an image file name"))
        elif path.stat().st_size == 0:
            ignored.append((path.name, "an empty file"))
        else:
            photos.append(path)
    return photos, ignored


def read_photo_folder(
    folder: str | os.PathLike[str], keep_duplicates: bool = False
) -> tuple[list[IdentityPhoto], list[tuple[str, str]]]:
    """The image files in `folder` (sorted), with distinct ids (`photo_ids`), and what is not used, why.

    A byte-identical copy of an earlier photo is one person: it is left out and reported, unless
    keep_duplicates (then it is reported and kept). An IBench-style manifest.json (`{"faces": [{"file":
    ..., "gender": ...}]}`) next to them adds genders."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise IdgenError(f"photo folder is a file, not a folder: {folder}")
    if not folder.is_dir():
        raise IdgenError(f"photo folder not found: {folder}")
    genders = _genders(folder)
    paths, ignored = _scan(folder)
    if not paths:
        raise IdgenError(f"photo folder has no images ({', '.join(PHOTO_SUFFIXES)}): {folder}")
    photos: list[IdentityPhoto] = []
    first: dict[str, str] = {}
    for path, pid in zip(paths, photo_ids(paths), strict=True):
        digest = file_sha256(path)
        if digest in first:
            ignored.append(
                (path.name, f"byte-identical to {first[digest]}" + (" (kept)" if keep_duplicates else ""))
            )
            if not keep_duplicates:
                continue
        first.setdefault(digest, path.name)
        photos.append(IdentityPhoto(id=pid, path=path, gender=genders.get(path.name), sha256=digest))
    return photos, ignored


def from_files(
    photos: str | os.PathLike[str],
    prompts: str | os.PathLike[str],
    seeds: SeedPolicy | None = None,
    keep_duplicates: bool = False,
) -> Benchmark:
    """A benchmark from a photo folder and a prompts file (IBench json or text)."""
    texts = tuple(read_prompts(prompts))  # before the photos: a wrong prompts file is named first
    identities, ignored = read_photo_folder(photos, keep_duplicates)
    return Benchmark(
        name=Path(photos).resolve().name or "photos",
        identities=tuple(identities),
        prompts=texts,
        seeds=seeds or SeedPolicy(),
        ignored=tuple(ignored),
    )


# ---------------------------------------------------------------------------------------------------------
# Named benchmarks, registered by their providers (the demo world registers "demo" and "demo-quick").
# ---------------------------------------------------------------------------------------------------------
BENCHMARKS: dict[str, Callable[[Path], Benchmark]] = {}  # name -> make(run folder)


def register_benchmark(name: str, make: Callable[[Path], Benchmark]) -> None:
    BENCHMARKS[name] = make


def named(name: str, out: Path) -> Benchmark:
    if name not in BENCHMARKS:
        known = ", ".join(BENCHMARKS) or "none registered"
        raise IdgenError(f"unknown benchmark {name!r} (built-in: {known})")
    return BENCHMARKS[name](out)
