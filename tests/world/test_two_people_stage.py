"""The two-people stage of `idgen world train`: fine-tunes a base FluxPipeline folder in place, grows its
tokenizers and text encoders, resumes/skips, and comes before the adapter, which trains on its result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from idgen.errors import IdgenError
from idgen.world import build


def test_two_people_fine_tunes_the_base_before_either_identity_branch_trains_on_it() -> None:
    from idgen.cli.world import WORLD_STAGES

    order = build.STAGES.index
    assert order("base") < order("two-people") < min(order("pidiff"), order("adapter"))
    assert build.STAGES[-1] == "adapter" and WORLD_STAGES == build.STAGES


def test_the_stage_needs_a_base_model(tmp_path: Path) -> None:
    with pytest.raises(IdgenError, match="needs the base model"):
        build.train_two_people(tmp_path / "work", tmp_path / "assets", quick=True)


@pytest.mark.slow
def test_quick_stage_fine_tunes_the_base_and_grows_the_vocabulary(tmp_path: Path) -> None:
    from diffusers import FluxPipeline

    from idgen.world import generator as gen
    from idgen.world.bundle import read_manifest
    from idgen.world.tokenizer import build_tokenizer

    assets, work = tmp_path / "assets", tmp_path / "work"
    base = gen.new_pipeline()
    base.vae.register_to_config(shift_factor=0.0, scaling_factor=1.0)  # as the base stage sets them
    build.save_pipeline(base, assets / "flux")
    report = build.train_all(work, assets, quick=True, stages=("two-people",))
    assert set(report) == {"two-people"} and report["two-people"]["transformer"]["loss"] > 0
    tuned = FluxPipeline.from_pretrained(assets / "flux")
    assert len(tuned.tokenizer) == len(tuned.tokenizer_2) == len(build_tokenizer(two_people=True)) == 112
    for name in ("text_encoder", "text_encoder_2"):
        old = getattr(base, name).get_input_embeddings().weight
        new = getattr(tuned, name).get_input_embeddings().weight
        assert new.shape == (112, old.shape[1]) and torch.equal(new[:109], old)
    for old_p, new_p in zip(base.vae.parameters(), tuned.vae.parameters(), strict=True):
        assert torch.equal(old_p, new_p)
    changed = [
        not torch.equal(a, b)
        for a, b in zip(base.transformer.parameters(), tuned.transformer.parameters(), strict=True)
    ]
    assert any(changed)
    assert "flux/transformer/diffusion_pytorch_model.safetensors" in read_manifest(assets)
    # Done already: a second run changes nothing and returns the saved report.
    weights = (assets / "flux/transformer/diffusion_pytorch_model.safetensors").read_bytes()
    again = build.train_two_people(work / "generator", assets, quick=True)
    assert again == report["two-people"]
    assert (assets / "flux/transformer/diffusion_pytorch_model.safetensors").read_bytes() == weights
