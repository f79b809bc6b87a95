"""`idgen train pidiff` and `idgen edit`: argparse builders for build_parser's `sub`.

Heavy imports (torch, diffusers) happen inside the run functions so `idgen --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from idgen import validation as check
from idgen.errors import IdgenError


def _subcommands(sub: Any, name: str, help_text: str) -> Any:
    """The sub-subparsers of command `name`, creating the command if nobody has yet."""
    parser = sub.choices.get(name)
    if parser is None:
        parser = sub.add_parser(name, help=help_text)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest=f"{name}_command", required=True, parser_class=type(parser))


def add_train_pidiff(sub: Any) -> None:
    commands = _subcommands(sub, "train", "train adapters")
    p = commands.add_parser("pidiff", help="PIDiff identity-tailored fine-tuning of a W+ adapter on SD1.5")
    p.add_argument("--data", required=True, help="folder with metadata.jsonl (see docs/pidiff.md)")
    p.add_argument("--out", required=True, help="output folder: checkpoint.pt, log.jsonl, adapter/")
    p.add_argument("--model", required=True, help="SD1.5 diffusers folder or hub id")
    p.add_argument("--adapter", help="W+ adapter to start from (default: a fresh one)")
    p.add_argument("--mode", choices=["general", "identity"], default="general")
    p.add_argument("--stage", choices=["stage1", "stage2"], default="stage2", help="general mode only")
    p.add_argument(
        "--train-mapping",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also train F_w (default: only in stage1)",
    )
    p.add_argument("--steps", type=int, help="default 1000 (general) or 200 (identity)")
    p.add_argument("--batch-size", type=int, help="per process (default 4, identity 1)")
    p.add_argument("--lr", type=float)
    p.add_argument("--resolution", type=int)
    p.add_argument("--num-layers", type=int, help="W+ layers (default 18)")
    p.add_argument("--w-dim", type=int, help="W+ width (default 512)")
    p.add_argument("--disentangle", type=float, help="lambda_d (default 2.0)")
    p.add_argument("--preserve", type=float, help="lambda_p (default 1.0)")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="GPU only")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train_pidiff)


def check_train_pidiff(args: argparse.Namespace) -> None:
    for name in ("lr", "disentangle", "preserve"):
        check.finite(f"--{name}", getattr(args, name), low=0)
    for name in ("steps", "batch_size", "resolution", "num_layers", "w_dim", "checkpoint_every", "log_every"):
        check.integer("--" + name.replace("_", "-"), getattr(args, name), low=1)
    check.seed("--seed", args.seed)
    data = Path(args.data)
    if not data.is_dir():
        raise IdgenError(f"--data must be a folder with metadata.jsonl: {check.shown(data)}")
    check.input_file(data / "metadata.jsonl", "--data's metadata.jsonl")
    check.output_folder(args.out, "--out")


def run_train_pidiff(args: argparse.Namespace) -> int:
    from idgen.models.wplus import load_wplus_adapter
    from idgen.pidiff.train import PIDiffTrainConfig, train_pidiff, with_overrides

    check_train_pidiff(args)
    identity = args.mode == "identity"
    base = PIDiffTrainConfig(mode=args.mode, stage=args.stage, steps=200 if identity else 1000,
                             batch_size=1 if identity else 4)  # fmt: skip
    config = with_overrides(
        base,
        train_mapping=args.train_mapping,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        resolution=args.resolution,
        num_layers=args.num_layers,
        w_dim=args.w_dim,
        disentangle=args.disentangle,
        preserve=args.preserve,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        progress=False if args.no_progress else None,
    )
    adapter = load_wplus_adapter(args.adapter) if args.adapter else None
    result = train_pidiff(config, args.model, adapter, args.data, args.out)
    print(json.dumps(result))
    return 0


def add_edit(sub: Any) -> None:
    p = sub.add_parser("edit", help="edit a W+ identity code: swap/mix layers, add a direction")
    p.add_argument("code", help="W+ code: .safetensors (tensor 'w_plus') or .npy")
    p.add_argument("--out", required=True, help="edited code (.safetensors or .npy), written atomically")
    p.add_argument("--other", help="second code for --swap / --mix")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--swap", metavar="LAYERS", help="copy these layers from --other: coarse, fine, all, 0-3,8"
    )
    group.add_argument("--mix", metavar="LAYERS", help="interpolate these layers towards --other by --alpha")
    p.add_argument("--direction", help="edit direction file: (D,) or W+-shaped, .safetensors or .npy")
    p.add_argument("--layers", help="layers the direction is added to (default: all)")
    p.add_argument("--alpha", type=float, help="mix amount (default 0.5) or direction strength (default 1)")
    p.add_argument("--num-layers", type=int, default=18)
    p.add_argument("--w-dim", type=int, default=512)
    gen = p.add_argument_group("optional image of the edited code")
    gen.add_argument("--image", help="also generate this .png with --model and --adapter")
    gen.add_argument("--model", help="SD1.5 diffusers folder or hub id")
    gen.add_argument("--adapter", help="W+ adapter folder or file")
    gen.add_argument("--prompt", default="a photo of a person")
    gen.add_argument("--steps", type=int, default=30)
    gen.add_argument("--guidance", type=float, default=7.5)
    gen.add_argument("--id-weight", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--device", help="default: cuda if available")
    p.add_argument("--overwrite", action="store_true", help="replace --out / --image if they exist")
    p.set_defaults(func=run_edit)


def check_edit_options(args: argparse.Namespace) -> str | None:
    """The layers of --swap/--mix; refuses combinations that do not make one edit."""
    layers: str | None = args.swap or args.mix
    refusals = [
        (layers is not None and not args.other, f"--{'swap' if args.swap else 'mix'} needs --other CODE"),
        (args.other and layers is None, "--other needs --swap LAYERS or --mix LAYERS"),
        (
            args.layers and not args.direction,
            "--layers selects the layers of --direction; give --direction FILE",
        ),
        (args.mix and args.direction, "--mix and --direction would share --alpha; run two edits"),
        (
            layers is None and not args.direction,
            "nothing to edit: give --swap/--mix with --other, or --direction",
        ),
    ]
    for refused, why in refusals:
        if refused:
            raise IdgenError(why)
    return layers


def build_edit(args: argparse.Namespace) -> Any:
    """The WPlusEdit the arguments ask for; every option error before any file is read twice."""
    from idgen.pidiff.edit import WPlusEdit, check_layers, read_direction, read_w_plus

    L, D = args.num_layers, args.w_dim
    layers = check_edit_options(args)
    if layers is not None:
        check_layers(layers, L, "--swap" if args.swap else "--mix")
    direction_layers = check_layers(args.layers or "all", L, "--layers")
    mix_alpha = 1.0 if args.swap else (0.5 if args.alpha is None else args.alpha)
    return WPlusEdit(
        other=read_w_plus(args.other, L, D, what="--other code") if args.other else None,
        mix_layers=layers,
        mix_alpha=mix_alpha,
        direction=read_direction(args.direction, L, D) if args.direction else None,
        direction_layers=direction_layers,
        direction_alpha=1.0 if args.alpha is None else args.alpha,
    )


def check_edit(args: argparse.Namespace) -> Path:
    """Numbers, inputs and outputs of `idgen edit`, before any file is read."""
    check.finite("--alpha", args.alpha)
    check.finite("--guidance", args.guidance, low=0)
    check.finite("--id-weight", args.id_weight, low=0)
    check.integer("--num-layers", args.num_layers, low=1, high=1024)
    check.integer("--w-dim", args.w_dim, low=1, high=65536)
    check.integer("--steps", args.steps, low=1, high=1000)
    check.seed("--seed", args.seed)
    check_edit_options(args)
    inputs = [args.code, args.other, args.direction]
    for path, what in zip(inputs, ("W+ code", "--other code", "edit direction"), strict=True):
        if path is not None:
            check.input_file(path, what)
    out = Path(args.out)
    if out.suffix not in (".safetensors", ".npy"):
        raise IdgenError(f"--out must end in .safetensors or .npy, got {check.shown(out.name)}")
    check.output_file(out, "--out", inputs=inputs, overwrite=args.overwrite)
    if args.image:
        if not (args.model and args.adapter):
            raise IdgenError("--image needs --model and --adapter")
        if Path(args.image).suffix.lower() != ".png":
            raise IdgenError(f"--image must end in .png, got {check.shown(Path(args.image).name)}")
        if Path(args.image) == out:
            raise IdgenError("--image and --out are the same file")
        check.output_file(args.image, "--image", inputs=inputs, overwrite=args.overwrite)
        check.device(args.device)
    return out


def run_edit(args: argparse.Namespace) -> int:
    from idgen.pidiff.edit import apply_edit, read_w_plus, write_w_plus

    out = check_edit(args)
    edit = build_edit(args)
    w = read_w_plus(args.code, args.num_layers, args.w_dim)  # (L, D)
    edited = apply_edit(w, edit, args.num_layers, args.w_dim)
    print(write_w_plus(out, edited))
    if args.image:
        print(generate_image(args, edited))
    return 0


def generate_image(args: argparse.Namespace, w: Any) -> Path:
    from idgen.io import atomic_save_image
    from idgen.models.wplus import load_wplus_adapter
    from idgen.pidiff.edit import generate_with_code
    from idgen.pidiff.train import load_sd_pipeline

    device = check.device(args.device)
    pipe = load_sd_pipeline(args.model).to(device)
    adapter = load_wplus_adapter(args.adapter, device=device, dtype=pipe.unet.dtype)
    image = generate_with_code(
        pipe,
        adapter,
        w,
        args.prompt,
        seed=args.seed,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        id_weight=args.id_weight,
    )
    atomic_save_image(image, args.image)
    return Path(args.image)
