"""`idgen world render` and `idgen world train`: the demo world's data and assets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from idgen import validation as check
from idgen.cli.common import ArgumentParser
from idgen.errors import IdgenError

# `idgen.world.build.STAGES`, spelled here so that building the parser does not import torch (a test
# keeps the two equal).
WORLD_STAGES = ("identity", "evaluators", "base", "two-people", "wplus", "pidiff", "adapter")


def add_world(sub: Any) -> None:
    world = sub.add_parser("world", help="the demo world: render data, train every asset")
    commands = world.add_subparsers(dest="world_command", required=True, parser_class=ArgumentParser)
    r = commands.add_parser("render", help="render people in scenes with captions and exact face masks")
    r.add_argument("--out", required=True, help="folder for PNGs, masks and index.jsonl")
    r.add_argument("--count", type=int, default=16)
    r.add_argument("--split", choices=["train", "test"], default="train")
    r.add_argument("--references", action="store_true", help="render reference photos instead of scenes")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--overwrite", action="store_true", help="replace renders in --out (default: refuse)")
    r.set_defaults(func=run_world_render)
    t = commands.add_parser("train", help="reproduce every demo-world asset from scratch (resumable)")
    t.add_argument("--quick", action="store_true", help="a few steps of every stage (smoke test)")
    t.add_argument("--work", help="checkpoints and caches (default: outputs/world, or outputs/world-quick; "
                   "with --seed K > 0: outputs/world-seed-K, or outputs/world-quick-seed-K); it records the "
                   "seed it was started with and is refused for another")  # fmt: skip
    t.add_argument("--assets", help="where the trained assets go (default: <work>/assets); the package's own "
                   "shipped assets are replaced only with --overwrite")  # fmt: skip
    t.add_argument(
        "--overwrite", action="store_true", help="allow --assets to be the package's shipped assets"
    )
    t.add_argument("--threads", type=int, default=1, help="CPU threads for training")
    t.add_argument("--seed", type=int, default=0, metavar="K",
                   help="retrain every generator-side stage (identity encoder, base, two-people, style "
                   "codec, W+ branch, adapter) with its recipe's K-th other seeds, K in [0, 1000] (default "
                   "0: the committed seeds), to check that a conclusion is not one seed's luck; the "
                   "evaluators keep their seeds, so two seeds' worlds are measured alike")  # fmt: skip
    t.add_argument("--adapter-seed", type=int, default=0, metavar="K",
                   help="train the identity adapter alone with its recipe's K-th other seeds (default 0: "
                   "the shipped recipe's); not with --seed K > 0, which reseeds the adapter too")  # fmt: skip
    t.add_argument(
        "--stage",
        nargs="+",
        metavar="STAGE",
        help=f"only these of {' '.join(WORLD_STAGES)} (default: all, in that order); "
        "a stage reads what earlier ones wrote to --assets",
    )
    t.set_defaults(func=run_world_train)


def run_world_render(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    from idgen.io import atomic_save_image, atomic_write_text
    from idgen.world.captions import caption, random_train_scene
    from idgen.world.render import render, render_reference, test_identities, train_identities

    out = check_render(args)
    people = train_identities() if args.split == "train" else test_identities()
    rng = np.random.default_rng([args.seed, 0x4E4])
    lines = []
    for i in tqdm(range(args.count), desc="render"):
        who = int(rng.integers(len(people)))
        if args.references:
            r, text = render_reference(people[who], seed=args.seed * 100_003 + i), None
        else:
            scene = random_train_scene(rng)
            r, text = render(people[who], scene, seed=args.seed * 100_003 + i), caption(scene, rng)
        name = f"{args.split}_{i:05d}"
        atomic_save_image(Image.fromarray(r.image), out / f"{name}.png")
        atomic_save_image(Image.fromarray(r.face_mask.astype(np.uint8) * 255), out / f"{name}.mask.png")
        entry = {
            "image": f"{name}.png",
            "mask": f"{name}.mask.png",
            "caption": text,
            "face_box": list(r.face_box),
        }
        lines.append(json.dumps({**entry, "identity": who, "split": args.split}))
    atomic_write_text(out / "index.jsonl", "\n".join(lines) + "\n")
    print(out / "index.jsonl")
    return 0


def check_render(args: argparse.Namespace) -> Path:
    check.integer("--count", args.count, low=1, high=1_000_000)
    check.seed("--seed", args.seed)
    out = check.output_folder(args.out, "--out")
    if not args.overwrite:
        check.output_file(out / "index.jsonl", "--out", overwrite=False)
        earlier = next(out.glob(f"{args.split}_*.png"), None) if out.is_dir() else None
        if earlier is not None:
            raise IdgenError(
                f"{check.shown(earlier)} exists; pass --overwrite to replace the renders in --out"
            )
    return out


def check_train(args: argparse.Namespace) -> tuple[Path, Path]:
    """(work, assets) folders; the shipped assets are never the default and need --overwrite."""
    from idgen.world.bundle import ASSETS

    check.integer("--threads", args.threads, low=1, high=1024)
    check_seeds(args.seed, args.adapter_seed)
    unknown = [s for s in args.stage or () if s not in WORLD_STAGES]
    if unknown:
        raise IdgenError(f"unknown stage {check.shown(unknown[0])!r} (stages: {', '.join(WORLD_STAGES)})")
    work = check.output_folder(args.work or default_work(args.quick, args.seed), "--work")
    check_work_seed(work, args.seed)
    assets = check.output_folder(args.assets or work / "assets", "--assets")
    if assets.resolve() == ASSETS.resolve() and not args.overwrite:
        shipped = check.shown(assets)
        raise IdgenError(
            f"--assets {shipped} holds the package's shipped assets; pass --overwrite to replace them"
        )
    return work, assets


def check_seeds(seed: int, adapter_seed: int) -> None:
    check.integer("--seed", seed, low=0, high=1000)
    check.integer("--adapter-seed", adapter_seed, low=0, high=1000)
    if seed and adapter_seed:
        raise IdgenError("pass --seed or --adapter-seed, not both (--seed K reseeds the adapter too)")


def default_work(quick: bool, seed: int) -> str:
    """outputs/world or outputs/world-quick, with -seed-K for a world seed K > 0."""
    folder = "outputs/world-quick" if quick else "outputs/world"
    return f"{folder}-seed-{seed}" if seed else folder


def check_work_seed(work: Path, seed: int) -> None:
    """Refuse a --work folder started with another --seed (its caches and checkpoints are that seed's)."""
    from idgen.world.build import work_seed

    started = work_seed(work)
    if started is not None and started != seed:
        shown = check.shown(work)
        raise IdgenError(
            f"--work {shown} was started with --seed {started}; pass another --work for --seed {seed}"
        )


def run_world_train(args: argparse.Namespace) -> int:
    import torch

    from idgen.io import folder_lock
    from idgen.world.build import STAGES, train_all
    from idgen.world.bundle import rebuilding

    work, assets = check_train(args)
    torch.set_num_threads(args.threads)
    with folder_lock(work, "world training run"), rebuilding(assets):
        report = train_all(
            work,
            assets,
            quick=args.quick,
            stages=args.stage or STAGES,
            adapter_seed=args.adapter_seed,
            seed=args.seed,
        )
    print(json.dumps(report, indent=2, default=str))
    return 0
