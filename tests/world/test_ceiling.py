"""The likeness ceilings: each fit starts and ends at the shipped weights, rows line up with the gates."""

from __future__ import annotations

import math
import subprocess
import sys
from functools import cache
from typing import Any

import pytest
import torch

from idgen.core.gate import UniformMask
from idgen.pipelines.names import NONE, UNIFORM
from idgen.world import ceiling, gates
from idgen.world.ceiling import FINE_TUNED, FREE_ATTENTION, FREE_TOKENS, ROWS, CeilingPlan


@cache
def _world() -> tuple[Any, Any]:
    from idgen.world.bundle import load_world

    pipe = load_world()
    pipe.adapter.requires_grad_(False)
    pipe.flux.transformer.requires_grad_(False)
    return pipe, gates.references(pipe, "test")


def _chunk(prompts: int = 2) -> list[gates.Pair]:
    return [p for p in gates.pairs(prompts, "test") if p.identity == 0]


def test_the_pairs_are_the_gates_first_pairs_then_more() -> None:
    assert [(p.prompt.text, p.seed) for p in _chunk(1)] == [
        (p.prompt.text, p.seed) for p in gates.pairs(1)[:1]
    ]
    assert len({p.prompt.text for p in _chunk(8)}) == 8


@pytest.mark.slow
def test_with_no_steps_each_ceiling_is_its_starting_point_and_the_weights_come_back() -> None:
    """At 0 steps the fitted tokens and cross-attentions are the adapter's and the fine-tuned base is the
    shipped one, so their images equal uniform's and none's bit for bit; after real fits the shipped
    weights are back."""
    pipe, (_, feats) = _world()
    chunk = _chunk()
    images = ceiling.person_images(pipe, feats, gates.split_people(), chunk, CeilingPlan(steps=0, renders=4))
    assert set(images) == {NONE, UNIFORM, FREE_TOKENS, FREE_ATTENTION, FINE_TUNED}
    assert torch.equal(images[FREE_TOKENS], images[UNIFORM])
    assert torch.equal(images[FREE_ATTENTION], images[UNIFORM])
    assert torch.equal(images[FINE_TUNED], images[NONE])
    assert not torch.equal(images[UNIFORM], images[NONE])

    shipped = {k: v.clone() for k, v in pipe.flux.transformer.state_dict().items()}
    data = ceiling.person_set(pipe.flux, gates.split_people()[0], 4, seed=0)
    plan = CeilingPlan(steps=2, batch=2)
    tuned = ceiling.fine_tuned_images(pipe, data, plan, 0, [chunk[0].prompt.text], [chunk[0].seed])
    after = pipe.flux.transformer.state_dict()
    assert all(torch.equal(after[k], v) for k, v in shipped.items())
    assert not any(p.requires_grad for p in pipe.flux.transformer.parameters())
    assert not torch.equal(tuned, images[NONE][:1])

    start, uncond = gates.identity_tokens(pipe, feats, [0])
    fitted = ceiling.free_tokens(pipe, data, start, plan, seed=0)
    assert fitted.shape == start.shape and not torch.equal(fitted, start)
    attention = {k: v.clone() for k, v in pipe.adapter.state_dict().items()}
    call = dict(
        prompts=[chunk[0].prompt.text], seeds=[chunk[0].seed], policy=UniformMask(), uncond_tokens=uncond
    )
    free = ceiling.free_attention_images(pipe, data, start, plan, 0, call)
    assert not torch.equal(free, images[UNIFORM][:1])
    assert all(torch.equal(pipe.adapter.state_dict()[k], v) for k, v in attention.items())
    assert not any(p.requires_grad for p in pipe.adapter.parameters())


def test_the_summary_counts_each_row_s_hits() -> None:
    def hits(*on: str) -> dict[str, bool]:
        return {n: n in on for n in gates.LIKENESS}

    rows = [
        {"identity": 0, f"attributes_{NONE}": hits(), f"attributes_{gates.RENDERED}": hits(*gates.LIKENESS)},
        {"identity": 0, f"attributes_{NONE}": hits("glasses"), f"attributes_{UNIFORM}": hits("glasses")},
    ]
    s = ceiling.summarise(rows, CeilingPlan())
    assert list(s["rows"]) == list(ROWS) and s["plan"]["steps"] == 300
    assert s["rows"][NONE]["glasses"][0] == 0.5 and s["rows"][NONE]["transferred"][0] == 0.1
    assert s["rows"][NONE]["faces"] == 2 and s["rows"][UNIFORM]["faces"] == 1
    assert s["rows"][gates.RENDERED]["transferred"][0] == 1.0
    assert s["rows"][FINE_TUNED]["faces"] == 0 and math.isnan(s["rows"][FINE_TUNED]["transferred"][0])
    lines = ceiling.table(s)
    assert (
        lines[0]
        == "| row | hair colour | hair style | skin tone | glasses | facial hair | mean of the five | faces |"
    )
    assert len(lines) == 2 + len(ROWS)
    assert lines[2 + ROWS.index(UNIFORM)].endswith("| 0.0 | 100.0 | 0.0 | 20.0 | 1 |")


@pytest.mark.parametrize(
    "bad", [["--people", "0"], ["--people", "101"], ["--prompts", "0"], ["--steps", "-1"]]
)
def test_bad_arguments_stop_before_anything_loads(bad: list[str], tmp_path: Any) -> None:
    out = tmp_path / "c.json"
    done = subprocess.run(
        [sys.executable, "-m", "idgen.world.ceiling", *bad, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "error:" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
