import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from idgen.errors import IdgenError
from idgen.eval.report import collect
from idgen.eval.runner import Method, MetricModels, Shard, plan_batches, run_eval
from tests.eval.fakes import METHODS, FakeGenerator, benchmark, fake_models

ROOT = Path(__file__).resolve().parents[2]


def results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def run_whole(out: Path, bench, batch_size: int = 3) -> list[dict]:
    run_eval(out, bench, METHODS, FakeGenerator(), fake_models(), batch_size=batch_size, progress=False)
    collect(out, bench, METHODS)
    return results(out)


def test_every_pair_is_generated_once_and_none_images_are_shared(tmp_path):
    bench = benchmark(tmp_path / "photos")  # 3 identities x 4 prompts, per-prompt seeds
    gen = FakeGenerator()
    report = run_eval(tmp_path / "out", bench, METHODS, gen, fake_models(), batch_size=5, progress=False)
    # 4 no-id images (one per prompt, shared by identities) + 2 methods x 12 pairs
    assert report.generated == 4 + 24
    assert len(list((tmp_path / "out/images/none").glob("*.png"))) == 4
    assert report.scored == 12 * 3  # each pair's no-id image scored against its identity, then 2 methods
    again = run_eval(tmp_path / "out", bench, METHODS, gen, fake_models(), batch_size=5, progress=False)
    assert again.generated == 0 and again.scored == 0


def test_metrics_of_the_fake_world_are_as_constructed(tmp_path):
    rows = run_whole(tmp_path / "out", benchmark(tmp_path / "photos"))
    by = {(r["method"], r["identity"], r["prompt"]): r for r in rows}
    spatial, uniform = by[("spatial", "id_0", "000")], by[("uniform", "id_0", "000")]
    # spatial paints only the face: the background is untouched
    assert spatial["contamination_px"] == 0.0 and spatial["contamination_clip"] == pytest.approx(
        0.0, abs=1e-6
    )
    assert uniform["contamination_px"] > 10
    assert spatial["facesim"] == pytest.approx(1.0, abs=1e-6)  # the face square is the reference colour
    assert by[("none", "id_0", "000")]["face_found"] is True
    assert "clip_i" not in by[("none", "id_0", "000")]  # CLIP-I compares with the no-id image itself
    assert by[("none", "id_0", "000")]["skipped"]["clip_i"] == "the no-id image itself"


def test_antifacesim_is_ibenchs_reference_vs_no_id_and_idgens_variant_has_its_own_name(tmp_path):
    import torch

    from tests.eval.fakes import FakeFaces

    rows = run_whole(tmp_path / "out", benchmark(tmp_path / "photos"))
    by = {(r["method"], r["identity"], r["prompt"]): r for r in rows}
    faces = FakeFaces()
    from PIL import Image

    def embedding(path):
        return faces.faces([Image.open(path).convert("RGB")])[0][0].embedding

    uniform = by[("uniform", "id_1", "002")]
    ref = embedding(tmp_path / "photos/id_1.png")
    none = embedding(tmp_path / "out" / uniform["none_image"])
    mine = embedding(tmp_path / "out" / uniform["image"])
    # IBench: cos(reference, the pair's no-id image); the same for every method and the none row.
    assert uniform["antifacesim"] == pytest.approx(float(torch.dot(ref, none)), abs=1e-6)
    assert by[("spatial", "id_1", "002")]["antifacesim"] == uniform["antifacesim"]
    assert by[("none", "id_1", "002")]["antifacesim"] == by[("none", "id_1", "002")]["facesim"]
    # idgen's variant: cos(with id, no id), under its own name.
    assert uniform["facesim_vs_noid"] == pytest.approx(float(torch.dot(mine, none)), abs=1e-6)


def test_kill_at_any_moment_then_resume_equals_an_uninterrupted_run(tmp_path):
    bench = benchmark(tmp_path / "photos")
    expected = run_whole(tmp_path / "whole", bench)
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from idgen.eval.runner import run_eval
        from tests.eval.fakes import METHODS, FakeGenerator, benchmark, fake_models
        bench = benchmark(Path({str(tmp_path / "photos")!r}))
        run_eval(Path({str(out)!r}), bench, METHODS, FakeGenerator(sleep=0.2), fake_models(), batch_size=3,
                 progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("images/*/*/*.png"))) < 7:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(out.glob("images/**/*.png")))
    assert 0 < done_before < 28, "the kill must land mid-run"
    got = run_whole(out, bench)
    assert got == expected
    assert len(got) == len({(r["method"], r["identity"], r["prompt"], r["seed"]) for r in got}) == 36


def test_two_shards_together_equal_one_process(tmp_path):
    bench = benchmark(tmp_path / "photos", policy="per-pair")
    expected = run_whole(tmp_path / "whole", bench)
    out = tmp_path / "sharded"
    first = run_eval(out, bench, METHODS, FakeGenerator(), fake_models(), Shard(0, 2), 3, progress=False)
    run_eval(out, bench, METHODS, FakeGenerator(), fake_models(), Shard(1, 2), 3, progress=False)
    assert first.pending_scores > 0  # shard 0 scored before shard 1 had made its no-id images
    again = run_eval(out, bench, METHODS, FakeGenerator(), fake_models(), Shard(0, 2), 3, progress=False)
    assert again.generated == 0 and again.pending_scores == 0
    collect(out, bench, METHODS)
    assert results(out) == expected


def test_batches_are_fixed_by_the_plan(tmp_path):
    bench = benchmark(tmp_path / "photos")
    batches = plan_batches(bench, METHODS, 5)
    assert [len(b.jobs) for b in batches] == [4, 5, 5, 2, 5, 5, 2]
    assert [b.method.name if b.method else "none" for b in batches] == ["none"] + ["uniform"] * 3 + [
        "spatial"
    ] * 3


def test_a_missing_or_unreadable_photo_skips_that_identity_only(tmp_path):
    bench = benchmark(tmp_path / "photos")
    (tmp_path / "photos/id_1.png").write_bytes(b"not a png")
    os.remove(tmp_path / "photos/id_2.png")
    report = run_eval(tmp_path / "out", bench, METHODS, FakeGenerator(), fake_models(), progress=False)
    assert set(report.problems) == {"id_1", "id_2"}
    assert "not a readable image file" in report.problems["id_1"]
    assert "not found" in report.problems["id_2"]
    summary = collect(tmp_path / "out", bench, METHODS)
    assert summary["methods"]["spatial"]["images_scored"] == 4  # id_0's four prompts survive
    assert set(summary["problems"]) == {"id_1", "id_2"}


def test_a_face_free_image_counts_as_no_face_not_as_zero(tmp_path):
    bench = benchmark(tmp_path / "photos", identities=1, prompts=1)

    class BlackFace(FakeGenerator):
        def generate(self, prompts, seeds, features, method):  # type: ignore[no-untyped-def]
            images, strips = super().generate(prompts, seeds, features, method)
            import numpy as np
            from PIL import Image

            a = np.asarray(images[0]).copy()
            a[8:24, 8:24] = 0
            return [Image.fromarray(a)], strips

    run_eval(tmp_path / "out", bench, METHODS, BlackFace(), fake_models(), progress=False)
    summary = collect(tmp_path / "out", bench, METHODS)
    assert summary["methods"]["spatial"]["no_face"] == 1
    facesim = summary["methods"]["spatial"]["facesim"]
    assert facesim["n"] == 0 and facesim["skipped"] == {"no face in the image": 1}


def test_resuming_into_another_plan_is_refused(tmp_path):
    bench = benchmark(tmp_path / "photos")
    run_eval(tmp_path / "out", bench, METHODS, FakeGenerator(), fake_models(), progress=False)
    with pytest.raises(IdgenError, match="different plan"):
        run_eval(tmp_path / "out", bench, [Method("uniform")], FakeGenerator(), fake_models(), progress=False)


def test_a_missing_metric_model_skips_its_metrics_not_the_run(tmp_path):
    bench = benchmark(tmp_path / "photos", identities=1, prompts=2)
    models = MetricModels(clip=None, faces=fake_models().faces, skipped={"clip": "not installed"})
    report = run_eval(tmp_path / "out", bench, METHODS, FakeGenerator(), models, progress=False)
    clip_metrics = ("clip_t", "clip_i", "clip_i_ref", "contamination_clip")
    assert {k: report.skipped_metrics[k] for k in clip_metrics} == dict.fromkeys(
        clip_metrics, "not installed"
    )
    assert report.skipped_metrics["aesthetic"] == "no aesthetic model"
    assert (
        report.skipped_metrics["landmark_diff"]
        == "idgen ships no loader for MTCNN 5-point landmarks, and none was given"
    )
    assert "facesim" not in report.skipped_metrics
    summary = collect(tmp_path / "out", bench, METHODS)
    assert summary["metrics"]["clip_t"] == {"computed": False, "reason": "not installed"}
    assert summary["metrics"]["facesim"] == {"computed": True, "model": "fake-face"}
    assert "facesim" in summary["methods"]["spatial"] and "clip_t" not in summary["methods"]["spatial"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sparse", "unknown method"),
        ("spatial:weight=2", "unknown method option"),
        ("uniform:id_weight=abc", "must be a number"),
        ("uniform:id_weight=-1", ">= 0"),
        ("uniform:id_weight=nan", "must be a finite number >= 0, got nan"),
        ("spatial:preset=balnced", "unknown preset 'balnced' in 'spatial:preset=balnced' \\(presets: v1, "),
    ],
)
def test_bad_method_specs_name_the_problem(spec, message):
    with pytest.raises(IdgenError, match=message):
        Method.parse(spec)


def test_method_specs_parse_to_settings_and_names():
    m = Method.parse("spatial:preset=balanced,id_weight=0.6")
    assert (m.mode, m.preset, m.id_weight, m.name) == ("spatial", "balanced", 0.6, "spatial-w0.6-balanced")
    assert Method.parse("uniform").name == "uniform"
    # No preset: the model's own SpatialMask; a named one, even FLUX's own v1, is in the name.
    assert (Method.parse("spatial").preset, Method.parse("spatial").name) == (None, "spatial")
    assert Method.parse("spatial:preset=v1").name == "spatial-v1"


def test_the_spatial_method_runs_the_models_own_schedule_unless_a_preset_is_named(tiny_pipe):
    from idgen.core.gate import SpatialMask
    from idgen.core.schedule import TemporalSpatialScheduler
    from idgen.eval.runner import FluxEvalGenerator

    generator = FluxEvalGenerator(tiny_pipe)
    features = generator.encode(Image.new("RGB", (64, 64), (128, 110, 90)), "a person")
    original = tiny_pipe.spatial
    tiny_pipe.spatial = SpatialMask(TemporalSpatialScheduler.from_preset("balanced"))
    try:
        generator = FluxEvalGenerator(tiny_pipe)  # its settings are read when it is made
        own, _ = generator.generate(["a person"], [3], features, Method("spatial"))
        named, _ = generator.generate(["a person"], [3], features, Method("spatial", preset="balanced"))
        v1, _ = generator.generate(["a person"], [3], features, Method("spatial", preset="v1"))
        assert generator.settings["spatial"]["scheduler"] == repr(tiny_pipe.spatial.scheduler)
    finally:
        tiny_pipe.spatial = original
    assert np.array_equal(np.asarray(own[0]), np.asarray(named[0]))
    assert not np.array_equal(np.asarray(own[0]), np.asarray(v1[0]))
    assert original.scheduler == TemporalSpatialScheduler.from_preset("v1")  # the authors' default


def test_the_plan_records_how_the_spatial_mode_builds_its_mask(tiny_pipe):
    from dataclasses import replace

    from idgen.core.gate import AttentionAnchor
    from idgen.core.refine import GridScaledRefiner
    from idgen.eval.runner import FluxEvalGenerator

    authors = FluxEvalGenerator(tiny_pipe).settings["spatial"]
    assert authors["anchor"] == "None" and authors["refiner"].startswith("MaskRefiner(")
    original = tiny_pipe.spatial
    tiny_pipe.spatial = replace(original, refiner=GridScaledRefiner(), anchor=AttentionAnchor())
    try:
        world = FluxEvalGenerator(tiny_pipe).settings["spatial"]
    finally:
        tiny_pipe.spatial = original
    # A resume with another mask construction is another plan (check_plan compares these settings).
    assert world != authors and world["anchor"].startswith("AttentionAnchor(")
