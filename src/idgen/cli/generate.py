"""`idgen generate`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from idgen.cli.common import load_pipeline, parse_box, versions
from idgen.errors import IdgenError


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
    p.add_argument(
        "--true-cfg-start-step",
        type=int,
        help="first step whose negative pass counts (default: the model's; 1 as in PuLID-FLUX)",
    )
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
        true_cfg_start_step=args.true_cfg_start_step,
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
