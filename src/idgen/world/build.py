"""`idgen world train`: reproduce every demo-world asset from scratch, stage by stage, resumably.

Each stage writes its output atomically and is skipped when that output exists; each training
checkpoints under the work folder and resumes from it after a kill.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from idgen.errors import IdgenError
from idgen.io import atomic_folder
from idgen.training import TrainConfig
from idgen.world import bundle
from idgen.world import generator as gen
from idgen.world.bundle import ASSETS, NUM_REFERENCES

if TYPE_CHECKING:
    from idgen.world.identity import IdentityTrainPlan
    from idgen.world.pidiff import BranchRecipe
    from idgen.world.wplus import WPlusTrainPlan


class BaseRecipe(NamedTuple):
    renders: int = 8192
    vae: TrainConfig = TrainConfig(
        steps=1000, lr=1e-3, batch_size=16, checkpoint_every=100, warmup=20, seed=11
    )
    transformer: TrainConfig = TrainConfig(
        steps=8000, lr=6e-4, batch_size=32, checkpoint_every=100, warmup=100, seed=12, weight_decay=0.01
    )
    data_seed: int = 1  # the renders
    init_seed: int = gen.SEED_COMPONENTS  # the untrained VAE and transformer (`gen.new_pipeline`)

    def reseeded(self, k: int) -> BaseRecipe:
        """The same recipe with its k-th other seeds (renders + k; initialisation and both trainings
        + 10 k); k = 0 is this one. The frozen random text encoders keep theirs (`gen.text_encoders`)."""
        return self._replace(
            vae=self.vae.reseeded(k),
            transformer=self.transformer.reseeded(k),
            data_seed=self.data_seed + k,
            init_seed=self.init_seed + 10 * k,
        )


QUICK_BASE = BaseRecipe(
    renders=64,
    vae=TrainConfig(steps=3, batch_size=4, checkpoint_every=2, seed=11),
    transformer=TrainConfig(steps=3, batch_size=4, checkpoint_every=2, seed=12),
)


def train_base(
    work: Path, assets: Path = ASSETS, quick: bool = False, recipe: BaseRecipe | None = None
) -> dict[str, Any]:
    """Renders -> VAE -> latents and text embeddings -> transformer -> assets/flux (a FluxPipeline folder)."""
    from diffusers import AutoencoderKL

    recipe = recipe or (QUICK_BASE if quick else BaseRecipe())
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}

    def renders() -> dict[str, Any]:
        data = gen.render_set(recipe.renders, seed=recipe.data_seed)
        return {"images": data.images, "captions": data.captions}

    data = gen.cached(work / "renders.pt", renders)  # a work folder holds one seed's runs (`claim_work`)
    pipe = gen.new_pipeline(recipe.init_seed)
    vae_dir = work / "vae"
    if (vae_dir / "config.json").exists():
        pipe.vae = AutoencoderKL.from_pretrained(vae_dir)
    else:
        subset = gen.RenderSet(
            data["images"], torch.empty(0), torch.empty(0), torch.empty(0), data["captions"]
        )
        report["vae"] = gen.train_vae(pipe.vae, subset, recipe.vae, work / "vae-train")
        with atomic_folder(vae_dir) as staging:  # its config.json marks a finished VAE on resume
            pipe.vae.save_pretrained(staging)
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


def retrain_on_copy(folder: Path, train: Callable[[Path, Path], Any], cache: str, shared: Path) -> Path:
    """`train(work, assets)` on a copy of the shipped assets in `folder`/assets (copied once, whole), working
    in `folder`/work, where its data cache `cache` is shared through `shared` by the retrains that draw the
    same data. Resumable; returns the copy, its manifest rewritten. For comparing one stage's recipes."""
    assets, work = folder / "assets", folder / "work"
    if not assets.exists():
        with atomic_folder(assets) as staging:
            shutil.copytree(ASSETS, staging, dirs_exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    local = work / cache
    if shared.exists() and not local.exists():
        local.symlink_to(shared.resolve())
    with bundle.rebuilding(assets):
        train(work, assets)
    bundle.write_manifest(assets)
    if local.exists() and not shared.exists():  # the first retrain drew the data: share it
        local.replace(shared)
        local.symlink_to(shared.resolve())
    return assets


def save_pipeline(pipe: Any, folder: Path) -> None:
    """save_pretrained into a temporary sibling, then swap it in, so a kill never leaves half a folder."""
    with atomic_folder(folder) as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
        _drop_load_paths(staging)


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
        steps=1600, lr=2e-3, batch_size=32, checkpoint_every=100, warmup=50, seed=13, weight_decay=0.01
    )
    id_loss_weight: float = 1.0
    pairs: gen.PairMix = gen.PairMix(own_crop_share=0.5, backdrop_share=0.6, backdrop_blend=0.4)
    face_loss_weight: float = 4.0  # extra diffusion-loss weight on the target's face tokens
    data_seed: int = 2
    init_seed: int = 14
    ca_heads: int = 3  # each identity cross-attention's heads of 32 (3 spans the world transformer's width)

    def reseeded(self, k: int) -> AdapterRecipe:
        """The same recipe with its k-th other seeds (pairs, initialisation, batches); k = 0 is this one."""
        return self._replace(
            train=self.train.reseeded(k),
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
    config = gen.demo_pulid_config(
        pipe.transformer.inner_dim, encoder.id_dim, encoder.vit_dim, recipe.ca_heads
    )
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
    two_people_seed: int = 4  # the two-person renders
    single_seed: int = 5  # the single-person renders (not the base's)
    words_seed: int = gen.SEED_TWO_PEOPLE_WORDS  # the new words' embedding rows

    def reseeded(self, k: int) -> TwoPeopleRecipe:
        """The same recipe with its k-th other seeds (both render sets + k; the new embedding rows and the
        training + 10 k); k = 0 is this one."""
        return self._replace(
            train=self.train.reseeded(k),
            two_people_seed=self.two_people_seed + k,
            single_seed=self.single_seed + k,
            words_seed=self.words_seed + 10 * k,
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
        return encoded(*gen.two_people_render_set(recipe.two_people_renders, seed=recipe.two_people_seed))

    def one() -> dict[str, Any]:
        data = gen.render_set(recipe.single_renders, seed=recipe.single_seed)
        return encoded(data.images, data.captions)

    return [
        gen.EncodedSet(**gen.cached(work / "two-people-encoded.pt", two)),
        gen.EncodedSet(**gen.cached(work / "single-encoded.pt", one)),
    ]


def train_two_people(
    work: Path, assets: Path = ASSETS, quick: bool = False, recipe: TwoPeopleRecipe | None = None
) -> dict[str, Any]:
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
    recipe = recipe or (QUICK_TWO_PEOPLE if quick else TwoPeopleRecipe())
    work.mkdir(parents=True, exist_ok=True)
    gen.extend_text_encoders(pipe, len(tokenizer), recipe.words_seed)
    pipe.tokenizer, pipe.tokenizer_2 = tokenizer, build_tokenizer(two_people=True)
    pipe.vae.eval().requires_grad_(False)
    parts = _two_people_data(pipe, work, recipe)
    report = {"transformer": gen.train_transformer_mix(pipe, parts, recipe.train, work / "two-people-train")}
    pipe.transformer.eval().requires_grad_(False)
    save_pipeline(pipe, flux)
    report_path.write_text(json.dumps(report, indent=2))
    return report


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
MAX_WORLD_SEED = 1000


class WorldRecipes(NamedTuple):
    """What each generator-side stage trains with. The evaluators are not here: they are the measuring
    instrument, trained with their own fixed seeds whatever the world's seed, so that two seeds' worlds are
    measured with the same evaluators."""

    identity: IdentityTrainPlan
    base: BaseRecipe
    two_people: TwoPeopleRecipe
    wplus: WPlusTrainPlan
    pidiff: BranchRecipe
    adapter: AdapterRecipe


def world_recipes(quick: bool = False, seed: int = 0) -> WorldRecipes:
    """The committed recipes (`quick`: their few-step versions) with their `seed`-th other seeds (each
    recipe's `reseeded`: data seeds + seed, initialisation and training seeds + 10 seed); 0: as committed."""
    from idgen.world import identity, pidiff, wplus

    return WorldRecipes(
        identity=(identity.QUICK_PLAN if quick else identity.FULL_PLAN).reseeded(seed),
        base=(QUICK_BASE if quick else BaseRecipe()).reseeded(seed),
        two_people=(QUICK_TWO_PEOPLE if quick else TwoPeopleRecipe()).reseeded(seed),
        wplus=(wplus.QUICK_PLAN if quick else wplus.FULL_PLAN).reseeded(seed),
        pidiff=(pidiff.QUICK_BRANCH if quick else pidiff.BranchRecipe()).reseeded(seed),
        adapter=(QUICK_ADAPTER if quick else AdapterRecipe()).reseeded(seed),
    )


SEED_RECORD = "seed.json"  # in a work folder: the world seed its caches and checkpoints were made with


def work_seed(work: Path) -> int | None:
    """The world seed `work` was started with: its record; 0 for a folder with files but no record (started
    before the seed was recorded, so with the committed seeds); None for a missing or empty folder."""
    record = work / SEED_RECORD
    if record.is_file():
        try:
            return int(json.loads(record.read_text())["seed"])
        except (ValueError, KeyError, TypeError) as e:
            raise IdgenError(f"{record} is not a seed record ({e})") from None
    return 0 if work.is_dir() and any(work.iterdir()) else None


def check_work(work: Path, seed: int) -> None:
    """Refuse a work folder started with another world seed: its caches and checkpoints are that seed's."""
    started = work_seed(work)
    if started is not None and started != seed:
        raise IdgenError(
            f"work folder {work} was started with seed {started}, not {seed}; use another work folder"
        )


def claim_work(work: Path, seed: int) -> None:
    """`check_work`, then record `seed` in a work folder that has no record yet."""
    from idgen.io import atomic_write_text

    check_work(work, seed)
    if not (work / SEED_RECORD).is_file():
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(work / SEED_RECORD, json.dumps({"seed": seed}) + "\n")


def train_all(
    work: Path,
    assets: Path = ASSETS,
    quick: bool = False,
    stages: Sequence[str] = STAGES,
    adapter_seed: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Demo-world assets from scratch, `stages` in dependency order (a stage reads what earlier ones wrote
    to `assets`); each stage resumes after a kill. The manifest is rewritten over every file.

    `seed` k > 0 retrains every generator-side stage with its recipe's k-th other seeds (`world_recipes`), a
    retrain that checks a conclusion is not one seed's luck; the evaluators keep their seeds. `work` records
    the seed it was started with and is refused for another (`claim_work`). `adapter_seed` k > 0 retrains
    the adapter alone with its k-th other seeds (its caches are named by seed); at most one of the two."""
    from idgen.world.bundle import write_manifest
    from idgen.world.evaluators import train_evaluators
    from idgen.world.identity import train_identity_models
    from idgen.world.pidiff import train_pidiff_branch
    from idgen.world.wplus import train_wplus_codec

    for name, value in (("seed", seed), ("adapter_seed", adapter_seed)):
        if not 0 <= value <= MAX_WORLD_SEED:
            raise IdgenError(f"{name} must be in [0, {MAX_WORLD_SEED}], got {value}")
    if seed and adapter_seed:
        raise IdgenError(
            "pass a world seed or an adapter seed, not both (a world seed reseeds the adapter too)"
        )
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise IdgenError(f"unknown stage {unknown[0]!r} (stages: {', '.join(STAGES)})")
    claim_work(work, seed)
    r = world_recipes(quick, seed)
    gen_work, q = work / "generator", quick
    runs: dict[str, Callable[[], Any]] = {
        "identity": lambda: train_identity_models(work / "identity", assets / "identity", q, plan=r.identity),
        "evaluators": lambda: train_evaluators(work / "evaluators", assets / "evaluators", quick=q),
        "base": lambda: train_base(gen_work, assets, q, recipe=r.base),
        "adapter": lambda: train_adapter(gen_work, assets, q, seed=adapter_seed, recipe=r.adapter),
        "wplus": lambda: train_wplus_codec(work / "wplus", assets / "wplus", q, plan=r.wplus),
        "pidiff": lambda: train_pidiff_branch(gen_work, assets, q, recipe=r.pidiff),
        "two-people": lambda: train_two_people(gen_work, assets, q, recipe=r.two_people),
    }
    report = {name: runs[name]() for name in STAGES if name in stages}
    write_references(assets)
    write_manifest(assets)
    return report
