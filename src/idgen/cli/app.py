"""`idgen app`: the web app on the model `idgen generate` would load, loaded once."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from idgen.cli.common import load_pipeline
from idgen.errors import IdgenError

# The demo world's shipped examples: reference photo, prompt, mode, and what to look at.
DEMO_EXAMPLES = [
    ("test_000.png", "a person in a snowy forest at night, wearing a red shirt", "spatial",
     "spatial: the face is the photo's, the snowy night is the prompt's; in the compare strip, uniform "
     "drags the photo's backdrop along"),
    ("test_003.png", "a half-body photo of a person on a beach, wearing a blue shirt", "spatial",
     "the mask animation: from the whole image to the face as the steps go on"),
    ("test_005.png", "a close-up photo of a person in a library", "uniform",
     "uniform: identity everywhere; compare its backdrop with the spatial panel"),
]  # fmt: skip


def add_app(sub: Any) -> None:
    p = sub.add_parser("app", help="start the web app (http://127.0.0.1:7860 by default)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the app to the network")
    p.add_argument("--port", type=int, default=7860, help="port (0: any free port)")
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
    p.set_defaults(func=run_app)


def demo_examples() -> list[Any]:
    from idgen.app.page import Example
    from idgen.world.bundle import ASSETS

    folder = ASSETS / "references"
    return [Example(folder / name, prompt, mode, caption) for name, prompt, mode, caption in DEMO_EXAMPLES]


def demo_warnings(prompt: str) -> list[str]:
    from idgen.world.bundle import MAX_TEXT_TOKENS
    from idgen.world.tokenizer import unknown_words, words_past

    out = []
    unknown = unknown_words(prompt)
    if unknown:
        out.append(f"not in the demo world's vocabulary: {', '.join(unknown)}")
    dropped = words_past(prompt, MAX_TEXT_TOKENS)
    if dropped:
        out.append(f"the demo world's T5 reads {MAX_TEXT_TOKENS} tokens; only CLIP sees: {' '.join(dropped)}")
    return out


def run_app(args: argparse.Namespace) -> int:
    import torch

    from idgen.app import import_gradio, start

    if not 0 <= args.port <= 65535:
        raise IdgenError(f"--port must be in [0, 65535], got {args.port}")
    import_gradio()  # a missing extra fails before the model loads
    demo = args.flux is None and args.pulid is None and args.encoder is None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(args, device)
    record = "demo world" if demo else {"flux": args.flux, "pulid": args.pulid, "encoder": args.encoder}
    app = start(
        pipe, record=record, host=args.host, port=args.port or None, compare_by_default=demo,
        examples=demo_examples() if demo else None, warnings=demo_warnings if demo else None,
    )  # fmt: skip
    print(f"idgen app: {app.url} (Ctrl+C stops it)", file=sys.stderr)
    signal.signal(signal.SIGTERM, stop_on_signal)  # a service manager's stop cleans up like Ctrl+C
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("idgen app: stopped", file=sys.stderr)
    finally:
        app.stop()
    return 0


def stop_on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
