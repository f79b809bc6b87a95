"""The identity adapter recipes that scripts/adapter_recipes.py reruns for the README's comparison."""

from dataclasses import replace
from pathlib import Path

from idgen.world.build import AdapterRecipe
from tests import scripts


def load_script():
    return scripts.load_script("scripts/adapter_recipes.py")


def test_each_variant_differs_from_the_recipe_shipped_before_only_where_its_name_says():
    recipes, committed = load_script().RECIPES, AdapterRecipe()
    assert (committed.train.lr, committed.train.steps, committed.id_loss_weight) == (2e-3, 1600, 1.0)
    before = recipes["lr-5e-4"]
    assert before == committed._replace(train=replace(committed.train, lr=5e-4))
    assert recipes["no-id-loss"] == before._replace(id_loss_weight=0.0)
    assert recipes["id-loss-3"] == before._replace(id_loss_weight=3.0)
    for name, lr in (("lr-2e-3", 2e-3), ("lr-8e-3", 8e-3)):
        assert recipes[name] == before._replace(train=replace(before.train, lr=lr))
    assert recipes["lr-2e-3"] == committed
    other = recipes["lr-2e-3-other-seeds"]  # as `idgen world train --adapter-seed 1` reseeds
    assert other == committed._replace(data_seed=3, init_seed=24, train=replace(committed.train, seed=23))
    assert committed.ca_heads == 3
    assert [recipes[f"ca-heads-{n}"] for n in (6, 12)] == [committed._replace(ca_heads=n) for n in (6, 12)]


def test_the_cross_attention_heads_reach_the_adapter_config():
    from idgen.world.generator import demo_pulid_config

    width = demo_pulid_config(96, 128, 64)  # heads of 32 spanning the transformer's width
    wider = demo_pulid_config(96, 128, 64, ca_heads=6)
    assert (width.ca_dim, width.ca_dim_head, width.ca_heads) == (96, 32, 3)
    assert (wider.ca_dim, wider.ca_dim_head, wider.ca_heads) == (96, 32, 6)


def test_a_quick_recipe_keeps_its_losses_and_lr_but_trains_3_steps_on_32_pairs():
    fast = load_script().quick(load_script().RECIPES["lr-8e-3"])
    assert (fast.renders, fast.train.steps, fast.train.batch_size, fast.train.lr) == (32, 3, 4, 8e-3)
    assert (fast.id_loss_weight, fast.face_loss_weight, fast.pairs) == (1.0, 4.0, AdapterRecipe().pairs)


def test_the_table_reads_the_gates_summary():
    summary = {
        "facesim_uniform": [0.30312, 0.0251, 300],
        "facesim_drop_spatial_vs_uniform": [0.0214, 0.019, 300],
        "attribute_transfer": {"uniform": {"transferred": [0.379, 0.02, 300]},
                               "uniform_w2": {"transferred": [0.36283, 0.02, 296]}},
        "contamination_uniform": [47.469, 3.114, 300],
        "contamination_reduction_spatial": 0.5123,
    }  # fmt: skip
    assert load_script().table({"lr-2e-3": summary}).splitlines() == [
        "| recipe | FaceSim, uniform | FaceSim drop, spatial | mean of the five, uniform (%) "
        "| the same at id weight 2 (%) | contamination, uniform | reduction, spatial |",
        "|---|---|---|---|---|---|---|",
        "| lr-2e-3 | 0.303 ± 0.025 | 0.021 ± 0.019 | 37.9 | 36.3 | 47.47 ± 3.11 | 51.2% |",
    ]
    del summary["attribute_transfer"]["uniform_w2"]  # no face at id weight 2 (a 3-step adapter)
    assert load_script().table({"quick": summary}).splitlines()[-1] == (
        "| quick | 0.303 ± 0.025 | 0.021 ± 0.019 | 37.9 | – | 47.47 ± 3.11 | 51.2% |"
    )


def test_a_retrain_on_a_copy_copies_once_shares_its_data_cache_and_rewrites_the_copy_manifest(tmp_path):
    import hashlib

    from idgen.world import bundle
    from idgen.world.build import retrain_on_copy

    seen = []

    def train(work: Path, assets: Path) -> None:
        cache = work / "pairs.pt"
        seen.append(cache.is_symlink())
        if not cache.exists():  # as gen.cached draws the data once
            cache.write_text("pairs")
        (assets / "pulid" / "model.safetensors").write_bytes(b"retrained")

    shared = tmp_path / "pairs-8192.pt"
    first = retrain_on_copy(tmp_path / "lr-2e-3", train, "pairs.pt", shared)
    second = retrain_on_copy(tmp_path / "lr-8e-3", train, "pairs.pt", shared)
    again = retrain_on_copy(tmp_path / "lr-2e-3", train, "pairs.pt", shared)
    assert (first, second, again) == (tmp_path / "lr-2e-3" / "assets", tmp_path / "lr-8e-3" / "assets", first)
    assert seen == [False, True, True]  # the first draws the data, the others read it through the link
    assert (
        shared.read_text() == "pairs"
        and (tmp_path / "lr-2e-3" / "work" / "pairs.pt").resolve() == shared.resolve()
    )
    entry = bundle.read_manifest(first)["pulid/model.safetensors"]
    assert entry["sha256"] == hashlib.sha256(b"retrained").hexdigest()
    assert sorted(p.name for p in (tmp_path / "lr-2e-3").iterdir()) == ["assets", "work"]
    bundle.verify()  # the shipped assets are untouched
