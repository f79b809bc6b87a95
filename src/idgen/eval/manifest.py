"""What a benchmark generates: identity photos x prompts, with a seed policy.

Sources: IBench's prompts json (`{"datas": [{"num": 0, "prompt": "..."}]}`), a folder of photos (with an
optional IBench-style `manifest.json` giving genders), a text file of prompts (one per line, `#` comments),
and the built-in demo-world benchmarks (held-out identities x held-out prompts).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idgen.errors import IdgenError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SEED_POLICIES = ("fixed", "per-prompt", "per-pair")


@dataclass(frozen=True)
class IdentityPhoto:
    """One reference photo. backdrop_rgb (0-1) is known in the demo world only (renderer ground truth)."""

    id: str
    path: Path
    gender: str | None = None
    backdrop_rgb: tuple[float, float, float] | None = None


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

    def describe(self) -> dict[str, Any]:
        """What plan.json records: enough to refuse resuming into a folder made for another benchmark."""
        return {
            "name": self.name,
            "identities": [{"id": i.id, "path": str(i.path), "gender": i.gender} for i in self.identities],
            "prompts": [{"id": p.id, "text": p.text} for p in self.prompts],
            "pairs": [[p.identity.id, p.prompt.id, p.seed] for p in self.all_pairs()],
        }


def benchmark_from_record(record: dict[str, Any]) -> Benchmark:
    """The inverse of `Benchmark.describe` (what `idgen eval report` reads back from plan.json)."""
    identities = tuple(IdentityPhoto(i["id"], Path(i["path"]), i.get("gender")) for i in record["identities"])
    prompts = tuple(BenchPrompt(p["id"], p["text"]) for p in record["prompts"])
    where_i = {i.id: k for k, i in enumerate(identities)}
    where_p = {p.id: k for k, p in enumerate(prompts)}
    pairs = tuple((where_i[i], where_p[p], int(s)) for i, p, s in record["pairs"])
    return Benchmark(record["name"], identities, prompts, SeedPolicy("fixed"), pairs=pairs)


# ---------------------------------------------------------------------------------------------------------
# Readers.
# ---------------------------------------------------------------------------------------------------------
def read_ibench_prompts(path: str | os.PathLike[str]) -> list[BenchPrompt]:
    """IBench's prompts json: {"datas": [{"num": int, "prompt": str}, ...]}; ids are the `num`s."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IdgenError(f"prompts file not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IdgenError(f"prompts file is not valid json: {path} ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("datas"), list):
        raise IdgenError(f"prompts file has no 'datas' list (IBench format): {path}")
    prompts = []
    for k, item in enumerate(data["datas"]):
        if not isinstance(item, dict) or "prompt" not in item or "num" not in item:
            raise IdgenError(f"prompts file entry {k} lacks 'num' or 'prompt': {path}")
        text = str(item["prompt"]).strip()
        if not text:
            raise IdgenError(f"prompts file entry {k} (num {item['num']}) has an empty prompt: {path}")
        prompts.append(BenchPrompt(id=f"{int(item['num']):03d}", text=text))
    if not prompts:
        raise IdgenError(f"prompts file has no prompts: {path}")
    return prompts


def read_prompts_text(path: str | os.PathLike[str]) -> list[BenchPrompt]:
    """One prompt per line; blank lines and lines starting with '#' are skipped; ids are line order."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise IdgenError(f"prompts file not found: {path}") from None
    except UnicodeDecodeError:
        raise IdgenError(f"prompts file is not UTF-8 text: {path}") from None
    texts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not texts:
        raise IdgenError(f"prompts file has no prompts: {path}")
    return [BenchPrompt(id=f"{i:03d}", text=t) for i, t in enumerate(texts)]


def read_prompts(path: str | os.PathLike[str]) -> list[BenchPrompt]:
    return read_ibench_prompts(path) if str(path).endswith(".json") else read_prompts_text(path)


def read_photo_folder(folder: str | os.PathLike[str]) -> list[IdentityPhoto]:
    """Every image file in `folder` (sorted; the id is the file stem). An IBench-style manifest.json
    (`{"faces": [{"file": ..., "gender": ...}]}`) next to them adds genders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IdgenError(f"photo folder not found: {folder}")
    genders: dict[str, str] = {}
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            entries = json.loads(manifest.read_text(encoding="utf-8")).get("faces", [])
            genders = {str(e["file"]): str(e["gender"]) for e in entries if "file" in e and "gender" in e}
        except (json.JSONDecodeError, AttributeError, TypeError) as e:
            raise IdgenError(f"photo manifest is not valid: {manifest} ({e})") from None
    photos: list[IdentityPhoto] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in PHOTO_SUFFIXES or not path.is_file():
            continue
        if path.stem in seen:
            raise IdgenError(f"duplicate identity id {path.stem!r}: {seen[path.stem].name} and {path.name}")
        seen[path.stem] = path
        photos.append(IdentityPhoto(id=path.stem, path=path, gender=genders.get(path.name)))
    if not photos:
        raise IdgenError(f"photo folder has no images ({', '.join(PHOTO_SUFFIXES)}): {folder}")
    return photos


def from_files(
    photos: str | os.PathLike[str], prompts: str | os.PathLike[str], seeds: SeedPolicy | None = None
) -> Benchmark:
    """A benchmark from a photo folder and a prompts file (IBench json or text)."""
    return Benchmark(
        name=Path(photos).name or "photos",
        identities=tuple(read_photo_folder(photos)),
        prompts=tuple(read_prompts(prompts)),
        seeds=seeds or SeedPolicy(),
    )


# ---------------------------------------------------------------------------------------------------------
# Built-in demo-world benchmarks: the same pairs and seeds as `python -m idgen.world.gates`.
# ---------------------------------------------------------------------------------------------------------
BUILTIN = {"demo": 100, "demo-quick": 12}


def builtin(name: str, cache: Path) -> Benchmark:
    """`demo` (100 held-out identities, one held-out prompt each) or `demo-quick` (its first 12 pairs).

    The reference photos are rendered into `cache` (deterministic, written atomically)."""
    if name not in BUILTIN:
        raise IdgenError(f"unknown benchmark {name!r} (built-in: {', '.join(BUILTIN)})")
    from PIL import Image

    from idgen.io import atomic_save_image
    from idgen.world.gates import pairs
    from idgen.world.render import render_reference, test_identities

    people = test_identities()
    chosen = pairs(1)[: BUILTIN[name]]
    cache.mkdir(parents=True, exist_ok=True)
    identities: list[IdentityPhoto] = []
    prompts: list[BenchPrompt] = []
    index: list[tuple[int, int, int]] = []
    prompt_ids: dict[str, int] = {}
    for k, pair in enumerate(chosen):
        reference = render_reference(people[pair.identity], seed=pair.identity)
        path = cache / f"test_{pair.identity:03d}.png"
        if not path.exists():
            atomic_save_image(Image.fromarray(reference.image), path)
        rgb = tuple(c / 255 for c in reference.background_rgb)
        identities.append(IdentityPhoto(f"test_{pair.identity:03d}", path, backdrop_rgb=rgb))  # type: ignore[arg-type]
        if pair.prompt.text not in prompt_ids:
            prompt_ids[pair.prompt.text] = len(prompts)
            prompts.append(BenchPrompt(id=f"{len(prompts):03d}", text=pair.prompt.text))
        index.append((k, prompt_ids[pair.prompt.text], pair.seed))
    return Benchmark(name, tuple(identities), tuple(prompts), SeedPolicy("fixed"), pairs=tuple(index))
