"""`idgen world train`: reproduce every demo-world asset from scratch, stage by stage, resumably.

Each stage writes its output atomically and is skipped when that output exists; each training
checkpoints under the work folder and resumes from it after a kill.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from idgen.errors import IdgenError
from idgen.training import TrainConfig
from idgen.world import generator as gen

ASSETS = Path(__file__).resolve().parent / "assets"


class BaseRecipe(NamedTuple):
    renders: int = 8192
    vae: TrainConfig = TrainConfig(
        steps=1000, lr=1e-3, batch_size=16, checkpoint_every=100, warmup=20, seed=11
    )
    transformer: TrainConfig = TrainConfig(
        steps=8000, lr=6e-4, batch_size=32, checkpoint_every=100, warmup=100, seed=12, weight_decay=0.01
    )


QUICK_BASE = BaseRecipe(
    renders=64,
    vae=TrainConfig(steps=3, batch_size=4, checkpoint_every=2, seed=11),
    transformer=TrainConfig(steps=3, batch_size=4, checkpoint_every=2, seed=12),
)


def train_base(work: Path, assets: Path = ASSETS, quick: bool = False) -> dict[str, Any]:
    """Renders -> VAE -> latents and text embeddings -> transformer -> assets/flux (a FluxPipeline folder)."""
    from diffusers import AutoencoderKL

    recipe = QUICK_BASE if quick else BaseRecipe()
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}

    def renders() -> dict[str, Any]:
        data = gen.render_set(recipe.renders, seed=1)
        return {"images": data.images, "captions": data.captions}

    data = gen.cached(work / "renders.pt", renders)
    pipe = gen.new_pipeline()
    vae_dir = work / "vae"
    if (vae_dir / "config.json").exists():
        pipe.vae = AutoencoderKL.from_pretrained(vae_dir)
    else:
        subset = gen.RenderSet(
            data["images"], torch.empty(0), torch.empty(0), torch.empty(0), data["captions"]
        )
        report["vae"] = gen.train_vae(pipe.vae, subset, recipe.vae, work / "vae-train")
        pipe.vae.save_pretrained(vae_dir)
    pipe.vae.eval().requires_grad_(False)

    def encoded() -> dict[str, Any]:
        t5, pooled = gen.encode_texts(pipe, data["captions"])
        empty_t5, empty_pooled = gen.encode_texts(pipe, [""])
        latents = gen.encode_latents(pipe, data["images"])
        return {
            "latents": latents,
            "t5": t5,
            "pooled": pooled,
            "empty_t5": empty_t5,
            "empty_pooled": empty_pooled,
        }

    enc = gen.EncodedSet(**gen.cached(work / "encoded.pt", encoded))
    report["transformer"] = gen.train_transformer(pipe, enc, recipe.transformer, work / "transformer-train")
    pipe.transformer.eval().requires_grad_(False)
    save_pipeline(pipe, assets / "flux")
    (work / "base-report.json").write_text(json.dumps(report, indent=2))
    return report


def save_pipeline(pipe: Any, folder: Path) -> None:
    """save_pretrained into a temporary sibling, then swap it in, so a kill never leaves half a folder."""
    import shutil

    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    _drop_load_paths(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def _drop_load_paths(folder: Path) -> None:
    """Remove diffusers' `_name_or_path` (the folder a component was loaded from: a path on the machine
    that trained it) from the saved configs; a pipeline built from scratch has none."""
    for path in (folder / "model_index.json", *sorted(folder.glob("*/config.json"))):
        config = json.loads(path.read_text())
        if config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


class AdapterRecipe(NamedTuple):
    renders: int = 8192
    train: TrainConfig = TrainConfig(
        steps=1600, lr=5e-4, batch_size=32, checkpoint_every=100, warmup=50, seed=13, weight_decay=0.01
    )
    id_loss_weight: float = 1.0
    pairs: gen.PairMix = gen.PairMix(own_crop_share=0.5, backdrop_share=0.6, backdrop_blend=0.4)
    face_loss_weight: float = 4.0  # extra diffusion-loss weight on the target's face tokens
    data_seed: int = 2
    init_seed: int = 14

    def reseeded(self, k: int) -> AdapterRecipe:
        """The same recipe with its k-th other seeds (pairs, initialisation, batches); k = 0 is this one."""
        return self._replace(
            train=dataclasses.replace(self.train, seed=self.train.seed + 10 * k),
            data_seed=self.data_seed + k,
            init_seed=self.init_seed + 10 * k,
        )


QUICK_ADAPTER = AdapterRecipe(
    renders=32, train=TrainConfig(steps=3, batch_size=4, checkpoint_every=2, seed=13)
)


def train_adapter(
    work: Path, assets: Path = ASSETS, quick: bool = False, seed: int = 0, recipe: AdapterRecipe | None = None
) -> dict[str, Any]:
    """The PuLID adapter on the frozen base, reading the base and identity encoder from `assets`, trained on
    pairs of a scene render and a reference photo of the same person (`gen.PairMix`); `seed` k > 0 trains
    with the recipe's k-th other seeds, caching under its own names."""
    from diffusers import FluxPipeline

    from idgen.models.loading import save_pulid_adapter
    from idgen.models.pulid import PuLIDAdapter
    from idgen.world.identity import WorldIdentityEncoder

    recipe = (recipe or (QUICK_ADAPTER if quick else AdapterRecipe())).reseeded(seed)
    pipe = FluxPipeline.from_pretrained(assets / "flux")
    encoder = WorldIdentityEncoder.from_pretrained(assets / "identity")

    def pairs() -> dict[str, Any]:
        data = gen.pair_set(recipe.renders, recipe.data_seed, recipe.pairs)
        t5, pooled = gen.encode_texts(pipe, data.targets.captions)
        latents = gen.encode_latents(pipe, data.targets.images)
        return {
            "latents": latents,
            "t5": t5,
            "pooled": pooled,
            "face_boxes": data.targets.face_boxes,
            "references": data.references,
            "reference_boxes": data.reference_boxes,
        }

    data = gen.AdapterSet(**gen.cached(work / f"adapter-pairs-{recipe.data_seed}.pt", pairs))
    config = gen.demo_pulid_config(pipe.transformer.inner_dim, encoder.id_dim, encoder.vit_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.init_seed)
        adapter = PuLIDAdapter(config)
    report = gen.train_adapter(
        pipe, adapter, encoder, data, recipe.train, work / f"adapter-train-{recipe.train.seed}",
        recipe.id_loss_weight, recipe.face_loss_weight,
    )  # fmt: skip
    save_pulid_adapter(adapter.eval(), assets / "pulid")
    return report


class TwoPeopleRecipe(NamedTuple):
    two_people_renders: int = 6144
    single_renders: int = 4096
    train: TrainConfig = TrainConfig(
        steps=2400, lr=2e-4, batch_size=32, checkpoint_every=100, warmup=50, seed=15, weight_decay=0.01
    )


QUICK_TWO_PEOPLE = TwoPeopleRecipe(
    two_people_renders=16,
    single_renders=16,
    train=TrainConfig(steps=3, batch_size=4, checkpoint_every=2, seed=15),
)


def _two_people_data(pipe: Any, work: Path, recipe: TwoPeopleRecipe) -> list[gen.EncodedSet]:
    """Encoded two-person renders and single-person renders (their own seeds, not the base's), cached."""

    def encoded(images: torch.Tensor, captions: list[str]) -> dict[str, Any]:
        t5, pooled = gen.encode_texts(pipe, captions)
        empty_t5, empty_pooled = gen.encode_texts(pipe, [""])
        latents = gen.encode_latents(pipe, images)
        return dict(latents=latents, t5=t5, pooled=pooled, empty_t5=empty_t5, empty_pooled=empty_pooled)

    def two() -> dict[str, Any]:
        return encoded(*gen.two_people_render_set(recipe.two_people_renders, seed=4))

    def one() -> dict[str, Any]:
        data = gen.render_set(recipe.single_renders, seed=5)
        return encoded(data.images, data.captions)

    return [
        gen.EncodedSet(**gen.cached(work / "two-people-encoded.pt", two)),
        gen.EncodedSet(**gen.cached(work / "single-encoded.pt", one)),
    ]


def train_two_people(work: Path, assets: Path = ASSETS, quick: bool = False) -> dict[str, Any]:
    """The base FLUX in `assets/flux` fine-tuned on two-person captions, half of every batch ordinary
    single-person renders (so single-person scenes keep their quality); the tokenizers gain the two-person
    words and the frozen text encoders their embedding rows (old rows unchanged). The W+ branch, trained on
    the single-person base, is not retrained; the adapter stage trains on this base afterwards. Skipped when
    `assets/flux` already has the two-person vocabulary; resumes from its checkpoints after a kill."""
    flux = assets / "flux"
    if not (flux / "model_index.json").is_file():
        raise IdgenError(f"stage two-people needs the base model in {flux} (run stage base first)")
    from diffusers import FluxPipeline

    from idgen.world.tokenizer import build_tokenizer

    report_path = work / "two-people-report.json"
    tokenizer = build_tokenizer(two_people=True)
    pipe = FluxPipeline.from_pretrained(flux)
    if len(pipe.tokenizer) == len(tokenizer):
        return json.loads(report_path.read_text()) if report_path.is_file() else {"skipped": "already done"}
    recipe = QUICK_TWO_PEOPLE if quick else TwoPeopleRecipe()
    work.mkdir(parents=True, exist_ok=True)
    gen.extend_text_encoders(pipe, len(tokenizer))
    pipe.tokenizer, pipe.tokenizer_2 = tokenizer, build_tokenizer(two_people=True)
    pipe.vae.eval().requires_grad_(False)
    parts = _two_people_data(pipe, work, recipe)
    report = {"transformer": gen.train_transformer_mix(pipe, parts, recipe.train, work / "two-people-train")}
    pipe.transformer.eval().requires_grad_(False)
    save_pipeline(pipe, flux)
    report_path.write_text(json.dumps(report, indent=2))
    return report


NUM_REFERENCES = 8


def write_references(assets: Path = ASSETS, count: int = NUM_REFERENCES) -> list[Path]:
    """Reference photos of the first held-out identities, shipped for `idgen generate --id-image`."""
    from PIL import Image

    from idgen.io import atomic_save_image
    from idgen.world.render import render_reference, test_identities

    folder = assets / "references"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, person in enumerate(test_identities()[:count]):
        path = folder / f"test_{i:03d}.png"
        atomic_save_image(Image.fromarray(render_reference(person, seed=i).image), path)
        paths.append(path)
    return paths


# In dependency order: two-people fine-tunes the base; both identity branches then train on that final
# base, so each ships with the base it was trained on (the W+ branch on the style codec, the adapter on
# the identity encoder).
STAGES = ("identity", "evaluators", "base", "two-people", "wplus", "pidiff", "adapter")


def train_all(
    work: Path,
    assets: Path = ASSETS,
    quick: bool = False,
    stages: Sequence[str] = STAGES,
    adapter_seed: int = 0,
) -> dict[str, Any]:
    """Demo-world assets from scratch, `stages` in dependency order (a stage reads what earlier ones wrote
    to `assets`); each stage resumes after a kill. The manifest is rewritten over every file. `adapter_seed`
    k > 0 trains the adapter with its recipe's k-th other seeds (a retrain that checks a conclusion is not
    one seed's luck)."""
    from idgen.world.bundle import write_manifest
    from idgen.world.evaluators import train_evaluators
    from idgen.world.identity import train_identity_models
    from idgen.world.pidiff import train_pidiff_branch
    from idgen.world.wplus import train_wplus_codec

    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise IdgenError(f"unknown stage {unknown[0]!r} (stages: {', '.join(STAGES)})")
    runs: dict[str, Callable[[], Any]] = {
        "identity": lambda: train_identity_models(work / "identity", assets / "identity", quick=quick),
        "evaluators": lambda: train_evaluators(work / "evaluators", assets / "evaluators", quick=quick),
        "base": lambda: train_base(work / "generator", assets, quick=quick),
        "adapter": lambda: train_adapter(work / "generator", assets, quick=quick, seed=adapter_seed),
        "wplus": lambda: train_wplus_codec(work / "wplus", assets / "wplus", quick=quick),
        "pidiff": lambda: train_pidiff_branch(work / "generator", assets, quick=quick),
        "two-people": lambda: train_two_people(work / "generator", assets, quick=quick),
    }
    report = {name: runs[name]() for name in STAGES if name in stages}
    write_references(assets)
    write_manifest(assets)
    return report
