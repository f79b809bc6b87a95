"""`idgen doctor`: which weight files and packages a run needs, found or missing, and how to get them."""

from __future__ import annotations

import argparse
from typing import Any

from idgen.models.sources import PATHS, WEIGHTS

EXIT_NOT_READY = 1


def add_doctor(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="list the weight files each run needs: where idgen looks, found or missing, how to get them",
    )
    p.add_argument(
        "--path",
        choices=["world", *PATHS, "all"],
        default="world",
        help="the run to check (default: the demo world); exits 1 when it cannot run",
    )
    g = p.add_argument_group("other locations (as given to the run itself; nothing is downloaded)")
    for flag, keys in _flags().items():
        names = ", ".join(dict.fromkeys(WEIGHTS[k].what for k in keys))  # once each, in order
        g.add_argument(flag, metavar="PATH", help=f"{names}: a file, folder or hub id")
    p.set_defaults(func=run_doctor)


def _flags() -> dict[str, list[str]]:
    """Option -> the table keys it locates (--facexlib-dir locates both facexlib files)."""
    flags: dict[str, list[str]] = {}
    for source in WEIGHTS.values():
        if source.flag:
            flags.setdefault(source.flag, []).append(source.key)
    return flags


def run_doctor(args: argparse.Namespace) -> int:
    from idgen.doctor import Section, check_manifest, check_path, format_sections

    overrides = {
        key: getattr(args, flag.lstrip("-").replace("-", "_"))
        for flag, keys in _flags().items()
        for key in keys
    }
    paths = [*PATHS] if args.path == "all" else [] if args.path == "world" else [args.path]
    sections = [check_path(path, overrides) for path in paths]
    if args.path in ("world", "all"):
        from idgen.doctor import TITLES
        from idgen.world.bundle import ASSETS

        sections.insert(0, Section("world", TITLES["world"], check_manifest(ASSETS)))
    print(format_sections(sections), end="")
    if args.path == "world":
        print("Real weights: idgen doctor --path pulid | pidiff | eval | all")
    return 0 if all(s.ok for s in sections) else EXIT_NOT_READY
