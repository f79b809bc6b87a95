"""`idgen` command line: a thin layer over the Python API.

Usage errors exit 2 (argparse's convention); every expected failure is one line `idgen: error: ...` and
exit 1; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
import warnings

from idgen.cli.app import add_app
from idgen.cli.common import EXIT_FAILURE, ArgumentParser
from idgen.cli.doctor import add_doctor
from idgen.cli.eval import add_eval
from idgen.cli.generate import add_generate
from idgen.cli.pidiff import add_edit, add_train_pidiff
from idgen.cli.world import add_world
from idgen.errors import IdgenError
from idgen.generation import versions
from idgen.validation import shown

# torch's refusal of a pickle goes on to explain how to load it anyway; idgen never does.
PICKLE_REFUSAL = "Weights only load failed"
PICKLE_MESSAGE = (
    "it holds pickled Python objects, which idgen never loads (use .safetensors or plain tensors)"
)
EXPECTED = (IdgenError, OSError, RuntimeError, ValueError, MemoryError, pickle.UnpicklingError)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="idgen", description="Identity-preserving text-to-image generation.")
    parser.add_argument("--version", action="version", version=versions()["idgen"])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    add_generate(sub)
    add_world(sub)
    add_eval(sub)
    add_train_pidiff(sub)
    add_edit(sub)
    add_doctor(sub)
    add_app(sub)
    return parser


def quiet_libraries() -> None:
    """Library warnings (dtype casts, torchvision fallbacks, deprecations) would bury our one-line
    messages; idgen's own warnings (`idgen: warning: ...`) are printed, not raised."""
    # Both libraries reset their loggers on import; their verbosity variables survive that.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for category in (UserWarning, FutureWarning, DeprecationWarning, RuntimeWarning):
        warnings.filterwarnings(
            "ignore", category=category, module=r"(torch|diffusers|transformers|PIL|numpy)"
        )
    warnings.filterwarnings("ignore", message=r".*(deprecated|will be removed|TypedStorage).*")


def one_line_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
    """Warnings that get through (idgen's own, e.g. "no face found") as one `idgen: warning:` line."""
    lines = str(message).strip().splitlines()
    return f"idgen: warning: {shown(lines[0] if lines else category.__name__)}\n"


def message(error: BaseException) -> str:
    """One line for `error`: its first line, control characters escaped, long values cut."""
    text = str(error).strip() or type(error).__name__
    if PICKLE_REFUSAL in text:
        before = text.split(PICKLE_REFUSAL)[0]
        return shown(before + PICKLE_MESSAGE + ")" * (before.count("(") - before.count(")")), 400)
    if isinstance(error, OSError) and error.filename is not None:
        text = f"{error.strerror or text}: {error.filename}"
    first = text.splitlines()[0]
    if not isinstance(error, (IdgenError, OSError)):
        first = f"{type(error).__name__}: {first}"
    if not isinstance(error, EXPECTED):
        first += " (unexpected: --debug shows the traceback; please report it)"
    return shown(first, 400)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    saved, warnings.formatwarning = warnings.formatwarning, one_line_warning
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("idgen: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the boundary: one line, or the traceback with --debug
        if args.debug:
            traceback.print_exc()
        print(f"idgen: error: {message(e)}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        warnings.formatwarning = saved


if __name__ == "__main__":
    sys.exit(main())
