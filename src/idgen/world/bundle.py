"""The shipped demo-world assets: their manifest of sha256 sums, verification, and loading.

assets/
  flux/              a FluxPipeline folder (model_index.json, transformer/, vae/, text encoders, tokenizers)
  pulid/             config.json + model.safetensors (PuLIDAdapter at demo sizes)
  identity/          detector/, recognizer/, tower/ (stand-ins for antelopev2 and EVA02-CLIP)
  evaluators/        clip/, face/, segmenter/ (independent models for evaluation)
  wplus/             the W+-like style codec (PIDiff's identity space in the demo world)
  pidiff/            the W+ identity branch on the demo FLUX (config.json + model.safetensors)
  references/        reference photos of held-out identities
  MANIFEST.json      {relative path: {"sha256": ..., "bytes": ...}}
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from idgen.core.gate import SpatialMask
from idgen.core.refine import GridScaledRefiner
from idgen.core.schedule import TemporalSpatialScheduler
from idgen.errors import IdgenError
from idgen.io import atomic_write_text, file_sha256

ASSETS = Path(__file__).resolve().parent / "assets"
NUM_REFERENCES = 8  # reference photos shipped in assets/references: the first held-out identities
MANIFEST_NAME = "MANIFEST.json"
GENERATOR_PARTS = ("flux", "pulid", "identity")
MAX_TEXT_TOKENS = 24  # the T5 sequence length the demo world trains and samples with
# The demo model is not guidance-distilled: it was trained with 10% empty captions for true CFG.
WORLD_DEFAULTS = dict(
    height=64,
    width=64,
    num_inference_steps=20,
    guidance_scale=1.0,
    max_sequence_length=MAX_TEXT_TOKENS,
    true_cfg_scale=4.0,
    negative_prompt="",
    true_cfg_start_step=0,  # trained and measured with the negative pass at every step (not PuLID's sampler)
)
# SpatialID as the demo world runs it, chosen on the validation split by the README's rule (the largest
# contamination reduction whose FaceSim drop interval stays within 0.03): the authors' `balanced` preset,
# with the refiner scaled to the 8x8 token grid (64 px images are 1/8 of FLUX's grid per side, so the
# authors' blur and 3x3 dilation would cover most of the image) and the authors' centred prior.
WORLD_SPATIAL = SpatialMask(TemporalSpatialScheduler.from_preset("balanced"), refiner=GridScaledRefiner())


# sha256 of files already hashed in this process, keyed by (path, size, mtime): each file is hashed once.
_HASHED: dict[tuple[str, int, int], str] = {}


def sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = file_sha256(path)
    return _HASHED[key]


def plan_models(adapter: str, assets: Path = ASSETS) -> dict[str, Any]:
    """What an eval plan keys the demo world's models on: the identity branch and the sha256 of the assets'
    manifest (the loaders check every file against it), so retrained weights are never resumed over."""
    from idgen.eval.protocols import source_key

    return {"world": adapter, "assets": source_key(str(assets / MANIFEST_NAME))}


def asset_files(assets: Path) -> list[Path]:
    return sorted(
        p
        for p in assets.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME and "__pycache__" not in p.parts
    )


def write_manifest(assets: Path = ASSETS) -> dict[str, Any]:
    manifest = {
        p.relative_to(assets).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size}
        for p in asset_files(assets)
    }
    atomic_write_text(assets / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def read_manifest(assets: Path = ASSETS) -> dict[str, dict[str, Any]]:
    """{relative path: {"sha256", "bytes"}}; a missing or malformed manifest is one IdgenError line."""
    path = assets / MANIFEST_NAME
    if not path.is_file():
        raise IdgenError(f"demo-world assets are missing their manifest: {path} (run `idgen world train`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        for name, entry in manifest.items():
            if not (isinstance(entry["sha256"], str) and isinstance(entry["bytes"], int)):
                raise TypeError(name)
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        raise IdgenError(f"demo-world manifest is corrupt: {path}") from None
    return dict(manifest)


def verify(assets: Path = ASSETS, parts: tuple[str, ...] | None = None, under: str | None = None) -> None:
    """Check each listed file (under `parts`, or under the relative folder `under`, if given) exists and
    matches its sha256; name any that fails."""
    for name, entry in read_manifest(assets).items():
        if parts is not None and name.split("/", 1)[0] not in parts:
            continue
        if under is not None and not (name == under or name.startswith(under.rstrip("/") + "/")):
            continue
        file = assets / name
        if not file.is_file():
            raise IdgenError(f"demo-world asset missing: {file}")
        if file.stat().st_size != entry["bytes"] or sha256(file) != entry["sha256"]:
            raise IdgenError(f"demo-world asset corrupted (sha256 mismatch): {file}")


_REBUILDING: set[Path] = set()  # asset folders being retrained: their files are new, the manifest old


@contextlib.contextmanager
def rebuilding(assets: Path) -> Iterator[None]:
    """While `idgen world train` rewrites `assets`, its loaders read the new files unchecked; the manifest
    is rewritten at the end."""
    folder = Path(assets).resolve()
    _REBUILDING.add(folder)
    try:
        yield
    finally:
        _REBUILDING.discard(folder)


def verify_shipped(path: str | Path) -> None:
    """If `path` lies inside the package's shipped assets, check every file of the manifest under it (a
    folder) or it (a file). Loaders of shipped files call this first; other paths pass unchecked."""
    target, root = Path(path).resolve(), ASSETS.resolve()
    if (target != root and root not in target.parents) or root in _REBUILDING:
        return
    verify(ASSETS, under=None if target == root else target.relative_to(root).as_posix())


def reference_photos(assets: Path = ASSETS) -> list[Path]:
    verify_shipped(assets / "references")
    return sorted((assets / "references").glob("*.png"))


def load_world(device: str = "cpu", assets: Path = ASSETS, require_face: bool = True) -> Any:
    """The demo world as an IdentityFluxPipeline, through the same loaders as real checkpoints. A photo in
    which the world's detector finds no face is refused (NoFaceError), as PuLID refuses one; with
    `require_face=False` it gets a centred default face box and a warning instead."""
    from diffusers import FluxPipeline

    from idgen.models.loading import load_pulid_adapter
    from idgen.pipelines.pulid_flux import IdentityFluxPipeline
    from idgen.world.identity import WorldIdentityEncoder
    from idgen.world.tokenizer import load_tokenizers

    verify(assets, GENERATOR_PARTS)
    flux = FluxPipeline.from_pretrained(assets / "flux", **load_tokenizers(assets / "flux")).to(device)
    flux.set_progress_bar_config(disable=True)
    adapter = load_pulid_adapter(assets / "pulid", device=device)
    encoder = WorldIdentityEncoder.from_pretrained(assets / "identity", require_face=require_face)
    return IdentityFluxPipeline(flux, adapter, encoder, defaults=WORLD_DEFAULTS, spatial=WORLD_SPATIAL)


def quiet_prompt_truncation() -> None:
    """Silence diffusers' per-batch truncation warning in scripts that sample many demo prompts: the README
    documents which words fall past the demo world's T5 window, and `idgen generate` names them."""
    import logging

    logging.getLogger("diffusers.pipelines.flux.pipeline_flux").setLevel(logging.ERROR)
