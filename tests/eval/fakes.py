"""Deterministic stand-ins for a pipeline and metric models: fast enough for runner tests, simple enough
that their metric values can be worked out by hand."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from idgen.eval.manifest import Benchmark, BenchPrompt, IdentityPhoto, SeedPolicy
from idgen.eval.models import Face
from idgen.eval.runner import Method, MetricModels
from idgen.identity.base import IdentityFeatures
from idgen.io import atomic_save_image

SIZE = 32
FACE_BOX = (8, 8, 24, 24)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def photo(colour: tuple[int, int, int], face: bool = True) -> Image.Image:
    """A grey photo with a coloured square 'face' (or none)."""
    a = np.full((SIZE, SIZE, 3), 128, dtype=np.uint8)
    if face:
        left, top, right, bottom = FACE_BOX
        a[top:bottom, left:right] = colour
    return Image.fromarray(a)


class FakeGenerator:
    """Image = noise(seed, prompt); with identity: the face square takes the identity colour, and uniform
    injection also tints the background towards it (contamination)."""

    def __init__(self, sleep: float = 0.0) -> None:
        self.settings = {"fake": True}
        self.sleep = sleep
        self.calls = 0

    def encode(self, photo: Image.Image, what: str) -> IdentityFeatures:
        a = np.asarray(photo, dtype=np.float32)
        left, top, right, bottom = FACE_BOX
        colour = torch.from_numpy(a[top:bottom, left:right].reshape(-1, 3).mean(0))
        return IdentityFeatures(id_embedding=colour[None], vit_hidden=[colour[None, None]])

    def generate(self, prompts, seeds, features, method):  # type: ignore[no-untyped-def]
        self.calls += 1
        time.sleep(self.sleep)
        images = []
        for k, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
            rng = np.random.default_rng([seed, _hash(prompt)])
            a = rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.float32)
            left, top, right, bottom = FACE_BOX
            a[top:bottom, left:right] = 200.0
            if features is not None:
                colour = features.id_embedding[k].numpy()
                a[top:bottom, left:right] = colour
                if method.mode == "uniform":
                    a = a * (1 - 0.3 * method.id_weight) + colour * 0.3 * method.id_weight
                    a[top:bottom, left:right] = colour
            images.append(Image.fromarray(a.round().clip(0, 255).astype(np.uint8)))
        return images, None


class FakeImageText:
    """'CLIP': the mean colour of each 8x8 patch; text: a hashed vector in the same space."""

    name = "fake-clip"

    def patch_embeds(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, int]:
        x = torch.stack(
            [torch.from_numpy(np.asarray(im, dtype=np.float32)) for im in images]
        )  # (B, 32, 32, 3)
        patches = x.reshape(len(images), 4, 8, 4, 8, 3).mean(dim=(2, 4))  # (B, 4, 4, 3)
        return patches.reshape(len(images), 16, 3) + 1.0, 4

    def image_embeds(self, images: Sequence[Image.Image]) -> torch.Tensor:
        patches, _ = self.patch_embeds(images)
        return torch.nn.functional.normalize(patches.flatten(1), dim=-1)

    def text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        g = [torch.Generator().manual_seed(_hash(t)) for t in texts]
        return torch.nn.functional.normalize(torch.stack([torch.rand(48, generator=x) for x in g]), dim=-1)

    def view_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        return 0.0, 0.0, float(size[0]), float(size[1])


class FakeFaces:
    """A face wherever FACE_BOX is not pure black; its embedding is the box's mean colour."""

    name = "fake-face"
    arcface_comparable = False

    def faces(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        out = []
        left, top, right, bottom = FACE_BOX
        for im in images:
            a = np.asarray(im, dtype=np.float32)[top:bottom, left:right]
            if a.max() == 0:
                out.append([])
                continue
            emb = torch.nn.functional.normalize(torch.from_numpy(a.reshape(-1, 3).mean(0)) + 1.0, dim=0)
            out.append([Face(box=tuple(float(v) for v in FACE_BOX), score=1.0, embedding=emb)])  # type: ignore[arg-type]
        return out


def fake_models() -> MetricModels:
    return MetricModels(clip=FakeImageText(), faces=FakeFaces())


COLOURS = [(250, 20, 20), (20, 250, 20), (20, 20, 250), (240, 240, 20), (20, 240, 240)]


def benchmark(folder: Path, identities: int = 3, prompts: int = 4, policy: str = "per-prompt") -> Benchmark:
    folder.mkdir(parents=True, exist_ok=True)
    people = []
    for i in range(identities):
        path = folder / f"id_{i}.png"
        if not path.exists():
            atomic_save_image(photo(COLOURS[i % len(COLOURS)]), path)
        people.append(IdentityPhoto(f"id_{i}", path))
    texts = tuple(BenchPrompt(f"{j:03d}", f"a person in place number {j}") for j in range(prompts))
    return Benchmark("fake", tuple(people), texts, SeedPolicy(policy, 7))


METHODS = [Method("uniform"), Method("spatial")]


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every table in a markdown text, as rows of cells; asserts each is well formed: a header, a
    separator row of the same width, and every row as wide as the header (escaped pipes are text)."""
    import re

    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            assert line.rstrip().endswith("|"), f"table row does not end with '|': {line!r}"
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            current.append(cells)
            continue
        if current:
            assert len(current) >= 2, f"a table without a separator row: {current}"
            assert all(re.fullmatch(r":?-{3,}:?", c) for c in current[1]), f"bad separator: {current[1]}"
            widths = {len(row) for row in current}
            assert widths == {len(current[0])}, f"rows of different widths {widths}: {current}"
            tables.append([current[0], *current[2:]])
            current = []
    return tables
