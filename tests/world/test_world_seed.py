"""`idgen world train --seed K`: every generator-side recipe's K-th other seeds, the evaluators' fixed seeds,
and work folders that hold one seed's caches and checkpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from idgen.errors import IdgenError
from idgen.world import build, identity, pidiff, wplus


def _seed(config, seed):
    return dataclasses.replace(config, seed=seed)


def test_seed_0_is_every_committed_recipe() -> None:
    for quick in (False, True):
        recipes = build.world_recipes(quick, 0)
        assert recipes == build.WorldRecipes(
            identity=identity.QUICK_PLAN if quick else identity.FULL_PLAN,
            base=build.QUICK_BASE if quick else build.BaseRecipe(),
            two_people=build.QUICK_TWO_PEOPLE if quick else build.TwoPeopleRecipe(),
            wplus=wplus.QUICK_PLAN if quick else wplus.FULL_PLAN,
            pidiff=pidiff.QUICK_BRANCH if quick else pidiff.BranchRecipe(),
            adapter=build.QUICK_ADAPTER if quick else build.AdapterRecipe(),
        )
        for recipe in recipes:
            assert recipe.reseeded(0) == recipe


def test_the_committed_seeds_are_the_ones_the_stages_used_before() -> None:
    from idgen.world import generator as gen

    base, two = build.BaseRecipe(), build.TwoPeopleRecipe()
    assert (base.data_seed, base.init_seed, base.vae.seed, base.transformer.seed) == (
        1,
        gen.SEED_COMPONENTS,
        11,
        12,
    )
    assert (two.two_people_seed, two.single_seed, two.words_seed, two.train.seed) == (
        4,
        5,
        gen.SEED_TWO_PEOPLE_WORDS,
        15,
    )
    plan = identity.FULL_PLAN
    assert (plan.data_seed, plan.detector.seed, plan.recognizer.seed, plan.tower.seed) == (
        71_000,
        71_101,
        71_202,
        71_303,
    )
    assert (wplus.FULL_PLAN.data_seed, wplus.FULL_PLAN.train.seed) == (73_000, 73_101)
    branch = pidiff.BranchRecipe()
    assert (branch.data_seed, branch.init_seed, [s.train.seed for s in branch.stages]) == (2, 16, [15, 17])
    assert branch.data_seed == build.AdapterRecipe().data_seed  # the branch renders the adapter's data


def test_seed_1_moves_every_seed_and_nothing_else() -> None:
    from idgen.world import generator as gen

    base = build.BaseRecipe()
    other = base.reseeded(1)
    assert (other.data_seed, other.init_seed, other.vae.seed, other.transformer.seed) == (
        2,
        gen.SEED_COMPONENTS + 10,
        21,
        22,
    )
    assert (
        other._replace(vae=base.vae, transformer=base.transformer, data_seed=1, init_seed=base.init_seed)
        == base
    )

    two = build.TwoPeopleRecipe()
    other2 = two.reseeded(1)
    assert (other2.two_people_seed, other2.single_seed, other2.words_seed, other2.train.seed) == (
        5,
        6,
        gen.SEED_TWO_PEOPLE_WORDS + 10,
        25,
    )
    assert (
        other2._replace(train=two.train, two_people_seed=4, single_seed=5, words_seed=two.words_seed) == two
    )

    plan = identity.FULL_PLAN
    other3 = plan.reseeded(1)
    assert (other3.data_seed, other3.detector.seed, other3.recognizer.seed, other3.tower.seed) == (
        71_001,
        71_111,
        71_212,
        71_313,
    )
    undone = dataclasses.replace(
        other3,
        data_seed=71_000,
        detector=_seed(other3.detector, 71_101),
        recognizer=_seed(other3.recognizer, 71_202),
        tower=_seed(other3.tower, 71_303),
    )
    assert undone == plan

    codec = wplus.FULL_PLAN.reseeded(1)
    assert (codec.data_seed, codec.train.seed) == (73_001, 73_111)
    assert dataclasses.replace(codec, data_seed=73_000, train=_seed(codec.train, 73_101)) == wplus.FULL_PLAN

    branch = pidiff.BranchRecipe()
    other4 = branch.reseeded(1)
    assert (other4.data_seed, other4.init_seed, [s.train.seed for s in other4.stages]) == (3, 26, [25, 27])
    stages = tuple(s._replace(train=_seed(s.train, t)) for s, t in zip(other4.stages, (15, 17), strict=True))
    assert other4._replace(stages=stages, data_seed=2, init_seed=16) == branch

    assert build.world_recipes(False, 1).adapter == build.AdapterRecipe().reseeded(1)


def test_seed_k_is_each_recipes_reseeded_k() -> None:
    for quick in (False, True):
        committed = build.world_recipes(quick, 0)
        assert build.world_recipes(quick, 7) == build.WorldRecipes(*(r.reseeded(7) for r in committed))
    assert build.world_recipes(True, 7).base.vae.seed == 11 + 70


@pytest.fixture
def no_bundle_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    from idgen.world import bundle

    monkeypatch.setattr(build, "write_references", lambda assets: [])
    monkeypatch.setattr(bundle, "write_manifest", lambda assets: None)


def test_the_evaluators_train_alike_for_any_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_bundle_writes: None
) -> None:
    from idgen.world import evaluators

    calls = []
    monkeypatch.setattr(evaluators, "train_evaluators", lambda *a, **kw: calls.append((a, kw)) or {})
    for seed in (0, 3, 1000):
        build.train_all(
            tmp_path / f"work-{seed}", tmp_path / "assets", quick=True, stages=("evaluators",), seed=seed
        )
    assets = tmp_path / "assets" / "evaluators"
    assert calls == [((tmp_path / f"work-{k}" / "evaluators", assets), {"quick": True}) for k in (0, 3, 1000)]
    # Their seeds are the module's own constants, read by nothing that takes a world seed.
    assert (evaluators.POOL_SEED, evaluators.CLIP_SEED, evaluators.FACE_SEED) == (0xE7A1, 7101, 7202)
    assert (evaluators.SEGMENTER_SEED, evaluators.ATTRIBUTE_SEED) == (7303, 7404)


def test_a_work_folder_records_its_seed_and_refuses_another(tmp_path: Path) -> None:
    work = tmp_path / "work"
    assert build.work_seed(work) is None
    build.claim_work(work, 2)
    assert json.loads((work / "seed.json").read_text()) == {"seed": 2}
    build.claim_work(work, 2)  # the same seed resumes
    for other in (0, 1):
        with pytest.raises(IdgenError, match=f"was started with seed 2, not {other}; use another"):
            build.claim_work(work, other)
    assert json.loads((work / "seed.json").read_text()) == {"seed": 2}


def test_a_work_folder_without_a_record_holds_the_committed_seeds(tmp_path: Path) -> None:
    empty, earlier = tmp_path / "empty", tmp_path / "earlier"
    empty.mkdir()
    (earlier / "generator").mkdir(parents=True)
    assert (build.work_seed(empty), build.work_seed(earlier)) == (None, 0)
    build.claim_work(empty, 5)
    assert build.work_seed(empty) == 5
    with pytest.raises(IdgenError, match="started with seed 0, not 5"):
        build.claim_work(earlier, 5)
    assert not (earlier / "seed.json").exists()
    build.claim_work(earlier, 0)
    assert build.work_seed(earlier) == 0 and (earlier / "seed.json").is_file()
    (earlier / "seed.json").write_text("[]")
    with pytest.raises(IdgenError, match="is not a seed record"):
        build.work_seed(earlier)


def test_train_all_refuses_before_writing(tmp_path: Path, no_bundle_writes: None) -> None:
    work = tmp_path / "work"
    build.train_all(work, tmp_path / "assets", quick=True, stages=(), seed=4)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for kwargs, message in (
        ({"seed": 1}, "started with seed 4, not 1"),
        ({"seed": 4, "adapter_seed": 1}, "not both"),
        ({"seed": 1001}, r"seed must be in \[0, 1000\], got 1001"),
        ({"adapter_seed": -1}, r"adapter_seed must be in \[0, 1000\], got -1"),
    ):
        with pytest.raises(IdgenError, match=message):
            build.train_all(work, tmp_path / "assets", quick=True, stages=("identity",), **kwargs)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before == ["seed.json", "work"]


def test_the_default_work_folder_is_named_by_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from idgen.cli import build_parser
    from idgen.cli.world import check_train

    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    folders = [
        check_train(parser.parse_args(["world", "train", *extra]))[0].as_posix()
        for extra in ([], ["--seed", "3"], ["--quick"], ["--quick", "--seed", "3"], ["--adapter-seed", "3"])
    ]
    assert folders == [
        "outputs/world",
        "outputs/world-seed-3",
        "outputs/world-quick",
        "outputs/world-quick-seed-3",
        "outputs/world",
    ]
    assert list(tmp_path.iterdir()) == []  # checking writes nothing


@pytest.mark.slow
def test_a_quick_identity_stage_with_seed_1_trains_other_weights(
    tmp_path: Path, no_bundle_writes: None
) -> None:
    from safetensors.torch import load_file

    weights = {}
    for seed in (0, 1, 0):
        work, assets = tmp_path / f"work-{seed}", tmp_path / f"assets-{seed}-{len(weights)}"
        report = build.train_all(work, assets, quick=True, stages=("identity",), seed=seed)
        assert report["identity"]["plan"]["data_seed"] == 71_000 + seed
        weights[seed, len(weights)] = load_file(assets / "identity" / "detector" / "model.safetensors")
    first, other, again = weights.values()
    assert first.keys() == other.keys() == again.keys()
    assert all((first[k] == again[k]).all() for k in first)  # seed 0 resumes to the same weights
    assert not all(first[k].shape == other[k].shape and (first[k] == other[k]).all() for k in first)


@pytest.mark.slow
def test_a_quick_base_stage_with_seed_1_trains_other_weights(tmp_path: Path, no_bundle_writes: None) -> None:
    from safetensors.torch import load_file

    transformers, vaes = [], []
    for seed in (0, 1):
        assets = tmp_path / f"assets-{seed}"
        build.train_all(tmp_path / f"work-{seed}", assets, quick=True, stages=("base",), seed=seed)
        transformers.append(load_file(assets / "flux/transformer/diffusion_pytorch_model.safetensors"))
        vaes.append(load_file(assets / "flux/vae/diffusion_pytorch_model.safetensors"))
    for first, other in (transformers, vaes):
        assert first.keys() == other.keys()
        assert not any((first[k] == other[k]).all() for k in first if first[k].numel() > 1)
