"""The README's demo-world gates blocks, regenerated from the committed gates summaries.

    python -m idgen.world.readme [--check] [--readme README.md]

Every block sits between two marker lines,

    <!-- generated: NAME -->
    ...
    <!-- end generated -->

and its text is a function of the summaries `BLOCKS` names for it: `docs/world-gates.json` (`make
world-gates`), `docs/world-gates-retrain.json` (`make world-gates-retrain`), `docs/world-gates-seed-1.json`
(`make world-gates-seed`), `docs/world-multi-gates.json` (`make world-multi-gates`) or
`docs/world-likeness-ceiling.json` (`make world-likeness-ceiling`), found beside the
README, not in the working directory; `world-seeds` sets the three one-person runs side by side. Each
README block is named once; every name of `BLOCKS` must be there. Without `--check` the stale blocks are
rewritten in place (atomically); with it, the first stale block is named and the exit status is 1. Bad
markers or a missing summary stop it before anything is written.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from idgen.errors import IdgenError
from idgen.io import atomic_write_text
from idgen.pipelines.names import NONE, SPATIAL, UNIFORM
from idgen.world import ceiling, gates, multi_gates

START = re.compile(r"<!-- generated: (?P<name>[a-z0-9-]+(?: [a-z0-9-]+)*) -->")
END = "<!-- end generated -->"
SUMMARIES = {
    "world-gates": "docs/world-gates.json",
    "world-gates-retrain": "docs/world-gates-retrain.json",  # the adapter retrained with other seeds
    "world-gates-seed-1": "docs/world-gates-seed-1.json",  # the whole world retrained with `--seed 1`
    "world-multi-gates": "docs/world-multi-gates.json",
    "world-likeness-ceiling": "docs/world-likeness-ceiling.json",  # the likeness, stage by stage
}
# The one-person gates (issue 16's targets), as `gates.summary_lines` states them.
SCENE_GATE, REDUCTION_GATE, DROP_GATE = 0.90, 0.40, 0.03
LIKENESS_TARGET = 0.80  # each of the five likeness attributes
AUTHORS = (gates.SPATIAL_PAPER, gates.SPATIAL_V1)  # the authors' code as published, beside the world's
MEAN = "transferred"  # the mean of the five likeness attributes, in a summary's attribute_transfer
# The README's several-people table: the modes at id weight 1 and the ceiling, three columns.
MULTI_MODES = tuple(m for m in multi_gates.MODES if m not in (multi_gates.SPATIAL_W2, multi_gates.SINGLE_W2))
MULTI_COLUMNS = ("assignment accuracy", "FaceSim, own reference", "bleed, other reference")


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _signed(v: Sequence[float], digits: int = 3) -> str:
    return f"{v[0]:+.{digits}f} ± {v[1]:.{digits}f}"


def _gate_rows(s: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(gate, target, measured, met) of each one-person gate."""
    scene, gain = s["scene_accuracy_none"][0], s["facesim_gain_uniform_vs_none"]
    leak, outside = s[f"contamination_{UNIFORM}"], s[f"{gates.OUTSIDE_FACE}_{UNIFORM}"]
    cut, drop = s[f"contamination_reduction_{SPATIAL}"], s[f"facesim_drop_{SPATIAL}_vs_{UNIFORM}"]
    outside_cut = s[f"{gates.OUTSIDE_FACE}_reduction_{SPATIAL}"]
    return [
        ("scene adherence of the base model", "≥ 90%", f"{scene * 100:.1f}%", scene >= SCENE_GATE),
        (
            "identity: FaceSim uniform above none",
            "clearly above",
            f"{_signed(gain)} (paired)",
            gain[0] > gain[1],
        ),
        (
            "contamination is real under uniform",
            "measurably > 0",
            f"{_signed(leak, 2)} RGB units on scene pixels ({_signed(outside, 2)} outside the faces)",
            leak[0] > leak[1],
        ),
        (
            "SpatialID: contamination ≥ 40% lower *and* FaceSim ≤ 0.03 lower",
            "both at once",
            f"{cut * 100:.1f}% lower on scene pixels ({outside_cut * 100:.1f}% outside the faces), "
            f"FaceSim {drop[0]:.3f} ± {drop[1]:.3f} lower",
            cut >= REDUCTION_GATE and drop[0] <= DROP_GATE,
        ),
    ]


def gate_table(s: dict[str, Any]) -> list[str]:
    """The one-person gates: target, measured, met; then the FaceSim half's slack, the authors' code as
    published under the same gate, and CLIP-T."""
    drop = s[f"facesim_drop_{SPATIAL}_vs_{UNIFORM}"]
    clip_t = {mode: f"{s[f'clip_t_{mode}'][0]:.3f}" for mode in (NONE, UNIFORM, SPATIAL)}
    slack = DROP_GATE - drop[0]
    return [
        "| gate | target | measured | |",
        "|---|---|---|---|",
        *(f"| {gate} | {target} | {measured} | {_met(ok)} |" for gate, target, measured, ok in _gate_rows(s)),
        "",
        f"- the FaceSim half is {'met' if slack >= 0 else 'missed'} by {abs(slack):.3f}; its interval "
        f"(± {drop[1]:.3f}) {'reaches past' if drop[0] + drop[1] > DROP_GATE else 'stays within'} 0.03",
        *(_authors_line(s, row) for row in AUTHORS),
        f"- CLIP-T: {clip_t[SPATIAL]} with SpatialID, {clip_t[UNIFORM]} with uniform injection, "
        f"{clip_t[NONE]} without identity",
    ]


def _authors_line(s: dict[str, Any], row: str) -> str:
    cut, drop = s[f"contamination_reduction_{row}"], s[f"facesim_drop_{row}_vs_{UNIFORM}"][0]
    return (
        f"- the authors' code as published (`{gates.LABELS[row]}`): {cut * 100:.1f}% less contamination on "
        f"scene pixels, FaceSim {drop:.3f} lower: {_met(cut >= REDUCTION_GATE and drop <= DROP_GATE)}"
    )


def _names(names: Sequence[str]) -> str:
    return ", ".join(names) or "none"


def _backdrop_groups(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-backdrop contamination groups that have pairs."""
    return {name: g for name, g in s["contamination_by_backdrop"].items() if g["pairs"]}


def _leaks_towards(groups: dict[str, dict[str, Any]]) -> list[str]:
    """The backdrops uniform injection clearly moves the scene towards: its interval above zero."""
    return [n for n, g in groups.items() if g[UNIFORM][0] > g[UNIFORM][1]]


def backdrop_lines(s: dict[str, Any]) -> list[str]:
    """The per-backdrop table, then which backdrops uniform injection clearly moves the scene towards (its
    interval above zero) or away from, and on how many of the first SpatialID and id weight 2 change it."""
    groups = _backdrop_groups(s)
    towards = _leaks_towards(groups)
    away = [n for n, g in groups.items() if g[UNIFORM][0] < -g[UNIFORM][1]]
    neither = [n for n in groups if n not in (*towards, *away)]
    lower = sum(groups[n][SPATIAL][0] < groups[n][UNIFORM][0] for n in towards)
    more = sum(groups[n][gates.UNIFORM_W2][0] > groups[n][UNIFORM][0] for n in towards)
    return [
        *gates.backdrop_table(s),
        "",
        f"- uniform moves the scene towards the backdrop (interval above zero): {_names(towards)}; "
        f"away from it (interval below zero): {_names(away)}; neither: {_names(neither)}",
        f"- of the {len(towards)} backdrops uniform moves towards: spatial moves less on {lower}, "
        f"uniform at id weight 2 more on {more}",
    ]


def modes_lines(s: dict[str, Any]) -> list[str]:
    """The modes table of `gates`, then its summary list."""
    return [*gates.modes_table(s), "", *gates.summary_lines(s)]


def _reached(group: dict[str, Any]) -> int:
    """How many of the five likeness attributes reach the target in one row of the attribute table."""
    return sum(group[n][0] >= LIKENESS_TARGET for n in gates.LIKENESS)


def attribute_lines(s: dict[str, Any]) -> list[str]:
    """The attribute block of `gates`, then how many of the five likeness attributes reach the target, per
    mode and, where the summary has it, through the VAE (the most a generator on it can show)."""
    transfer = s["attribute_transfer"]
    reached = [
        f"{gates.LABELS.get(mode, mode)} {_reached(g)} of 5"
        for mode in gates.BACKDROP_ROWS
        if (g := transfer.get(mode))
    ]
    ceiling = transfer.get(gates.RENDERED_VAE)
    return [
        *gates.attribute_lines(s),
        f"- likeness attributes at 80% or more (issue 16's target: all five): {'; '.join(reached)}",
        *(
            [f"- the same through the VAE, the generator's ceiling: {_reached(ceiling)} of 5"]
            if ceiling
            else []
        ),
    ]


# The runs the seeds table sets side by side: summary -> its column's head.
RUNS = {
    "world-gates": "shipped",
    "world-gates-retrain": "adapter retrained, other seeds",
    "world-gates-seed-1": "whole world retrained, `--seed 1`",
}


def _seed_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """(conclusion, one run's value) of each row of the seeds table."""
    gain, drop = s["facesim_gain_uniform_vs_none"], s[f"facesim_drop_{SPATIAL}_vs_{UNIFORM}"]
    groups = _backdrop_groups(s)
    cut, likeness = s[f"contamination_reduction_{SPATIAL}"], s["attribute_transfer"]
    return [
        ("scene adherence of the base model (≥ 90%)", f"{s['scene_accuracy_none'][0] * 100:.1f}%"),
        ("FaceSim, uniform above none (paired)", _signed(gain)),
        ("contamination under uniform, scene pixels (RGB units)", _signed(s[f"contamination_{UNIFORM}"], 2)),
        ("backdrops uniform clearly leaks towards", f"{len(_leaks_towards(groups))} of {len(groups)}"),
        ("SpatialID: contamination reduction (≥ 40%)", f"{cut * 100:.1f}%"),
        ("SpatialID: FaceSim drop (≤ 0.03)", f"{drop[0]:.3f} ± {drop[1]:.3f}"),
        (
            "likeness, mean of the five attributes, uniform (%)",
            gates.percent(likeness[UNIFORM][MEAN]),
        ),
        ("likeness, the same without identity (%)", gates.percent(likeness[NONE][MEAN])),
    ]


def seeds_table(*summaries: dict[str, Any]) -> list[str]:
    """The gates' conclusions of each run side by side, one column per run of RUNS."""
    columns = [_seed_rows(s) for s in summaries]
    return [
        "| conclusion | " + " | ".join(RUNS.values()) + " |",
        "|---|" + "---|" * len(RUNS),
        *(
            f"| {rows[0][0]} | " + " | ".join(value for _, value in rows) + " |"
            for rows in zip(*columns, strict=True)
        ),
    ]


# Block name -> (the summaries it is made from, the block's lines from them).
BLOCKS: dict[str, tuple[tuple[str, ...], Callable[..., list[str]]]] = {
    "world-gates modes": (("world-gates",), modes_lines),
    "world-gates backdrops": (("world-gates",), backdrop_lines),
    "world-gates attributes": (("world-gates",), attribute_lines),
    "world-gates gates": (("world-gates",), gate_table),
    "world-gates-retrain gates": (("world-gates-retrain",), gate_table),
    "world-gates-retrain backdrops": (("world-gates-retrain",), backdrop_lines),
    "world-gates-retrain attributes": (("world-gates-retrain",), attribute_lines),
    "world-gates-seed-1 modes": (("world-gates-seed-1",), modes_lines),
    "world-gates-seed-1 gates": (("world-gates-seed-1",), gate_table),
    "world-gates-seed-1 backdrops": (("world-gates-seed-1",), backdrop_lines),
    "world-gates-seed-1 attributes": (("world-gates-seed-1",), attribute_lines),
    "world-seeds": (tuple(RUNS), seeds_table),
    "world-multi-gates": (
        ("world-multi-gates",),
        lambda s: [
            *multi_gates.modes_table(s, MULTI_MODES, MULTI_COLUMNS),
            "",
            multi_gates.counts_line(s),
            *multi_gates.gate_lines(s),
        ],
    ),
    "world-likeness-ceiling": (("world-likeness-ceiling",), ceiling.readme_lines),
}


def _marker(line: str, where: str) -> str | None:
    """The block a start marker opens, END for an end marker, None for any other line."""
    if line == END:
        return END
    if match := START.fullmatch(line):
        if match["name"] not in BLOCKS:
            raise IdgenError(f"{where}: unknown block {match['name']!r}; known: {', '.join(BLOCKS)}")
        return match["name"]
    if "<!-- generated" in line or "<!-- end generated" in line:
        raise IdgenError(f"{where}: malformed marker {line.strip()!r}")
    return None


def _apply(
    marker: str, i: int, where: str, found: list[tuple[str, int, int]], opened: tuple[str, int] | None
) -> tuple[str, int] | None:
    """One marker at line index i: returns the block open after it; a closed block goes into `found`."""
    if marker != END:
        if opened is not None:
            raise IdgenError(f"{where}: block {marker!r} starts inside block {opened[0]!r}")
        if marker in (name for name, _, _ in found):
            raise IdgenError(f"{where}: block {marker!r} appears twice")
        return marker, i
    if opened is None:
        raise IdgenError(f"{where}: end marker without a start marker")
    found.append((*opened, i))
    return None


def find_blocks(lines: Sequence[str], readme: str) -> list[tuple[str, int, int]]:
    """(name, start marker's index, end marker's index) of every block, in order; checks that markers are
    balanced, each name comes once and every name of BLOCKS is there."""
    found: list[tuple[str, int, int]] = []
    opened: tuple[str, int] | None = None
    for i, line in enumerate(lines):
        where = f"{readme}:{i + 1}"
        if (marker := _marker(line, where)) is not None:
            opened = _apply(marker, i, where, found, opened)
    if opened is not None:
        raise IdgenError(f"{readme}:{opened[1] + 1}: block {opened[0]!r} has no end marker {END!r}")
    missing = [name for name in BLOCKS if name not in (f[0] for f in found)]
    if missing:
        raise IdgenError(f"{readme}: no block {missing[0]!r} (marker '<!-- generated: {missing[0]} -->')")
    return found


def load_summaries(root: Path) -> dict[str, dict[str, Any]]:
    """Every summary in SUMMARIES, read from `root`."""
    out = {}
    for key, relative in SUMMARIES.items():
        path = root / relative
        if not path.is_file():
            raise IdgenError(f"{path} not found; `make {key}` writes it")
        try:
            out[key] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise IdgenError(f"{path} is not JSON: {e}") from None
    return out


def block_lines(name: str, summaries: dict[str, dict[str, Any]], root: Path) -> list[str]:
    """A block's text between its markers: a blank line, its lines, a blank line."""
    keys, make = BLOCKS[name]
    try:
        return ["", *make(*(summaries[key] for key in keys)), ""]
    except (KeyError, IndexError, TypeError) as e:
        made_from = ", ".join(str(root / SUMMARIES[key]) for key in keys)
        raise IdgenError(f"block {name!r}: {made_from} lacks {e}") from None


def refresh(readme: Path) -> tuple[str, list[tuple[str, int]]]:
    """The README's text with every block regenerated, and the (name, line) of each block that changed."""
    if not readme.is_file():
        raise IdgenError(f"{readme} not found")
    text = readme.read_text(encoding="utf-8")
    lines = text.split("\n")
    spans = find_blocks(lines, readme.name)
    root = readme.resolve().parent
    summaries = load_summaries(root)
    out: list[str] = []
    stale: list[tuple[str, int]] = []
    last = 0
    for name, start, end in spans:
        new = block_lines(name, summaries, root)
        if lines[start + 1 : end] != new:
            stale.append((name, start + 1))
        out += [*lines[last : start + 1], *new]
        last = end
    return "\n".join([*out, *lines[last:]]), stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readme", type=Path, default=Path("README.md"), help="the README to refresh")
    parser.add_argument("--check", action="store_true", help="exit 1 if a block is stale; write nothing")
    args = parser.parse_args(argv)
    try:
        text, stale = refresh(args.readme)
    except IdgenError as e:
        print(f"idgen.world.readme: {e}", file=sys.stderr)
        return 2
    if args.check:
        if stale:
            name, line = stale[0]
            print(
                f"{args.readme}:{line}: block {name!r} is stale; `make world-readme` rewrites it",
                file=sys.stderr,
            )
            return 1
        print(f"{args.readme}: the {len(BLOCKS)} generated blocks are up to date")
        return 0
    if stale:
        atomic_write_text(args.readme, text)
    print(f"{args.readme}: {len(stale)} of {len(BLOCKS)} generated blocks rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
