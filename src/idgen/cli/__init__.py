"""`idgen` command line: a thin layer over the Python API. Errors are one line and exit 2."""

from __future__ import annotations

import os
import sys

from idgen.cli.app import add_app
from idgen.cli.common import EXIT_USAGE, ArgumentParser, versions
from idgen.cli.eval import add_eval
from idgen.cli.generate import add_generate
from idgen.cli.pidiff import add_edit, add_train_pidiff
from idgen.cli.world import add_world
from idgen.errors import IdgenError


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="idgen", description="Identity-preserving text-to-image generation.")
    parser.add_argument("--version", action="version", version=versions()["idgen"])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    add_generate(sub)
    add_world(sub)
    add_eval(sub)
    add_train_pidiff(sub)
    add_edit(sub)
    add_app(sub)
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
