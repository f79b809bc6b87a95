"""The W+ branch recipes that the README's "How the recipe was chosen" compares, rerun from scratch.

    python scripts/pidiff_recipes.py --out outputs/pidiff-recipes                      # all, validation pairs
    python scripts/pidiff_recipes.py --out DIR --only shipped --benchmark demo         # one, held-out pairs

Each recipe retrains the `pidiff` stage alone, on a copy of the shipped assets (so on the shipped base),
then `idgen.world.pidiff.compare` scores both branches on the benchmark. The recipes share one cache of
training renders (they all draw it with the same seed). `--quick` runs 3 steps a stage on `demo-quick`,
to check the script itself. The row "the branch shipped before" is the older commit's own weights:
`python -m idgen.world.pidiff --assets <that commit's src/idgen/world/assets>`.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from functools import partial
from pathlib import Path

from idgen.world.pidiff import ALIGN, QUICK_BRANCH, TAILOR, BranchRecipe

SHORT_ALIGN = ALIGN._replace(train=replace(ALIGN.train, steps=800, lr=5e-4))
# The recipe shipped before: stage I at lr 1e-3.
ALIGN_1E3 = BranchRecipe(stages=(ALIGN._replace(train=replace(ALIGN.train, lr=1e-3)), TAILOR))
RECIPES = {
    "stage-one-only": BranchRecipe(stages=(SHORT_ALIGN,)),
    "two-stage-short": BranchRecipe(stages=(SHORT_ALIGN, TAILOR)),
    "two-stage-short-id": BranchRecipe(
        stages=(SHORT_ALIGN._replace(id_loss_weight=1.0), TAILOR._replace(id_loss_weight=1.0))
    ),
    "align-lr-1e-3": ALIGN_1E3,
    "align-lr-1e-3-other-seeds": ALIGN_1E3.reseeded(1)._replace(data_seed=ALIGN_1E3.data_seed),
    "pidiff-losses": BranchRecipe(stages=(ALIGN, TAILOR)),  # the recipe shipped before: PIDiff's losses alone
    "align-lr-4e-3": BranchRecipe(stages=(ALIGN._replace(train=replace(ALIGN.train, lr=4e-3)), TAILOR)),
    "shipped": BranchRecipe(),  # `pidiff-losses` with PuLID's ID term in both stages
}


def quick(recipe: BranchRecipe) -> BranchRecipe:
    """The same stages and losses at 3 steps each, on QUICK_BRANCH's renders."""
    stages = tuple(
        s._replace(train=replace(QUICK_BRANCH.stages[0].train, seed=s.train.seed)) for s in recipe.stages
    )
    return recipe._replace(renders=QUICK_BRANCH.renders, stages=stages)


def retrain(name: str, recipe: BranchRecipe, out: Path) -> Path:
    """Copy the shipped assets into out/name, retrain the W+ branch there (resumable), return the copy."""
    from idgen.world.build import retrain_on_copy
    from idgen.world.pidiff import train_pidiff_branch

    shared = out / f"pidiff-data-{recipe.data_seed}-{recipe.renders}.pt"
    return retrain_on_copy(out / name, partial(train_pidiff_branch, recipe=recipe), "pidiff-data.pt", shared)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="one folder per recipe, kept for resuming")
    parser.add_argument("--only", nargs="+", choices=sorted(RECIPES), help="these recipes (default: all)")
    parser.add_argument("--benchmark", default="demo-validation", choices=["demo", "demo-validation"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 steps a stage on demo-quick (a smoke test)")
    args = parser.parse_args()
    import torch

    from idgen.world.bundle import quiet_prompt_truncation
    from idgen.world.pidiff import compare

    torch.set_num_threads(args.threads)
    quiet_prompt_truncation()
    benchmark = "demo-quick" if args.quick else args.benchmark
    for name in args.only or RECIPES:
        recipe = quick(RECIPES[name]) if args.quick else RECIPES[name]
        assets = retrain(name, recipe, args.out)
        table = compare(args.out / name / f"eval-{benchmark}", benchmark, args.threads, assets)
        print(f"## {name}\n\n{table}\n")


if __name__ == "__main__":
    main()
