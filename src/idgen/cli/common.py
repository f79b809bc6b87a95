"""What every `idgen` command shares: the one-line-error parser, versions, boxes, model loading."""

from __future__ import annotations

import argparse
import math
import platform
from importlib import metadata
from typing import Any, NoReturn

from idgen.validation import shown

EXIT_FAILURE = 1  # an expected failure: bad input file, missing device, corrupt checkpoint, I/O
EXIT_USAGE = 2  # the command line itself is wrong (argparse's convention)


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
        raise argparse.ArgumentTypeError(f"--prior-box must be four numbers, got {shown(text)!r}") from None
    if not all(math.isfinite(v) for v in box):
        raise argparse.ArgumentTypeError(f"--prior-box must be four finite numbers, got {shown(text)!r}")
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"--prior-box must be left,top,right,bottom in [0,1], got {text!r}")
    return box[0], box[1], box[2], box[3]


def uses_demo_world(args: argparse.Namespace) -> bool:
    """The one place that decides it: no model argument means the embedded demo world."""
    return args.flux is None and args.pulid is None and args.encoder is None


def model_limits(args: argparse.Namespace) -> tuple[int, tuple[int, int], int]:
    """(pixel multiple, default (width, height), default steps) of the model the arguments name, known
    before it loads."""
    from idgen.validation import flux_pixel_multiple

    defaults: dict[str, Any]
    if uses_demo_world(args):
        from idgen.world.bundle import ASSETS, WORLD_DEFAULTS

        defaults = dict(WORLD_DEFAULTS)
        multiple = flux_pixel_multiple(ASSETS / "flux")
    else:
        from idgen.pipelines.pulid_flux import FLUX_DEFAULTS, FLUX_PIXEL_MULTIPLE

        defaults = FLUX_DEFAULTS
        multiple = flux_pixel_multiple(args.flux, FLUX_PIXEL_MULTIPLE)
    return multiple, (int(defaults["width"]), int(defaults["height"])), int(defaults["num_inference_steps"])


def load_pipeline(args: argparse.Namespace, device: str) -> Any:
    import torch

    import idgen

    if uses_demo_world(args):
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
