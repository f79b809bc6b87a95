"""`idgen app`: the web app on the model `idgen generate` would load, loaded once."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from idgen.cli.common import add_model_arguments, load_pipeline, model_record, uses_demo_world
from idgen.cli.generate import listed
from idgen.errors import IdgenError

# The demo world's shipped examples: reference photo, prompt, mode, a label and what to look at.
DEMO_EXAMPLES = [
    ("test_000.png", "a person in a snowy forest at night, wearing a red shirt", "spatial", "snowy night",
     "the compare strip: how much of the photo (face, hair, backdrop) each mode carries into the scene"),
    ("test_003.png", "a half-body photo of a person on a beach, wearing a blue shirt", "spatial", "beach",
     "the mask animation: where the identity is injected at each step, from the early prior to the face"),
    ("test_005.png", "a close-up photo of a person in a library", "uniform", "library, uniform",
     "uniform mode: the identity is injected over the whole image; compare it with the spatial panel"),
]  # fmt: skip


def add_app(sub: Any) -> None:
    p = sub.add_parser("app", help="start the web app (http://127.0.0.1:7860 by default)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the app to the network"
    )
    p.add_argument("--port", type=int, default=7860, help="port (0: the first free port from 7860)")
    add_model_arguments(p)  # the same model flags as `idgen generate`
    p.set_defaults(func=run_app)


def demo_examples() -> list[Any]:
    from idgen.app.page import Example
    from idgen.world.bundle import ASSETS

    folder = ASSETS / "references"
    return [
        Example(folder / name, prompt, mode, label, caption)
        for name, prompt, mode, label, caption in DEMO_EXAMPLES
    ]


def demo_warnings(prompt: str) -> list[str]:
    from idgen.world.bundle import MAX_TEXT_TOKENS
    from idgen.world.tokenizer import dropped_note, with_subject, words_past

    out = []
    note = dropped_note(prompt)
    if note:
        out.append(note)
    dropped = words_past(with_subject(prompt), MAX_TEXT_TOKENS)
    if dropped:
        out.append(
            f"the demo world's T5 reads {MAX_TEXT_TOKENS} tokens; only CLIP sees: {listed(dropped, ' ')}"
        )
    return out


def run_app(args: argparse.Namespace) -> int:
    from idgen.app import check_address, import_gradio, start
    from idgen.validation import device as checked_device

    if not 0 <= args.port <= 65535:
        raise IdgenError(f"--port must be in [0, 65535], got {args.port}")
    check_address(args.host, args.port or None)
    import_gradio()  # a missing extra fails before the model loads
    demo = uses_demo_world(args)
    pipe = load_pipeline(args, checked_device(args.device))
    record = model_record(args)
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
