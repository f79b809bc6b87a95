"""The W+ branch recipes that scripts/pidiff_recipes.py reruns for the README's comparison."""

from dataclasses import replace

from idgen.core.losses import IdentityLossWeights
from idgen.world.pidiff import ALIGN, TAILOR, BranchRecipe
from tests import scripts


def load_script():
    return scripts.load_script("scripts/pidiff_recipes.py")


def test_the_shipped_recipe_is_the_committed_one_and_the_variants_differ_only_where_the_readme_says():
    recipes = load_script().RECIPES
    assert recipes["shipped"] == BranchRecipe()
    assert (ALIGN.train.steps, ALIGN.train.lr, TAILOR.train.steps, TAILOR.train.lr) == (1600, 2e-3, 600, 2e-4)
    assert BranchRecipe().stages == (ALIGN._replace(id_loss_weight=1.0), TAILOR._replace(id_loss_weight=1.0))
    pidiff_losses = recipes["pidiff-losses"]  # the recipe shipped before: PIDiff's losses alone
    assert pidiff_losses == BranchRecipe(stages=(ALIGN, TAILOR))
    assert recipes["align-lr-4e-3"].stages == (ALIGN._replace(train=replace(ALIGN.train, lr=4e-3)), TAILOR)
    before = recipes["align-lr-1e-3"]  # the one before that: stage I at half the learning rate
    assert before.stages == (ALIGN._replace(train=replace(ALIGN.train, lr=1e-3)), TAILOR)
    assert before._replace(stages=pidiff_losses.stages) == pidiff_losses
    assert ALIGN.weights == IdentityLossWeights(0.0, 0.0) and ALIGN.mapping and not TAILOR.mapping
    assert TAILOR.weights == IdentityLossWeights(2.0, 1.0)
    assert (ALIGN.face_loss_weight, TAILOR.face_loss_weight, ALIGN.id_loss_weight) == (4.0, 4.0, 0.0)
    short = recipes["two-stage-short"].stages
    assert short[1] == TAILOR and short[0] == ALIGN._replace(train=replace(ALIGN.train, steps=800, lr=5e-4))
    assert recipes["stage-one-only"].stages == short[:1]
    with_id = recipes["two-stage-short-id"].stages
    assert [s.id_loss_weight for s in with_id] == [1.0, 1.0]
    assert [s._replace(id_loss_weight=0.0) for s in with_id] == list(short)
    other = recipes["align-lr-1e-3-other-seeds"]
    assert (other.init_seed, [s.train.seed for s in other.stages], other.data_seed) == (26, [25, 27], 2)
    assert [s.train.lr for s in other.stages] == [1e-3, 2e-4]


def test_a_quick_recipe_keeps_each_stage_but_trains_3_steps_on_32_renders():
    script = load_script()
    fast = script.quick(BranchRecipe())
    assert fast.renders == 32 and [s.train.steps for s in fast.stages] == [3, 3]
    assert [s.train.seed for s in fast.stages] == [15, 17]
    committed = BranchRecipe().stages
    assert [s._replace(train=None) for s in fast.stages] == [s._replace(train=None) for s in committed]
