"""`idgen generate`: arguments in, `idgen.generation.generate` called, files out."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from idgen import validation as check
from idgen.cli.common import (
    add_model_arguments,
    load_pipeline,
    model_defaults,
    model_limits,
    model_record,
    parse_box,
    uses_demo_world,
)
from idgen.errors import IdgenError
from idgen.generation import SCHEDULE_SETTINGS, GenerationRequest, MaskSettings, output_paths
from idgen.pipelines.names import (
    DEFAULT_PHOTO_COMBINATION,
    MODES,
    NEGATIVE_IDENTITIES,
    NONE,
    PHOTO_COMBINATIONS,
    SD15_BACKBONE,
    SPATIAL,
)

MAX_WARNED_WORDS = 20  # words listed in a demo-prompt warning; the rest are counted
MAX_IMAGES = 1000  # per command


def parse_seeds(text: str) -> list[int]:
    """--seeds "1,2,3" -> [1, 2, 3] (ranges are checked with the other numbers)."""
    try:
        return [int(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds must be whole numbers separated by commas, got {check.shown(text)!r}"
        ) from None


def image_seeds(args: argparse.Namespace) -> list[int]:
    """One seed per image: --seeds as given, else --seed, --seed + 1, ... for --num-images."""
    given = [seed for group in args.seeds or [] for seed in group]
    if given and args.num_images is not None and args.num_images != len(given):
        raise IdgenError(f"--seeds gives {len(given)} seeds but --num-images is {args.num_images}")
    check.integer("--num-images", args.num_images, low=1, high=MAX_IMAGES)
    check.integer("--seeds (count)", len(given), high=MAX_IMAGES)
    seeds = given or [args.seed + k for k in range(args.num_images or 1)]
    for seed in seeds:
        check.seed("--seeds" if given else "--seed", seed)
    return seeds


def image_outputs(out: Path, count: int) -> list[Path]:
    """Where each image goes: `out` for one image, else <stem>-0.png, <stem>-1.png, ... beside it."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{k}{out.suffix}") for k in range(count)]


def add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate an image of the person in --id-image")
    p.add_argument("--prompt", required=True)
    p.add_argument(
        "--id-image",
        action="append",
        help="photo of the person (needed unless --mode none); repeat it for several people in one image; "
        "several photos of one person: a1.jpg,a2.jpg",
    )
    p.add_argument(
        "--id-box",
        action="append",
        type=parse_id_box,
        help="where the person of the same --id-image goes: l,t,r,b in [0,1]; give one per --id-image "
        "(without boxes, the people stand left to right in --id-image order)",
    )
    p.add_argument(
        "--combine",
        choices=PHOTO_COMBINATIONS,
        help=f"how several photos of one person are joined (default: {DEFAULT_PHOTO_COMBINATION}; "
        "docs/multi-identity.md)",
    )
    p.add_argument(
        "--negative-identity",
        choices=NEGATIVE_IDENTITIES,
        help="several people with true CFG: each person's negative pass takes PuLID's uncond id tokens "
        "(uncond) or the other people's (others). Default: others in the spatial mode, where the people's "
        "masks compete; uncond in the uniform mode (docs/multi-identity.md)",
    )
    p.add_argument(
        "--bound-attention",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="several people with --id-box: keep each person's image tokens from attending to another "
        "person's box (default: off; docs/multi-identity.md)",
    )
    p.add_argument("--mode", choices=MODES, default=SPATIAL)
    p.add_argument("--id-weight", type=float, default=1.0)
    p.add_argument("--start-step", type=int, default=0, help="first step with the identity, in [0, steps-1]")
    add_mask_arguments(p)
    add_sampling_arguments(p)
    add_model_arguments(p)
    add_output_arguments(p)
    p.set_defaults(func=run_generate)


def add_mask_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset", help="SpatialID schedule preset: v1 or balanced (default: the model's own; v1 for FLUX)"
    )
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
    flat = "treat a mask as flat when (max-min) < min_spread*max; 0 = reference min-max"
    p.add_argument("--min-spread", type=float, default=0.0, help=flat)
    p.add_argument(
        "--mask-image",
        help="inject only where this picture is white (replaces the CA mask; the prior centres on it); "
        "it must have the image's aspect ratio",
    )


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--seed", type=int, default=42, help=f"in [0, {check.MAX_SEED}]; image k gets seed + k")
    p.add_argument("--num-images", type=int, help=f"images to generate, 1-{MAX_IMAGES} (default: 1, or one "
                   "per --seeds); several are written as <out>-0.png, <out>-1.png, ...")  # fmt: skip
    p.add_argument("--seeds", type=parse_seeds, action="append",
                   help="one image per seed: S1,S2,... (the flag may repeat); replaces --seed")  # fmt: skip
    p.add_argument("--max-sequence-length", type=int, help="T5 tokens, 1-512 (default: the model's)")


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", default="outputs/idgen.png", help="PNG path; a .json sidecar is written beside it"
    )
    p.add_argument("--overwrite", action="store_true", help="replace outputs that exist (default: refuse)")
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
    p.add_argument(
        "--compare-id-weight", type=float, action="append", default=[], metavar="W",
        help="add uniform and spatial at this id weight to the compare strip (repeatable)",
    )  # fmt: skip


def parse_id_box(text: str) -> tuple[float, float, float, float]:
    try:
        return parse_box(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(str(e).replace("--prior-box", "--id-box")) from None


def person_photos(value: str) -> tuple[str, ...]:
    """One --id-image value -> that person's photos: one file, or a comma-separated list of files (a path
    that exists is taken as it is, commas and all)."""
    if Path(value).exists() or "," not in value:
        return (value,)
    return tuple(part.strip() for part in value.split(",") if part.strip())


def identity_photos(args: argparse.Namespace) -> tuple[tuple[str, ...], ...] | None:
    """The people's photos when the arguments name several people, several photos or boxes; else None
    (one plain --id-image: today's single-identity path). Leaves a single --id-image as a plain string."""
    given = args.id_image
    values = [given] if isinstance(given, str) else list(given or [])
    args.id_image = values[0] if len(values) == 1 else (values or None)
    people = tuple(person_photos(v) for v in values)
    check_combine(args, people)
    check_negative_identity_flag(args, people)
    check_bound_attention_flag(args, people)
    if len(people) > 1 or any(len(p) > 1 for p in people) or getattr(args, "id_box", None):
        return people
    return None


def check_negative_identity_flag(args: argparse.Namespace, people: tuple[tuple[str, ...], ...]) -> None:
    """--negative-identity others only with two or more people and, where --true-cfg is given, true CFG."""
    if getattr(args, "negative_identity", None) != "others":
        return
    if len(people) < 2:
        raise IdgenError("--negative-identity others needs two or more people (repeat --id-image)")
    if args.true_cfg is not None and args.true_cfg <= 1:
        raise IdgenError("--negative-identity others steers true CFG's negative pass: give --true-cfg > 1")


def check_bound_attention_flag(args: argparse.Namespace, people: tuple[tuple[str, ...], ...]) -> None:
    """--bound-attention / --no-bound-attention only where it acts: two or more people, each with a box."""
    given = getattr(args, "bound_attention", None)
    if given is None:
        return
    flag = "--bound-attention" if given else "--no-bound-attention"
    if len(people) < 2 or not getattr(args, "id_box", None):
        raise IdgenError(f"{flag} acts on two or more people with their boxes (--id-image and --id-box each)")


def check_combine(args: argparse.Namespace, people: tuple[tuple[str, ...], ...]) -> None:
    """--combine only where one person has several photos."""
    if getattr(args, "combine", None) and not any(len(p) > 1 for p in people):
        raise IdgenError(
            "--combine joins several photos of one person (--id-image a1.jpg,a2.jpg): none given"
        )


def check_identities(args: argparse.Namespace, people: tuple[tuple[str, ...], ...]) -> None:
    """The several-people arguments that go together."""
    boxes = args.id_box or []
    if boxes and len(boxes) != len(people):
        raise IdgenError(f"got {len(boxes)} --id-box for {len(people)} --id-image; give one box per person")
    for flag, value in (("--mask-image", args.mask_image), ("--prior-box", args.prior_box)):
        if value is not None:
            raise IdgenError(f"{flag} is for one person; with several, use --id-box")
    for flag, given in (("--compare", args.compare), ("--compare-id-weight", args.compare_id_weight)):
        if given:
            raise IdgenError(f"{flag} shows one person; it cannot be used with several --id-image")


def mask_settings(args: argparse.Namespace) -> MaskSettings:
    schedule = {n: getattr(args, n) for n in SCHEDULE_SETTINGS if getattr(args, n) is not None}
    return MaskSettings(args.preset, schedule, args.extractor, args.min_spread, args.refiner, args.anchor,
                        args.mask_image)  # fmt: skip


def mask_pictures(args: argparse.Namespace) -> tuple[bool, bool]:
    """(mask strip, mask GIF) wanted; the strip is on by default for the demo world."""
    spatial = args.mode == SPATIAL
    strip = uses_demo_world(args) if args.mask_strip is None else args.mask_strip
    return strip and spatial, args.mask_gif and spatial


def generation_request(
    args: argparse.Namespace, demo: bool, people: tuple[tuple[str, ...], ...] | None = None
) -> GenerationRequest:
    """The request the arguments describe; `demo` turns the compare strip on by default (one person only)."""
    demo = demo and people is None
    return GenerationRequest(
        prompt=args.prompt,
        id_image=args.id_image if args.mode != NONE and people is None else None,
        mode=args.mode,
        mask=mask_settings(args),
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
        compare=(demo if args.compare is None else args.compare) and args.mode != NONE,
        compare_id_weights=tuple(args.compare_id_weight),
        record_masks=any(mask_pictures(args)),
        parameters=recorded_arguments(args),
        id_images=people,
        boxes=None if people is None or not args.id_box else tuple(args.id_box),
        combine=args.combine,
        negative_identity=args.negative_identity,
        bound_attention=args.bound_attention,
    )


def recorded_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as the sidecar keeps them; --id-box only when given, so one person's sidecar is as
    it was before several people existed."""
    several = ("id_box", "combine", "negative_identity", "bound_attention")
    unset = [k for k in several if getattr(args, k, None) in (None, [], "")]  # a False flag is kept
    return {k: v for k, v in vars(args).items() if k not in ("func", "debug", *unset)}


def check_numbers(args: argparse.Namespace, steps: int) -> None:
    check.finite("--id-weight", args.id_weight, low=0)
    for weight in args.compare_id_weight:
        check.finite("--compare-id-weight", weight, low=0)
    check.finite("--true-cfg", args.true_cfg, low=0)
    check.finite("--guidance", args.guidance, low=0)
    check.finite("--min-spread", args.min_spread, low=0, high=1)
    for name in SCHEDULE_SETTINGS[:-1]:
        check.finite("--" + name.replace("_", "-"), getattr(args, name))
    check.integer("--steps", args.steps, low=1, high=1000)
    check.integer("--threads", args.threads, low=1, high=1024)
    check.integer("--start-step", args.start_step, low=0, high=steps - 1)
    check.integer("--true-cfg-start-step", args.true_cfg_start_step, low=0, high=steps)
    check.integer("--max-sequence-length", args.max_sequence_length, low=1, high=512)
    check.seed("--seed", args.seed)


def check_combinations(args: argparse.Namespace) -> None:
    if Path(args.out).suffix.lower() != ".png":
        raise IdgenError(f"--out must end in .png, got {check.shown(Path(args.out).name)}")
    if args.mode != NONE and not args.id_image:
        raise IdgenError(f"--mode {args.mode} needs --id-image")
    if (args.mask_strip or args.mask_gif) and args.mode != SPATIAL:
        raise IdgenError("--mask-strip/--mask-gif need --mode spatial")
    if args.mask_image and args.mode != SPATIAL:
        raise IdgenError("--mask-image needs --mode spatial")


def check_flags_take_effect(args: argparse.Namespace) -> None:
    """Flags the run would silently drop are refused instead."""
    unused = mask_flags_given(args)
    if unused and args.mode != SPATIAL:  # the compare strip's spatial panel keeps the model's own settings
        what = "a SpatialID mask setting" if len(unused) == 1 else "SpatialID mask settings"
        raise IdgenError(f"{', '.join(unused)}: {what}, which --mode {args.mode} does not use")
    if args.mode == NONE and (args.compare or args.compare_id_weight):
        raise IdgenError("--compare and --compare-id-weight compare identity modes; --mode none injects none")
    check_true_cfg_flags(args)


def mask_flags_given(args: argparse.Namespace) -> list[str]:
    """The SpatialID mask flags the command line sets (away from their defaults)."""
    given = [
        name
        for name in ("preset", *SCHEDULE_SETTINGS, "refiner", "anchor")
        if getattr(args, name) is not None
    ]
    given += [
        name
        for name, default in (("extractor", "ca-norm"), ("min_spread", 0.0))
        if getattr(args, name) != default
    ]
    return ["--" + name.replace("_", "-") for name in given]


def check_true_cfg_flags(args: argparse.Namespace) -> None:
    """--negative-prompt and --true-cfg-start-step only where true CFG runs (FLUX drops them otherwise)."""
    scale = args.true_cfg if args.true_cfg is not None else model_defaults(args).get("true_cfg_scale", 1.0)
    sd15 = getattr(args, "backbone", None) == SD15_BACKBONE  # SD's own CFG takes a negative prompt
    values = {"--negative-prompt": None if sd15 else args.negative_prompt}
    values["--true-cfg-start-step"] = args.true_cfg_start_step
    flags = [flag for flag, value in values.items() if value is not None]
    if flags and scale <= 1.0:
        what = "a true CFG setting" if len(flags) == 1 else "true CFG settings"
        raise IdgenError(
            f"{', '.join(flags)}: {what}, but true CFG is off at {scale:g} (give --true-cfg > 1)"
        )


# The flags behind the FLUX-only keywords of a request.
FLUX_ONLY_FLAGS = {
    "true_cfg_scale": "--true-cfg",
    "true_cfg_start_step": "--true-cfg-start-step",
    "max_sequence_length": "--max-sequence-length",
    "id_images": "several people or photos (repeated --id-image, a1,a2)",
    "boxes": "--id-box",
    "combine": "--combine",
    "negative_identity": "--negative-identity",
    "bound_attention": "--bound-attention",
}


def check_sd15_request(request: GenerationRequest) -> None:
    """The SD1.5 backbone's refusal of FLUX-only arguments (`check_sd15_arguments`), by their flags, before
    any model loads."""
    from idgen.pipelines.pidiff_sd15 import flux_only_arguments, flux_only_refusal

    given = flux_only_arguments(request.sampling() | dataclasses.asdict(request))
    if given:
        flags = [FLUX_ONLY_FLAGS.get(name, name) for name in given]  # masks have no flag
        raise IdgenError(flux_only_refusal(flags, f"--backbone {SD15_BACKBONE}"))


def check_generate(args: argparse.Namespace) -> list[GenerationRequest]:
    """Every check that needs no model, in the order a user would fix them; one request per image."""
    from idgen.generation import build_policy
    from idgen.pipelines.pulid_flux import check_generation_inputs

    people = identity_photos(args)
    check_combinations(args)
    check_flags_take_effect(args)
    multiple, default_size, default_steps = model_limits(args)
    check_numbers(args, args.steps or default_steps)
    seeds = image_seeds(args)
    size = check.image_size(args.width, args.height, default_size, multiple)
    check_generation_inputs(args.prompt, args.id_weight, size[1], size[0], args.steps or 1, multiple)
    request = generation_request(args, uses_demo_world(args), people)
    if getattr(args, "backbone", None) == SD15_BACKBONE:
        check_sd15_request(request)
    inputs = [*check_photos(args, request, people, size, multiple), args.mask_image]
    if args.mask_image:
        check.mask_image_size(args.mask_image, size)
    build_policy(args.mode, request.mask)  # a bad schedule or mask fails before the models load
    for out in image_outputs(Path(args.out), len(seeds)):
        for path in output_paths(out, request.compare, *mask_pictures(args)).values():
            what = "--out" if path == Path(args.out) else "output"
            check.output_file(path, what, inputs=inputs, overwrite=args.overwrite)
    return [dataclasses.replace(request, seed=seed) for seed in seeds]


def check_photos(
    args: argparse.Namespace,
    request: GenerationRequest,
    people: tuple[tuple[str, ...], ...] | None,
    size: tuple[int, int],
    multiple: int,
) -> list[str]:
    """The photos the request uses, each read once; for several people also the library's own checks
    (how many fit, the boxes), before any model loads."""
    from idgen.io import load_image
    from idgen.pipelines.multi import check_identities as check_library

    if people is None:
        photos = [] if request.id_image is None else [str(request.id_image)]
    else:
        check_identities(args, people)
        photos = [photo for person in people for photo in person] if args.mode != NONE else []
    if people is not None and photos:
        grid = (size[1] // multiple, size[0] // multiple)
        check_library(None, [list(p) for p in people], None, args.id_weight, args.id_box, None, grid)
    for photo in photos:
        load_image(photo, what="id image")
    return photos


def warn_demo_prompt(prompt: str) -> None:
    from idgen.world.bundle import MAX_TEXT_TOKENS
    from idgen.world.tokenizer import warn_unknown, with_subject, words_past

    warn_unknown(prompt)  # before the models load; the world's tokenizer drops those words, warning once
    dropped = words_past(with_subject(prompt), MAX_TEXT_TOKENS)
    if dropped:
        print(f"idgen: warning: the demo world's T5 reads {MAX_TEXT_TOKENS} tokens; only CLIP sees: "
              f"{listed(dropped, ' ')}", file=sys.stderr)  # fmt: skip


def warn_demo_size(width: int | None, height: int | None) -> None:
    """A size far from the demo world's usually means a real-weights command without --flux."""
    from idgen.world.bundle import WORLD_DEFAULTS

    own: dict[str, Any] = dict(WORLD_DEFAULTS)
    own_width, own_height = int(own["width"]), int(own["height"])
    side = max(own_width, own_height)
    if max(width or 0, height or 0) > 2 * side:
        size = f"{width or own_width}x{height or own_height}"
        print(f"idgen: warning: this is the demo world, trained at {side}x{side}, not {size}; "
              "real FLUX needs --flux (e.g. black-forest-labs/FLUX.1-dev)", file=sys.stderr)  # fmt: skip


def listed(words: list[str], sep: str = ", ") -> str:
    """At most MAX_WARNED_WORDS words, each shown safely, and how many more there are."""
    text = sep.join(check.shown(w, 40) for w in words[:MAX_WARNED_WORDS])
    more = len(words) - MAX_WARNED_WORDS
    return check.shown(text + (f" (and {more} more)" if more > 0 else ""), 400)


def run_generate(args: argparse.Namespace) -> int:
    from idgen.generation import generate

    requests = check_generate(args)
    demo = uses_demo_world(args)
    device = check.device(args.device)
    if demo:
        warn_demo_prompt(args.prompt)
        warn_demo_size(args.width, args.height)
    started = time.perf_counter()
    pipe = load_pipeline(args, device)
    loaded = round(time.perf_counter() - started, 3)
    model = model_record(args)
    strip, gif = mask_pictures(args)
    for request, out in zip(requests, image_outputs(Path(args.out), len(requests)), strict=True):
        result = generate(pipe, request, model=model)
        result.sidecar["seconds"] = {"load": loaded, **result.sidecar["seconds"]}
        for path in result.save(out, overwrite=args.overwrite, mask_strip=strip, mask_gif=gif):
            print(path)
    return 0
