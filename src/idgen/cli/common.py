"""What every `idgen` command shares: the one-line-error parser, boxes, model loading."""

from __future__ import annotations

import argparse
import math
from typing import Any, NoReturn

from idgen.errors import IdgenError
from idgen.pipelines.lowvram import NO_QUANTIZE, QUANTIZE_CHOICES
from idgen.pipelines.names import BACKBONES, DEFAULT_BACKBONE, NO_OFFLOAD, OFFLOADS, SD15_BACKBONE
from idgen.validation import shown

EXIT_FAILURE = 1  # an expected failure: bad input file, missing device, corrupt checkpoint, I/O
EXIT_USAGE = 2  # the command line itself is wrong (argparse's convention)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prior-box must be four numbers, got {shown(text)!r}") from None
    if not all(math.isfinite(v) for v in box):
        raise argparse.ArgumentTypeError(f"--prior-box must be four finite numbers, got {shown(text)!r}")
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"--prior-box must be left,top,right,bottom in [0,1], got {text!r}")
    return box[0], box[1], box[2], box[3]


def uses_demo_world(args: argparse.Namespace) -> bool:
    """The one place that decides it: no model argument means the embedded demo world."""
    return args.flux is None and args.pulid is None and args.encoder is None


def model_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling defaults of the model the arguments name, known before it loads: the demo world's,
    SD1.5's (at its own size) or FLUX's."""
    if getattr(args, "backbone", None) == SD15_BACKBONE:
        from idgen.pipelines.pidiff_sd15 import SD15_DEFAULTS, SD15_SIZE
        from idgen.pipelines.tiny import TINY_RANDOM, TINY_SD_SIZE

        side = TINY_SD_SIZE if args.flux == TINY_RANDOM else SD15_SIZE
        return {**SD15_DEFAULTS, "height": side, "width": side}
    if uses_demo_world(args):
        from idgen.world.bundle import WORLD_DEFAULTS

        return dict(WORLD_DEFAULTS)
    from idgen.pipelines.pulid_flux import FLUX_DEFAULTS

    return dict(FLUX_DEFAULTS)


def model_limits(args: argparse.Namespace) -> tuple[int, tuple[int, int], int]:
    """(pixel multiple, default (width, height), default steps) of the model the arguments name, known
    before it loads."""
    from idgen.validation import flux_pixel_multiple

    defaults = model_defaults(args)
    if getattr(args, "backbone", None) == SD15_BACKBONE:
        from idgen.pipelines.pidiff_sd15 import SD_PIXEL_MULTIPLE

        multiple = SD_PIXEL_MULTIPLE
    elif uses_demo_world(args):
        from idgen.world.bundle import ASSETS

        multiple = flux_pixel_multiple(ASSETS / "flux")
    else:
        from idgen.pipelines.pulid_flux import FLUX_PIXEL_MULTIPLE

        multiple = flux_pixel_multiple(args.flux, FLUX_PIXEL_MULTIPLE)
    return multiple, (int(defaults["width"]), int(defaults["height"])), int(defaults["num_inference_steps"])


def add_model_arguments(p: Any) -> None:
    """The model flags `idgen generate`, `eval` and `app` share (no model flag: the embedded demo world)."""
    p.add_argument("--backbone", choices=list(BACKBONES), default=DEFAULT_BACKBONE,
                   help="which identity pipeline the model flags build (default: %(default)s)")  # fmt: skip
    p.add_argument("--flux", "--base-model", dest="flux",
                   help="base model: FLUX folder or hub id (SD1.5 with --backbone sd15-wplus), or "
                        "tiny-random (default: the demo world)")  # fmt: skip
    p.add_argument("--pulid", "--adapter", dest="pulid",
                   help="identity adapter: PuLID-FLUX file, folder or hub id (default with --flux: "
                        "guozinan/PuLID), or the W+ adapter's folder for the W+ backbones")  # fmt: skip
    p.add_argument("--encoder", help="pulid or tiny-random (default with --flux: pulid)")
    p.add_argument(
        "--detector", choices=["none", "dlib"], default="none", help="face detector for tiny-random"
    )
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none",
                   help="store the FLUX transformer's weights quantised (README: low-VRAM)")  # fmt: skip
    p.add_argument("--transformer", metavar="FILE",
                   help="one FLUX transformer file in place of --base-model's: GGUF (e.g. "
                        "flux1-dev-Q4_K_S.gguf) or safetensors in diffusers', Black Forest Labs' or "
                        "ComfyUI's layout, fp8 files too (README: low-VRAM)")  # fmt: skip
    p.add_argument("--world-adapter", choices=["pulid", "pidiff"], default="pulid",
                   help="demo world: PuLID's adapter or PIDiff's W+ branch")  # fmt: skip
    p.add_argument("--offload", choices=OFFLOADS, default=NO_OFFLOAD,
                   help="diffusers' CPU offload for a GPU too small for the model: model (whole models "
                        "visit the GPU in turn), sequential (layer by layer: least memory, slowest) or "
                        "group (block by block); needs a GPU --device")  # fmt: skip
    p.add_argument("--threads", type=int,
                   help="CPU threads (default: 1 for the demo world, which then slows least on a "
                        "busy machine and gives the same bits on any core count; torch's own "
                        "otherwise)")  # fmt: skip


def model_record(args: argparse.Namespace) -> Any:
    """What a sidecar says of the model: "demo world", or the model flags given (beyond the three sources,
    only those that change the images: backbone, dtype, quantisation, transformer file)."""
    if uses_demo_world(args):
        return "demo world"
    record = {"flux": args.flux, "pulid": args.pulid, "encoder": args.encoder}
    given = {
        "backbone": args.backbone if args.backbone != DEFAULT_BACKBONE else None,
        "dtype": args.dtype,
        "quantize": args.quantize if args.quantize != NO_QUANTIZE else None,
        "transformer": args.transformer,
    }
    return record | {k: v for k, v in given.items() if v is not None}


def cpu_threads(args: argparse.Namespace) -> int | None:
    """--threads, else 1 for the demo world, else None (torch's default)."""
    if getattr(args, "threads", None) is not None:
        return int(args.threads)
    return 1 if uses_demo_world(args) else None


def hub_defaults(backbone: str) -> tuple[str | None, str | None]:
    """(base model, adapter) hub ids a backbone falls back to; only PuLID-FLUX's are published."""
    from idgen.models.loading import PULID_HUB_REPO
    from idgen.pipelines.pulid_flux import FLUX_HUB_REPO

    if backbone == DEFAULT_BACKBONE:
        return FLUX_HUB_REPO, PULID_HUB_REPO
    return (FLUX_HUB_REPO if backbone.startswith("flux") else None), None


def load_demo_world(args: argparse.Namespace, device: str) -> Any:
    """The embedded demo world, with PuLID's adapter or PIDiff's W+ branch (--world-adapter)."""
    if getattr(args, "transformer", None) is not None:
        raise IdgenError(
            "--transformer replaces a FLUX model's transformer: give --flux too (a FLUX folder or hub id)"
        )
    if getattr(args, "world_adapter", "pulid") == "pidiff":
        from idgen.world.pidiff import load_pidiff_world

        return load_pidiff_world(device)
    from idgen.world.bundle import load_world

    return load_world(device)


def encoder_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for the identity encoder: a dlib detector in front of the tiny random one."""
    from idgen.pipelines.tiny import TINY_RANDOM

    if args.encoder == TINY_RANDOM and getattr(args, "detector", None) == "dlib":
        from idgen.identity.faces import DlibFaceDetector

        return {"detector": DlibFaceDetector()}
    return {}


# Import-time chatter of optional packages that transformers and diffusers import when they are installed
# (torchao's kernels for other GPUs, torch's deprecation note on torchao's enums, bitsandbytes' optional
# CPU kernel from the Hub, which it does without, and that Hub client's offline note): nothing a user acts on.
QUIET_LOGGERS = (
    "torchao",
    "torch.utils._pytree",
    "bitsandbytes.backends.cpu.ops",
    "kernels._internals.hf_hub",
)


def quiet_loading() -> None:
    """diffusers' and transformers' per-component loading bars say nothing a user acts on; the sampling
    bar (diffusers' pipeline's own) stays."""
    import logging

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def load_pipeline(args: argparse.Namespace, device: str) -> Any:
    """The pipeline the model flags name; no model flag: the demo world."""
    import torch

    import idgen
    from idgen.api import check_offload, enable_offload
    from idgen.pipelines.lowvram import NO_QUANTIZE, check_quantize, quantize_pipeline

    offload = getattr(args, "offload", NO_OFFLOAD)
    backbone = getattr(args, "backbone", DEFAULT_BACKBONE)
    check_offload(offload, device, backbone)  # before anything loads
    quiet_loading()
    threads = cpu_threads(args)
    if threads is not None:
        torch.set_num_threads(threads)
    quantize = getattr(args, "quantize", NO_QUANTIZE)
    check_quantize(quantize, device, backbone)  # before any model loads
    if uses_demo_world(args):
        pipe = load_demo_world(args, "cpu" if offload != NO_OFFLOAD else device)
        quantize_pipeline(pipe, quantize)
        enable_offload(pipe, offload, device)
        return pipe
    base, adapter = hub_defaults(backbone)
    if (args.flux is None and base is None) or (args.pulid is None and adapter is None):
        raise IdgenError(f"--backbone {backbone} needs --base-model and --adapter (it has no hub default)")
    return idgen.load(
        args.flux or base,
        args.pulid or adapter,
        args.encoder or "pulid",
        backbone=backbone,
        device=device,
        torch_dtype=getattr(torch, args.dtype) if args.dtype else None,
        offload=offload,
        quantize=quantize,
        transformer=getattr(args, "transformer", None),
        **encoder_options(args),
    )
