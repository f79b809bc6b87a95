"""The gates' contamination on scene pixels: the renderer's person region, and the per-backdrop summary."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from idgen.world.backgrounds import BACKDROP_NAMES
from idgen.world.bundle import NUM_REFERENCES
from idgen.world.gates import OUTSIDE_FACE, ROWS, by_backdrop, demo_pick, pairs, summarise, table
from idgen.world.render import BACKGROUND, Scene, person_region, render, render_reference, test_identities


@pytest.mark.parametrize(("framing", "position", "scene_pixels"), [(0, 1, 1037), (1, 2, 2120)])
def test_the_person_region_holds_every_held_out_person(
    framing: int, position: int, scene_pixels: int
) -> None:
    region = person_region(framing, position)
    assert region.shape == (64, 64) and not region.flags.writeable
    assert int((~region).sum()) == scene_pixels
    for k, person in enumerate(test_identities()):
        scene = Scene(
            background=k % 12, clothing_colour=k % 10, lighting=k % 5, framing=framing, position=position
        )
        labels = render(person, scene, seed=50_000 + k).labels
        assert not (labels != BACKGROUND)[~region].any()  # hair, neck, clothes: all inside
    with pytest.raises(ValueError, match="framing"):
        person_region(2, 0)


def _row(backdrop: str, uniform: float, spatial: float, outside: float) -> dict:
    row: dict = {
        "backdrop": backdrop,
        "scene_correct": True,
        "face_px_none": 100,
        "face_px_outside_person_region": 1,
    }
    for mode in ROWS:
        row |= {f"clip_t_{mode}": 0.7, f"face_{mode}": True, f"facesim_{mode}": 0.1}
        if mode != "none":
            row |= {f"contamination_{mode}": spatial, f"{OUTSIDE_FACE}_{mode}": outside / 2}
    row |= {"contamination_uniform": uniform, f"{OUTSIDE_FACE}_uniform": outside, "facesim_uniform": 0.3}
    row |= {"contamination_uniform_w2": 2 * uniform, "facesim_uniform_w2": 0.2}
    return row


def test_contamination_is_summarised_per_backdrop_colour() -> None:
    rows = [_row("cyan", 4.0, 1.0, 6.0), _row("cyan", 8.0, 3.0, 2.0), _row("lime", -1.0, 0.5, 1.0)]
    groups = by_backdrop(rows)
    assert list(groups) == list(BACKDROP_NAMES) and len(groups) == 10
    cyan = groups["cyan"]
    assert cyan["pairs"] == 2 and cyan["uniform"][:1] == (6.0,) and cyan["spatial"][0] == 2.0
    assert cyan["uniform"][1] == pytest.approx(1.96 * math.sqrt(8.0) / math.sqrt(2))
    assert cyan[f"{OUTSIDE_FACE}_uniform"][0] == 4.0
    assert groups["lime"]["pairs"] == 1 and math.isnan(groups["lime"]["uniform"][1])
    assert groups["crimson"]["pairs"] == 0
    s = summarise(rows)
    assert s["contamination_uniform"][0] == pytest.approx(11 / 3)
    assert s["contamination_reduction_spatial"] == pytest.approx(1 - (4.5 / 3) / (11 / 3))
    assert s[f"{OUTSIDE_FACE}_reduction_spatial"] == pytest.approx(1 - (4.5 / 3) / 3)
    assert s["face_px_outside_person_region"] == pytest.approx(0.01)
    text = table(s)
    assert "| cyan | 2 | 6.00 ± 3.92 | 2.00 ± 1.96 | 12.00 ± 7.84 | 2.00 ± 1.96 | 4.00 ± 3.92 |" in text
    assert "| crimson | 0 | – | – | – | – | – |" in text
    assert s["contamination_reduction_spatial_w2"] == pytest.approx(1 - (4.5 / 3) / (22 / 3))
    assert s["facesim_drop_spatial_w2_vs_uniform_w2"][0] == pytest.approx(0.1)
    assert s["facesim_gain_uniform_w2_vs_none"][0] == pytest.approx(0.1)


def test_no_contamination_to_reduce_is_undefined() -> None:
    s = summarise([_row("cyan", -2.0, 1.0, -1.0), _row("lime", 0.0, 1.0, -1.0)])
    assert math.isnan(s["contamination_reduction_spatial"]) and math.isnan(
        s[f"{OUTSIDE_FACE}_reduction_spatial"]
    )
    assert np.isfinite(s["contamination_spatial"][0])


def _groups(uniform: float) -> dict:
    return {name: {"pairs": 3, "uniform": [uniform, 1.0, 3]} for name in BACKDROP_NAMES}


def test_the_demo_pick_follows_the_rule() -> None:
    shipped = [render_reference(p, seed=i).backdrop for i, p in enumerate(test_identities()[:NUM_REFERENCES])]
    groups = _groups(0.0)
    groups[shipped[5]]["uniform"] = [5.0, 1.0, 3]
    first = shipped.index(shipped[5])  # the first shipped reference with that backdrop
    prompt = next(p.prompt.text for p in pairs(1) if p.identity == first)
    assert demo_pick({"contamination_by_backdrop": groups}) == (f"test_{first:03d}.png", prompt)
    groups[shipped[5]]["uniform"] = [math.nan, math.nan, 0]  # no pairs: never the largest
    groups[shipped[2]]["uniform"] = [-0.5, 1.0, 3]
    picked = demo_pick({"contamination_by_backdrop": groups})[0]
    assert (
        picked == f"test_{min(i for i, n in enumerate(shipped) if n not in (shipped[5], shipped[2])):03d}.png"
    )


def test_make_demo_uses_the_rule_on_the_committed_gates_run() -> None:
    root = Path(__file__).resolve().parents[2]
    summary = json.loads((root / "docs" / "world-gates.json").read_text())
    assert summary["split"] == "test" and summary["pairs"] == 300
    demo = (root / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    reference = re.search(r"--id-image (\S+)", demo)
    prompt = re.search(r'--prompt "([^"]+)"', demo)
    assert reference and prompt and "--compare-id-weight 2" in demo
    assert (Path(reference.group(1)).name, prompt.group(1)) == demo_pick(summary)


def test_the_spatial_rows_are_the_worlds_setting_and_the_authors_code_as_published() -> None:
    from types import SimpleNamespace

    from idgen.core.gate import SpatialMask
    from idgen.core.refine import GridScaledRefiner, MaskRefiner
    from idgen.core.schedule import TemporalSpatialScheduler
    from idgen.world.bundle import WORLD_SPATIAL
    from idgen.world.gates import SPATIAL_PAPER, SPATIAL_V1, policies

    balanced, v1 = (
        TemporalSpatialScheduler.from_preset("balanced"),
        TemporalSpatialScheduler.from_preset("v1"),
    )
    assert SpatialMask(balanced, refiner=GridScaledRefiner()) == WORLD_SPATIAL
    rows = policies(SimpleNamespace(spatial=WORLD_SPATIAL))
    assert rows["spatial"] == rows["spatial_w2"] == WORLD_SPATIAL
    assert rows[SPATIAL_PAPER] == SpatialMask(balanced) and rows[SPATIAL_V1] == SpatialMask(v1)
    assert isinstance(rows[SPATIAL_PAPER].refiner, MaskRefiner) and rows[SPATIAL_PAPER].anchor is None
    # A named preset replaces only the schedule: the world's refiner stays on its own rows.
    named = policies(SimpleNamespace(spatial=WORLD_SPATIAL), preset="v1")
    assert named["spatial"] == SpatialMask(v1, refiner=GridScaledRefiner())
    assert named[SPATIAL_PAPER] == SpatialMask(v1) and named[SPATIAL_V1] == SpatialMask(v1)
