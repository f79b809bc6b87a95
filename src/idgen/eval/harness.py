"""`evaluate`: one call from a benchmark and methods to a report (what `idgen eval` runs)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idgen.errors import IdgenError
from idgen.eval.manifest import Benchmark, SeedPolicy, from_files, named
from idgen.eval.runner import EvalGenerator, Method, MetricModels, RunReport, Shard, run_eval

__all__ = ["MetricOptions", "evaluate", "metric_model_set", "real_metric_models", "register_metric_models"]

# Named sets of metric models registered by their providers (the demo world registers "demo-world").
METRIC_MODEL_SETS: dict[str, Callable[[], MetricModels]] = {}


def register_metric_models(name: str, make: Callable[[], MetricModels]) -> None:
    METRIC_MODEL_SETS[name] = make


def metric_model_set(name: str) -> Callable[[], MetricModels]:
    if name not in METRIC_MODEL_SETS:
        known = ", ".join(METRIC_MODEL_SETS) or "none registered"
        raise IdgenError(f"unknown metric model set {name!r} (registered: {known})")
    return METRIC_MODEL_SETS[name]


IQ_MODES = {"ibench": "ibench_raw", "vbench": "vbench"}  # --iq-mode -> Musiq's input mode


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
    iq_mode: str = "ibench"  # "ibench": IBench's raw 0-255 full-resolution input; "vbench": VBench's
    iq_weights: str | None = None  # a local MUSIQ SPAQ checkpoint; None lets pyiqa download it (online only)

    def record(self) -> dict[str, Any]:
        """What plan.json keys a run on (the metric models asked for)."""
        return {
            "clip": self.clip,
            "faces": self.faces,
            "aesthetic": self.aesthetic,
            "iq": f"musiq-spaq ({self.iq_mode})" if self.iq else None,
        }


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _musiq(options: MetricOptions) -> Any:
    from idgen.eval.backends.scorers import Musiq

    if options.iq_mode not in IQ_MODES:
        raise IdgenError(f"unknown --iq-mode {options.iq_mode!r} (ibench or vbench)")
    if options.iq_weights is None and hub_offline():
        raise IdgenError("HF_HUB_OFFLINE is set and no local MUSIQ weights were given (--iq-weights)")
    musiq = Musiq(options.iq_weights, device=options.device, mode=IQ_MODES[options.iq_mode])  # type: ignore[arg-type]
    musiq.name = f"musiq-spaq ({options.iq_mode} input)"
    return musiq


def real_metric_models(options: MetricOptions) -> MetricModels:
    """Load what is asked; a metric whose model or package is missing is skipped with the reason."""
    from idgen.eval.backends.clip import HFCLIP
    from idgen.eval.backends.faces import DlibFaceModel, InsightFaceModel
    from idgen.eval.backends.scorers import LaionAesthetic

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
    else:
        models.skipped["aesthetic"] = "no LAION aesthetic head given (--aesthetic-head)"
    if options.iq:
        iq = attempt("iq", lambda: _musiq(options))
        if iq is not None:
            models.scorers["iq"] = iq
    else:
        models.skipped["iq"] = "not asked for (--iq)"
    return models


def resolve_benchmark(
    name: str | None,
    out: Path,
    photos: str | None,
    prompts: str | None,
    seeds: SeedPolicy,
    keep_duplicates: bool = False,
) -> Benchmark:
    """A registered benchmark by name, or a photo folder x a prompts file."""
    if name is not None:
        if photos or prompts:
            raise IdgenError("give either --benchmark or --photos with --prompts, not both")
        return named(name, out)
    if not photos or not prompts:
        raise IdgenError("give --benchmark, or --photos and --prompts")
    return from_files(photos, prompts, seeds, keep_duplicates)


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
    settings: dict[str, Any] | None = None,
) -> tuple[RunReport, dict[str, Any] | None]:
    """Run (resumably) and, on the last process, collect the report."""
    from idgen.eval.report import write_report

    out = Path(out)
    shard = shard or Shard()
    run = run_eval(
        out, benchmark, methods, generator, metric_models, shard, batch_size, progress, barrier, settings
    )
    summary = None
    if barrier is not None:
        barrier()  # every process, so that process 0 reports on all shards' scores
    if report and shard.index == 0 and (shard.count == 1 or barrier is not None):
        summary = write_report(out, benchmark, methods)
    return run, summary
