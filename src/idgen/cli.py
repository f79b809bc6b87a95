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
        "--min-spread",
        type=float,
        default=0.0,
        help="treat a mask as flat (zeros) when (max-min) < min_spread*max; 0 = reference min-max",
    )
    p.add_argument(
        "--mask-image",
        help="inject only where this picture is white (replaces the CA mask; the prior centres on it)",
    )
    p.add_argument(
        "--true-cfg", type=float, default=1.0, help="true CFG scale (>1 enables; uses --negative-prompt)"
    )
    p.add_argument("--negative-prompt")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0, help="distilled guidance")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-sequence-length", type=int, default=128)
    p.add_argument(
        "--flux", default="black-forest-labs/FLUX.1-dev", help="FLUX folder, hub id, or tiny-random"
    )
    p.add_argument(
        "--pulid", default="guozinan/PuLID", help="PuLID-FLUX file, folder, hub id, or tiny-random"
    )
    p.add_argument("--encoder", default="pulid", help="pulid or tiny-random")
    p.add_argument(
        "--detector", choices=["none", "dlib"], default="none", help="face detector for tiny-random"
    )
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument(
        "--out", default="outputs/idgen.png", help="PNG path; a .json sidecar is written beside it"
    )
    p.add_argument("--mask-strip", action="store_true", help="also write <out>.masks.png (mask per step)")
    p.add_argument("--mask-gif", action="store_true", help="also write <out>.masks.gif")
    p.set_defaults(func=run_generate)


def scheduler_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ["early_threshold", "late_threshold", "prior_sigma", "late_floor", "global_floor", "prior_box"]
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def run_generate(args: argparse.Namespace) -> int:
    import torch

    import idgen
    from idgen.core.masks import AttentionEntropyExtractor, CANormExtractor, FixedMaskExtractor
    from idgen.core.schedule import TemporalSpatialScheduler
    from idgen.io import atomic_save_image, atomic_write_text, load_image
    from idgen.pipelines.pulid_flux import check_generation_inputs, mask_box, mask_policy, user_mask
    from idgen.recording import MaskRecorder

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise IdgenError(f"--out must end in .png, got {out.name}")
    if args.mode != "none" and not args.id_image:
        raise IdgenError(f"--mode {args.mode} needs --id-image")
    wants_masks = args.mask_strip or args.mask_gif
    if wants_masks and args.mode != "spatial":
        raise IdgenError("--mask-strip/--mask-gif need --mode spatial")
    # Everything that can be checked without the models is checked before they load.
    check_generation_inputs(args.prompt, args.id_weight, args.height, args.width, args.steps)
    if args.mode != "none":
        load_image(args.id_image, what="id image")  # fail before the models load
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
    policy = mask_policy(args.mode, scheduler=scheduler, extractor=extractor)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    encoder_kwargs: dict[str, Any] = {}
    if args.encoder == idgen.TINY_RANDOM and args.detector == "dlib":
        from idgen.identity.faces import DlibFaceDetector

        encoder_kwargs["detector"] = DlibFaceDetector()
    started = time.perf_counter()
    pipe = idgen.load(args.flux, args.pulid, args.encoder, device=device, torch_dtype=dtype, **encoder_kwargs)
    recorder = MaskRecorder(keep_ca_norm=False) if wants_masks else None
    result = pipe(
        args.prompt,
        args.id_image if args.mode != "none" else None,
        mode=args.mode,
        policy=policy,
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
        recorder=recorder,
    )
    image = result.images[0]
    atomic_save_image(image, out, format="PNG")
    written = [str(out)]
    if recorder is not None:
        from idgen.viz import mask_strip, save_mask_gif

        per_step = recorder.mean_mask_per_step()
        if args.mask_strip:
            strip_path = out.with_suffix(".masks.png")
            atomic_save_image(mask_strip(image, per_step), strip_path, format="PNG")
            written.append(str(strip_path))
        if args.mask_gif:
            gif_path = out.with_suffix(".masks.gif")
            save_mask_gif(image, per_step, gif_path)
            written.append(str(gif_path))
    params = {k: v for k, v in vars(args).items() if k != "func"}
    sidecar = {
        "image": out.name,
        "parameters": params,
        "schedule": dataclasses.asdict(scheduler) if args.mode == "spatial" else None,
        "seed": args.seed,
        "device": device,
        "dtype": str(next(pipe.flux.transformer.parameters()).dtype).removeprefix("torch."),
        "seconds": round(time.perf_counter() - started, 3),
        "versions": versions(),
    }
    sidecar_path = out.with_suffix(".json")
    atomic_write_text(sidecar_path, json.dumps(sidecar, indent=2, default=str) + "\n")
    written.append(str(sidecar_path))
    for path in written:
        print(path)
    return 0


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="idgen", description="Identity-preserving text-to-image generation.")
    parser.add_argument("--version", action="version", version=versions()["idgen"])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    add_generate(sub)
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
