"""The identity adapter recipes that the README's "What limits the likeness" compares, rerun from scratch.

    python scripts/adapter_recipes.py --out outputs/adapter-recipes                  # all, validation pairs
    python scripts/adapter_recipes.py --out DIR --only lr-2e-3 --threads 2           # one

Each recipe retrains the `adapter` stage alone, on a copy of the shipped assets (so on the shipped base and
identity encoder), then `idgen.world.gates` scores it on the validation split (100 identities x 3 prompts,
never the held-out pairs). The row `shipped-weights` scores the shipped assets as they are. The recipes share
one cache of training pairs (they all draw it with the same seed). Every step is kept under `--out`, so a
killed run resumes. `--quick` trains 3 steps on 32 pairs and scores 1 prompt per identity, to check the
script itself. About 25 minutes of training and 10 of scoring per recipe on two threads of a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from idgen.world.build import QUICK_ADAPTER, AdapterRecipe

SHIPPED_WEIGHTS = "shipped-weights"
_BEFORE = AdapterRecipe()._replace(train=replace(AdapterRecipe().train, lr=5e-4))  # the recipe shipped before
RECIPES = {  # each changes one setting of the recipe shipped before; `lr-2e-3` is the committed one
    "lr-5e-4": _BEFORE,
    "no-id-loss": _BEFORE._replace(id_loss_weight=0.0),
    "id-loss-3": _BEFORE._replace(id_loss_weight=3.0),
    "lr-2e-3": AdapterRecipe(),
    "lr-8e-3": _BEFORE._replace(train=replace(_BEFORE.train, lr=8e-3)),
}
RECIPES["lr-2e-3-other-seeds"] = RECIPES["lr-2e-3"].reseeded(1)
# Cross-attentions with more room to tell people apart: twice and four times the heads, each of 32.
RECIPES["ca-heads-6"] = AdapterRecipe()._replace(ca_heads=6)
RECIPES["ca-heads-12"] = AdapterRecipe()._replace(ca_heads=12)
COLUMNS = {  # summary key -> column head
    "facesim_uniform": "FaceSim, uniform",
    "facesim_drop_spatial_vs_uniform": "FaceSim drop, spatial",
    "likeness_uniform": "mean of the five, uniform (%)",
    "likeness_uniform_w2": "the same at id weight 2 (%)",
    "contamination_uniform": "contamination, uniform",
    "contamination_reduction_spatial": "reduction, spatial",
}


def quick(recipe: AdapterRecipe) -> AdapterRecipe:
    """The same losses and pair mix at QUICK_ADAPTER's size (3 steps on 32 pairs), with the recipe's lr."""
    return recipe._replace(
        renders=QUICK_ADAPTER.renders, train=replace(QUICK_ADAPTER.train, lr=recipe.train.lr)
    )


def retrain(name: str, recipe: AdapterRecipe, out: Path) -> Path:
    """Copy the shipped assets into out/name, retrain the adapter there (resumable), return the copy."""
    from idgen.world.build import retrain_on_copy, train_adapter

    pairs = f"adapter-pairs-{recipe.data_seed}"
    shared = out / f"{pairs}-{recipe.renders}.pt"
    return retrain_on_copy(out / name, partial(train_adapter, recipe=recipe), f"{pairs}.pt", shared)


def scored(name: str, assets: Path, out: Path, per_identity: int) -> dict[str, Any]:
    """The validation gates of `assets`, kept in out/name/gates-validation.json (read back on a rerun)."""
    from idgen.io import atomic_write_text
    from idgen.world import gates

    path = out / name / "gates-validation.json"
    if path.is_file():
        return json.loads(path.read_text())
    summary = gates.run(per_identity=per_identity, assets=assets, split="validation")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
    return summary


def cell(summary: dict[str, Any], key: str) -> str:
    """One number of the table; a dash where a mode has no face to score."""
    if key.startswith("likeness_"):
        mode = summary["attribute_transfer"].get(key.removeprefix("likeness_"))
        return f"{100 * mode['transferred'][0]:.1f}" if mode else "–"
    if key not in summary:
        return "–"
    if key.startswith("contamination_reduction"):
        return f"{summary[key]:.1%}"
    mean, half = summary[key][:2]
    return f"{mean:.3f} ± {half:.3f}" if key.startswith("facesim") else f"{mean:.2f} ± {half:.2f}"


def table(summaries: dict[str, dict[str, Any]]) -> str:
    lines = ["| recipe | " + " | ".join(COLUMNS.values()) + " |", "|---|" + "---|" * len(COLUMNS)]
    for name, s in summaries.items():
        lines.append(f"| {name} | " + " | ".join(cell(s, key) for key in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = [SHIPPED_WEIGHTS, *RECIPES]
    parser.add_argument("--out", type=Path, required=True, help="one folder per recipe, kept for resuming")
    parser.add_argument("--only", nargs="+", choices=names, help="these rows (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 steps on 32 pairs, 1 prompt an identity")
    args = parser.parse_args()
    import torch

    from idgen.world import bundle

    torch.set_num_threads(args.threads)
    bundle.quiet_prompt_truncation()
    summaries = {}
    for name in args.only or names:
        if name == SHIPPED_WEIGHTS:
            assets = bundle.ASSETS
        else:
            assets = retrain(name, quick(RECIPES[name]) if args.quick else RECIPES[name], args.out)
        summaries[name] = scored(name, assets, args.out, 1 if args.quick else 3)
        print(table({name: summaries[name]}), flush=True)
    print(f"\n{table(summaries)}")


if __name__ == "__main__":
    main()
