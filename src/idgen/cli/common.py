"""What every `idgen` command shares: the one-line-error parser, versions, boxes, model loading."""

from __future__ import annotations

import argparse
import platform
from importlib import metadata
from typing import Any, NoReturn

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
