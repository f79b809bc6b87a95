"""`idgen` command line: a thin layer over the Python API. Errors are one line and exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from idgen.errors import IdgenError
from idgen.pidiff.cli import add_edit, add_train_pidiff

EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("idgen", "torch", "diffusers", "transformers", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prior-box must be four numbers, got {text!r}") from None
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"--prior-box must be left,top,right,bottom in [0,1], got {text!r}")
    return box[0], box[1], box[2], box[3]


def add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate an image of the person in --id-image")
    p.add_argument("--prompt", required=True)
    p.add_argument("--id-image", help="photo of the person (needed unless --mode none)")
    p.add_argument("--mode", choices=["spatial", "uniform", "none"], default="spatial")
    p.add_argument("--id-weight", type=float, default=1.0)
    p.add_argument("--start-step", type=int, default=0)
    p.add_argument("--preset", default="v1", help="SpatialID schedule preset: v1 or balanced")
    p.add_argument("--early-threshold", type=float)
    p.add_argument("--late-threshold", type=float)
    p.add_argument("--prior-sigma", type=float)
    p.add_argument("--late-floor", type=float)
    p.add_argument("--global-floor", type=float)
    p.add_argument("--prior-box", type=parse_box, help="centre the prior on this face box: l,t,r,b in [0,1]")
    p.add_argument("--extractor", choices=["ca-norm", "entropy"], default="ca-norm", help="mask from the CA")
    p.add_argument(
        "--refiner",
        choices=["paper", "grid-scaled"],
        help="mask blur/dilation: the authors' constants in tokens (paper) or scaled to the token grid "
        "(grid-scaled); default: the model's (paper for FLUX, grid-scaled for the demo world)",
    )
    p.add_argument(
        "--anchor",
        choices=["centre", "attention"],
        help="centre of the early prior: the image centre (the authors') or the attention's peak; "
        "default: the model's (centre for FLUX, attention for the demo world)",
    )
    p.add_argument(
        "--min-spread",
        type=float,
        default=0.0,
        help="treat a mask as flat (zeros) when (max-min) < min_spread*max; 0 = reference min-max",
    )
    p.add_argument(
        "--mask-image",
        help="inject only where this picture is white (replaces the CA mask; the prior centres on it)",
    )
    p.add_argument("--true-cfg", type=float, help="true CFG scale, >1 enables (default: the model's)")
    p.add_argument("--negative-prompt")
    p.add_argument("--width", type=int, help="default: the model's (1024 for FLUX.1, 64 for the demo world)")
    p.add_argument("--height", type=int, help="default: the model's")
    p.add_argument("--steps", type=int, help="default: the model's (20)")
    p.add_argument("--guidance", type=float, help="distilled guidance (default: the model's)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-sequence-length", type=int, help="T5 tokens (default: the model's)")
    p.add_argument("--flux", help="FLUX folder, hub id, or tiny-random (default: the demo world)")
    p.add_argument("--pulid", help="PuLID-FLUX file, folder or hub id (default with --flux: guozinan/PuLID)")
    p.add_argument("--encoder", help="pulid or tiny-random (default with --flux: pulid)")
    p.add_argument(
        "--detector", choices=["none", "dlib"], default="none", help="face detector for tiny-random"
    )
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--world-adapter", choices=["pulid", "pidiff"], default="pulid",
                   help="demo world: PuLID's adapter or PIDiff's W+ branch")  # fmt: skip
    p.add_argument(
        "--out", default="outputs/idgen.png", help="PNG path; a .json sidecar is written beside it"
    )
    p.add_argument(
        "--mask-strip",
        action=argparse.BooleanOptionalAction,
        help="also write <out>.masks.png, the mask at every step (default: on for the demo world)",
    )
    p.add_argument("--mask-gif", action="store_true", help="also write <out>.masks.gif")
    p.add_argument(
        "--compare",
        action=argparse.BooleanOptionalAction,
        help="also write <out>.compare.png: reference | none | uniform | spatial (default: demo world)",
    )
    p.set_defaults(func=run_generate)


def scheduler_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ["early_threshold", "late_threshold", "prior_sigma", "late_floor", "global_floor", "prior_box"]
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def build_policy(args: argparse.Namespace, spatial: Any = None) -> tuple[Any, Any]:
    """The mask policy and the schedule the arguments ask for, starting from the model's SpatialMask
    `spatial` (None: the authors'). An explicit prior box (--prior-box, --mask-image) drops the anchor."""
    from idgen.core.gate import AttentionAnchor, SpatialMask
    from idgen.core.masks import AttentionEntropyExtractor, CANormExtractor, FixedMaskExtractor
    from idgen.core.refine import GridScaledRefiner, MaskRefiner
    from idgen.core.schedule import TemporalSpatialScheduler
    from idgen.pipelines.pulid_flux import mask_box, mask_policy, user_mask

    overrides = scheduler_overrides(args)
    extractor: Any = AttentionEntropyExtractor(min_spread=args.min_spread)
    if args.extractor == "ca-norm":
        extractor = CANormExtractor(min_spread=args.min_spread)
    if args.mask_image:
        if args.mode != "spatial":
            raise IdgenError("--mask-image needs --mode spatial")
        mask = user_mask(args.mask_image)
        box = mask_box(mask)
        if box is None:
            raise IdgenError(f"{args.mask_image}: the mask image is black everywhere")
        overrides.setdefault("prior_box", box)
        extractor = FixedMaskExtractor(mask)
    scheduler = TemporalSpatialScheduler.from_preset(args.preset, **overrides)
    spatial = spatial or SpatialMask(scheduler)
    replace = dataclasses.replace
    if args.refiner:
        spatial = replace(
            spatial, refiner=GridScaledRefiner() if args.refiner == "grid-scaled" else MaskRefiner()
        )
    if args.anchor:
        spatial = replace(spatial, anchor=AttentionAnchor() if args.anchor == "attention" else None)
    if "prior_box" in overrides:
        spatial = replace(spatial, anchor=None)
    policy = mask_policy(args.mode, scheduler=scheduler, extractor=extractor, spatial=spatial)
    return policy, scheduler


def load_pipeline(args: argparse.Namespace, device: str) -> Any:
    import torch

    import idgen

    if args.flux is None and args.pulid is None and args.encoder is None:
        if getattr(args, "world_adapter", "pulid") == "pidiff":
            from idgen.world.pidiff import load_pidiff_world

            return load_pidiff_world(device)
        from idgen.world.bundle import load_world

        return load_world(device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    encoder_kwargs: dict[str, Any] = {}
    if args.encoder == idgen.TINY_RANDOM and getattr(args, "detector", None) == "dlib":
        from idgen.identity.faces import DlibFaceDetector

        encoder_kwargs["detector"] = DlibFaceDetector()
    return idgen.load(
        args.flux or "black-forest-labs/FLUX.1-dev",
        args.pulid or "guozinan/PuLID",
        args.encoder or "pulid",
        device=device,
        torch_dtype=dtype,
        **encoder_kwargs,
    )


def warn_demo_prompt(prompt: str) -> None:
    from idgen.world.bundle import MAX_TEXT_TOKENS
    from idgen.world.tokenizer import unknown_words, words_past

    unknown = unknown_words(prompt)
    if unknown:
        print(f"idgen: warning: not in the demo world's vocabulary: {', '.join(unknown)}", file=sys.stderr)
    dropped = words_past(prompt, MAX_TEXT_TOKENS)
    if dropped:
        print(
            f"idgen: warning: the demo world's T5 reads {MAX_TEXT_TOKENS} tokens; "
            f"only CLIP sees: {' '.join(dropped)}",
            file=sys.stderr,
        )


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from idgen.io import atomic_save_image, atomic_write_text, load_image
    from idgen.pipelines.pulid_flux import check_generation_inputs
    from idgen.recording import MaskRecorder

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise IdgenError(f"--out must end in .png, got {out.name}")
    if args.mode != "none" and not args.id_image:
        raise IdgenError(f"--mode {args.mode} needs --id-image")
    demo = args.flux is None and args.pulid is None and args.encoder is None
    mask_strip = demo if args.mask_strip is None else args.mask_strip
    compare = demo if args.compare is None else args.compare
    if (args.mask_strip or args.mask_gif) and args.mode != "spatial":
        raise IdgenError("--mask-strip/--mask-gif need --mode spatial")
    wants_masks = (mask_strip or args.mask_gif) and args.mode == "spatial"
    # Everything that can be checked without the models is checked before they load.
    check_generation_inputs(
        args.prompt, args.id_weight, args.height or 1024, args.width or 1024, args.steps or 1
    )
    reference = load_image(args.id_image, what="id image") if args.mode != "none" else None
    build_policy(args)  # bad settings fail before the models load
    if demo:
        warn_demo_prompt(args.prompt)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    pipe = load_pipeline(args, device)
    loaded = time.perf_counter()
    policy, scheduler = build_policy(args, pipe.spatial)
    call = dict(
        id_weight=args.id_weight,
        start_step=args.start_step,
        true_cfg_scale=args.true_cfg,
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        max_sequence_length=args.max_sequence_length,
    )
    recorder = MaskRecorder(keep_ca_norm=False) if wants_masks else None
    id_image = args.id_image if args.mode != "none" else None
    result = pipe(args.prompt, id_image, mode=args.mode, policy=policy, recorder=recorder, **call)
    image = result.images[0]
    generated = time.perf_counter()
    atomic_save_image(image, out, format="PNG")
    written = [str(out)]
    if recorder is not None:
        from idgen.viz import mask_strip as strip_of
        from idgen.viz import save_mask_gif

        per_step = recorder.mean_mask_per_step()
        if mask_strip:
            strip_path = out.with_suffix(".masks.png")
            atomic_save_image(strip_of(image, per_step), strip_path, format="PNG")
            written.append(str(strip_path))
        if args.mask_gif:
            gif_path = out.with_suffix(".masks.gif")
            save_mask_gif(image, per_step, gif_path)
            written.append(str(gif_path))
    if compare and reference is not None:
        from idgen.viz import side_by_side

        panels = {"reference": reference}
        for mode in ("none", "uniform", "spatial"):
            if mode == args.mode:
                panels[mode] = image
            else:
                panels[mode] = pipe(
                    args.prompt, id_image, mode=mode, id_features=result.id_features, **call
                ).images[0]
        compare_path = out.with_suffix(".compare.png")
        atomic_save_image(side_by_side(panels, size=image.size), compare_path, format="PNG")
        written.append(str(compare_path))
    params = {k: v for k, v in vars(args).items() if k != "func"}
    sidecar = {
        "image": out.name,
        "model": "demo world" if demo else {"flux": args.flux, "pulid": args.pulid, "encoder": args.encoder},
        "parameters": params,
        "sampling": {k: v for k, v in pipe.defaults.items() if call.get(k) is None}
        | {k: v for k, v in call.items() if v is not None},
        "schedule": dataclasses.asdict(scheduler) if args.mode == "spatial" else None,
        "mask_policy": repr(policy) if args.mode == "spatial" else None,
        "seed": args.seed,
        "device": device,
        "dtype": str(next(pipe.flux.transformer.parameters()).dtype).removeprefix("torch."),
        "seconds": {"load": round(loaded - started, 3), "generate": round(generated - loaded, 3)},
        "versions": versions(),
    }
    sidecar_path = out.with_suffix(".json")
    atomic_write_text(sidecar_path, json.dumps(sidecar, indent=2, default=str) + "\n")
    written.append(str(sidecar_path))
    for path in written:
        print(path)
    return 0


# `idgen.world.build.STAGES`, spelled here so that building the parser does not import torch (a test
# keeps the two equal).
WORLD_STAGES = ("identity", "evaluators", "base", "adapter", "wplus", "pidiff")


def add_world(sub: Any) -> None:
    world = sub.add_parser("world", help="the demo world: render data, train every asset")
    commands = world.add_subparsers(dest="world_command", required=True, parser_class=ArgumentParser)
    r = commands.add_parser("render", help="render people in scenes with captions and exact face masks")
    r.add_argument("--out", required=True, help="folder for PNGs, masks and index.jsonl")
    r.add_argument("--count", type=int, default=16)
    r.add_argument("--split", choices=["train", "test"], default="train")
    r.add_argument("--references", action="store_true", help="render reference photos instead of scenes")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=run_world_render)
    t = commands.add_parser("train", help="reproduce every demo-world asset from scratch (resumable)")
    t.add_argument("--quick", action="store_true", help="a few steps of every stage (smoke test)")
    t.add_argument("--work", help="checkpoints and caches (default: outputs/world)")
    t.add_argument(
        "--assets", help="where the trained assets go (default: the package's, or <work>/assets with --quick)"
    )
    t.add_argument("--threads", type=int, default=1, help="CPU threads for training")
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

    if args.count < 1:
        raise IdgenError(f"--count must be >= 1, got {args.count}")
    out = Path(args.out)
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


def run_world_train(args: argparse.Namespace) -> int:
    import torch

    from idgen.world.build import ASSETS, STAGES, train_all

    torch.set_num_threads(args.threads)
    work = Path(args.work or ("outputs/world-quick" if args.quick else "outputs/world"))
    assets = Path(args.assets) if args.assets else (work / "assets" if args.quick else ASSETS)
    report = train_all(work, assets, quick=args.quick, stages=args.stage or STAGES)
    print(json.dumps(report, indent=2, default=str))
    return 0


def parse_shard(text: str) -> tuple[int, int]:
    index, slash, count = text.partition("/")
    try:
        if not slash:
            raise ValueError
        return int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must be i/n, got {text!r}") from None


def add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="the IBench protocol: generate, score and report (resumable, sharded)")
    p.add_argument("action", nargs="?", choices=["run", "report"], default="run",
                   help="run (default) or report (rebuild the report of --out)")  # fmt: skip
    p.add_argument("--benchmark", help="built-in benchmark: demo (100 pairs) or demo-quick (12 pairs)")
    p.add_argument("--photos", help="folder of identity photos (optional manifest.json with genders)")
    p.add_argument("--prompts", help="IBench prompts json, or a text file with one prompt per line")
    p.add_argument("--seed-policy", choices=["fixed", "per-prompt", "per-pair"], default="per-prompt")
    p.add_argument("--seed", type=int, default=42, help="base seed of the seed policy")
    p.add_argument("--methods", nargs="+", default=["uniform", "spatial"],
                   help="e.g. uniform spatial:preset=balanced,id_weight=0.8 (none always runs)")  # fmt: skip
    p.add_argument("--out", help="results folder (default: outputs/eval/<benchmark>)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard", type=parse_shard, help="i/n: this process's share (default: accelerate's)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("models under test (default: the embedded demo world)")
    g.add_argument("--flux", help="FLUX.1 pipeline folder or hub id")
    g.add_argument("--pulid", help="PuLID-FLUX checkpoint: file, folder or hub id")
    g.add_argument("--encoder", help="identity encoder: pulid (antelopev2 + EVA02-CLIP) or tiny-random")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--world-adapter", choices=["pulid", "pidiff"], default="pulid",
                   help="demo world: PuLID's adapter or PIDiff's W+ branch")  # fmt: skip
    m = p.add_argument_group("metric models (real models; the demo world uses its own evaluators)")
    m.add_argument("--clip-model", default="openai/clip-vit-large-patch14")
    m.add_argument("--face-model", default="antelopev2", help="antelopev2 (insightface) or dlib (offline)")
    m.add_argument("--face-root", help="insightface root holding models/antelopev2")
    m.add_argument("--aesthetic-head", help="LAION aesthetic linear head for CLIP ViT-L/14 (.pth)")
    m.add_argument("--iq", action="store_true", help="MUSIQ image quality through pyiqa")
    p.set_defaults(func=run_eval_command)


def run_eval_command(args: argparse.Namespace) -> int:
    import torch

    from idgen.eval.harness import (
        MetricOptions,
        evaluate,
        real_metric_models,
        resolve_benchmark,
        world_metric_models,
    )
    from idgen.eval.manifest import SeedPolicy, benchmark_from_record
    from idgen.eval.runner import FluxEvalGenerator, Method, Shard

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        raise IdgenError(f"--batch-size must be >= 1, got {args.batch_size}")
    world = args.flux is None and args.pulid is None and args.encoder is None
    if args.action == "report":
        from idgen.eval.report import write_report

        if not args.out:
            raise IdgenError("idgen eval report needs --out (a results folder)")
        out = Path(args.out)
        if not (out / "plan.json").is_file():
            raise IdgenError(f"no eval results in {out} (plan.json missing)")
        plan = json.loads((out / "plan.json").read_text())
        methods = [Method(m["mode"], m["id_weight"], m["preset"]) for m in plan["methods"]]
        write_report(out, benchmark_from_record(plan["benchmark"]), methods)
        print(out / "report.md")
        return 0
    methods = [Method.parse(spec) for spec in args.methods]
    out = Path(args.out or f"outputs/eval/{args.benchmark or Path(args.photos or 'photos').name}")
    benchmark = resolve_benchmark(
        args.benchmark, out, args.photos, args.prompts, SeedPolicy(args.seed_policy, args.seed)
    )
    if args.benchmark is not None and not world:
        raise IdgenError(
            "the built-in benchmarks are demo-world benchmarks; use --photos/--prompts with real models"
        )
    barrier = None
    if args.shard is not None:
        shard = Shard(*args.shard)
    else:
        shard = Shard.from_accelerate()
        if shard.count > 1:
            from accelerate import PartialState

            barrier = PartialState().wait_for_everyone
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if shard.count > 1 and device == "cuda":
        device = f"cuda:{shard.index % max(1, torch.cuda.device_count())}"
    if world:
        metric_factory: Any = world_metric_models
        face_model = "demo-world evaluator recogniser (not comparable to ArcFace)"
    else:
        options = MetricOptions(
            args.clip_model, args.face_model, args.face_root, args.aesthetic_head, args.iq, device
        )
        metric_factory = lambda: real_metric_models(options)  # noqa: E731
        face_model = (
            "dlib 128-d (offline; not comparable to ArcFace)"
            if args.face_model == "dlib"
            else args.face_model
        )
    run, summary = evaluate(
        out,
        benchmark,
        methods,
        lambda: FluxEvalGenerator(load_pipeline(args, device)),
        metric_factory,
        shard=shard,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        barrier=barrier,
        face_model=face_model,
    )
    for identity, why in run.problems.items():
        print(f"idgen: skipped identity {identity}: {why}", file=sys.stderr)
    for metric, why in run.skipped_metrics.items():
        print(f"idgen: skipped metric {metric}: {why}", file=sys.stderr)
    if run.pending_scores:
        print(f"idgen: {run.pending_scores} scores wait for other shards' no-id images; run again later",
              file=sys.stderr)  # fmt: skip
    print(f"generated {run.generated} images in {run.seconds_generating:.1f} s, scored {run.scored} in "
          f"{run.seconds_scoring:.1f} s")  # fmt: skip
    if summary is not None:
        print(out / "report.md")
    return 0


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="idgen", description="Identity-preserving text-to-image generation.")
    parser.add_argument("--version", action="version", version=versions()["idgen"])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    add_generate(sub)
    add_world(sub)
    add_eval(sub)
    add_train_pidiff(sub)
    add_edit(sub)
    return parser


def quiet_libraries() -> None:
    """Library warnings (dtype casts, torchvision fallbacks) would bury our one-line messages."""
    # Both libraries reset their loggers on import; their verbosity variables survive that.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        return int(args.func(args))
    except IdgenError as e:
        print(f"idgen: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("idgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
