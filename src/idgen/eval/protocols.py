"""Named protocols (a paper's generation settings and methods), and how a run's settings are resolved.

Precedence, lowest first: the model's own defaults, then the protocol, then explicit flags. An explicit
flag always wins over the protocol, and the plan records the protocol, every effective setting and which
of them were given explicitly. A protocol's image size applies to full-size FLUX only: the tiny random
models and the demo world render at their own default size unless a size is given explicitly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idgen.errors import IdgenError
from idgen.io import file_sha256


@dataclass(frozen=True)
class Protocol:
    name: str
    sampling: dict[str, Any]  # pipeline keyword arguments
    seed_policy: str
    seed: int
    methods: tuple[str, ...]
    iq_mode: str = "ibench"
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


PROTOCOLS = {
    "spatialid-ibench": Protocol(
        name="spatialid-ibench",
        # SpatialID's IBench runs (docs/spatialid.md): 896x1152 (W x H), 25 steps, distilled guidance 4,
        # true CFG off, seed 42 for every image; uniform (PuLID) and SpatialID with both presets (`spatial`
        # runs FLUX's own schedule, v1).
        sampling={
            "width": 896,
            "height": 1152,
            "num_inference_steps": 25,
            "guidance_scale": 4.0,
            "true_cfg_scale": 1.0,
        },
        seed_policy="fixed",
        seed=42,
        methods=("uniform", "spatial", "spatial:preset=balanced"),
        source="SpatialID's IBench runs (41 prompts x 100 photos)",
    )
}
SIZE_KEYS = ("width", "height")
# The sampling keys a run can set, as (flag attribute, pipeline keyword).
SAMPLING_FLAGS = (
    ("width", "width"),
    ("height", "height"),
    ("steps", "num_inference_steps"),
    ("guidance", "guidance_scale"),
    ("true_cfg", "true_cfg_scale"),
)


def protocol(name: str | None) -> Protocol | None:
    if name is None:
        return None
    if name not in PROTOCOLS:
        raise IdgenError(f"unknown protocol {name!r} (known: {', '.join(PROTOCOLS)})")
    return PROTOCOLS[name]


def resolve_sampling(
    model_defaults: dict[str, Any], chosen: Protocol | None, explicit: dict[str, Any], small_model: bool
) -> dict[str, Any]:
    """Effective pipeline keyword arguments: model defaults < protocol < explicit (None = not given)."""
    out = {key: model_defaults[key] for _, key in SAMPLING_FLAGS if key in model_defaults}
    if chosen is not None:
        out.update({k: v for k, v in chosen.sampling.items() if not (small_model and k in SIZE_KEYS)})
    out.update({k: v for k, v in explicit.items() if v is not None})
    return out


@dataclass(frozen=True)
class ContentHash:
    """How a local folder's files are keyed: a file of up to `whole_max_bytes` by its full sha256; a larger
    one by the sha256 of `blocks` blocks of `block_bytes` at evenly spaced offsets (block i starts at
    floor(i * (size - block_bytes) / (blocks - 1)): the first starts the file, the last ends it). Hashing
    whole multi-GiB FLUX shards at every start of an eval would take minutes; the blocks take milliseconds,
    and retraining changes the bytes of every block. An edit that touches only bytes outside the blocks of
    a large file is not seen."""

    whole_max_bytes: int = 64 << 20
    blocks: int = 16
    block_bytes: int = 1 << 20

    def file_digest(self, path: Path) -> str:
        """`sha256:<hex>` of the whole file, or `sampled sha256:<hex>` of its blocks (see the class)."""
        size = path.stat().st_size
        if size <= self.whole_max_bytes:
            return f"sha256:{file_sha256(path)}"
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            block_bytes = min(self.block_bytes, size)
            last = max(self.blocks - 1, 1)
            for i in range(self.blocks):
                f.seek(i * (size - block_bytes) // last)
                digest.update(f.read(block_bytes))
        return f"sampled sha256:{digest.hexdigest()}"


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def source_key(source: str | None, content: ContentHash = ContentHash()) -> str | None:
    """What identifies a model for resuming: a hub id or built-in name as given; a local file by its
    sha256; a local folder by the sha256 of its listing: each file's path relative to the folder, its size
    and its content digest (`ContentHash`: the full sha256 up to 64 MiB, else 16 spaced 1 MiB blocks).
    Hidden files and folders (.cache, .git, ...) are left out. Never the folder's own path or mtimes."""
    if source is None:
        return None
    path = Path(source).expanduser()
    if path.is_file():
        return f"file sha256:{file_sha256(path)}"
    if path.is_dir():
        listing = []
        for p in sorted(path.rglob("*")):
            relative = p.relative_to(path)
            if p.is_file() and not _hidden(relative):
                listing.append([relative.as_posix(), p.stat().st_size, content.file_digest(p)])
        return f"folder sha256:{hashlib.sha256(json.dumps(listing).encode()).hexdigest()}"
    return source  # a hub id (its revision is the hub's business) or a built-in name
