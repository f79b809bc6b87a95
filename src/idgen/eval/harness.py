"""`evaluate`: one call from a benchmark and methods to a report (what `idgen eval` runs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idgen.errors import IdgenError
from idgen.eval.manifest import BUILTIN, Benchmark, builtin
from idgen.eval.runner import EvalGenerator, Method, MetricModels, RunReport, Shard, run_eval

__all__ = ["MetricOptions", "evaluate", "real_metric_models", "world_metric_models"]


def world_metric_models() -> MetricModels:
    """The demo world's evaluators (independent of the generator) behind the metric interfaces."""
    from idgen.eval.backends.world import WorldFaces, WorldImageText

    models = MetricModels(clip=WorldImageText(), faces=WorldFaces())
    models.skipped = {
        "aesthetic": "no LAION head exists for the demo world",
        "iq": "MUSIQ is not trained for the demo world",
    }
    return models


@dataclass
class MetricOptions:
    """Real metric models: local paths or hub ids. None skips the metric (recorded as skipped)."""

    clip: str | None = "openai/clip-vit-large-patch14"
    faces: str | None = (
        "antelopev2"  # "antelopev2" (insightface), or "dlib" (offline, not ArcFace-comparable)
    )
    face_root: str | None = None  # insightface model root (holds models/antelopev2)
    aesthetic: str | None = None  # path to the LAION linear head (sa_0_4_vit_l_14_linear.pth)
    iq: bool = False  # MUSIQ through pyiqa
    device: str = "cpu"


def real_metric_models(options: MetricOptions) -> MetricModels:
    """Load what is asked; a metric whose model or package is missing is skipped with the reason."""
    from idgen.eval.backends.clip import HFCLIP
    from idgen.eval.backends.faces import DlibFaceModel, InsightFaceModel
    from idgen.eval.backends.scorers import LaionAesthetic, Musiq

    models = MetricModels()

    def attempt(metric: str, make: Callable[[], Any]) -> Any:
        try:
            return make()
        except (IdgenError, ImportError, OSError) as e:
            models.skipped[metric] = str(e).splitlines()[0] if str(e) else type(e).__name__
            return None

    clip_source, faces, aesthetic = options.clip, options.faces, options.aesthetic
    if clip_source:
        models.clip = attempt("clip", lambda: HFCLIP.from_pretrained(clip_source, device=options.device))
    else:
        models.skipped["clip"] = "no CLIP model given"
    if options.faces == "dlib":
        models.faces = attempt("faces", DlibFaceModel)
    elif faces:
        models.faces = attempt(
            "faces", lambda: InsightFaceModel(name=faces, root=options.face_root, device=options.device)
        )
    else:
        models.skipped["faces"] = "no face model given"
    if aesthetic:
        if models.clip is None:
            models.skipped["aesthetic"] = "needs the CLIP model, which is not loaded"
        else:
            head = attempt("aesthetic", lambda: LaionAesthetic.from_file(aesthetic, models.clip))
            if head is not None:
                models.scorers["aesthetic"] = head
    if options.iq:
        iq = attempt("iq", lambda: Musiq(device=options.device))
        if iq is not None:
            models.scorers["iq"] = iq
    return models


def resolve_benchmark(
    name: str | None, out: Path, photos: str | None, prompts: str | None, seeds: Any
) -> Benchmark:
    from idgen.eval.manifest import from_files

    if name is not None:
        if photos or prompts:
            raise IdgenError("give either --benchmark or --photos with --prompts, not both")
        if name not in BUILTIN:
            raise IdgenError(f"unknown benchmark {name!r} (built-in: {', '.join(BUILTIN)})")
        return builtin(name, out / "references")
    if not photos or not prompts:
        raise IdgenError("give --benchmark, or --photos and --prompts")
    return from_files(photos, prompts, seeds)


def evaluate(
    out: str | Path,
    benchmark: Benchmark,
    methods: Sequence[Method],
    generator: EvalGenerator | Callable[[], EvalGenerator],
    metric_models: MetricModels | Callable[[], MetricModels],
    shard: Shard | None = None,
    batch_size: int = 8,
    progress: bool = True,
    barrier: Callable[[], None] | None = None,
    report: bool = True,
    face_model: str | None = None,
) -> tuple[RunReport, dict[str, Any] | None]:
    """Run (resumably) and, on the last process, collect the report."""
    from idgen.eval.report import write_report

    out = Path(out)
    shard = shard or Shard()
    run = run_eval(out, benchmark, methods, generator, metric_models, shard, batch_size, progress, barrier)
    summary = None
    if barrier is not None:
        barrier()  # every process, so that process 0 reports on all shards' scores
    if report and shard.index == 0 and (shard.count == 1 or barrier is not None):
        summary = write_report(out, benchmark, methods, face_model)
    return run, summary
