"""Generate and score a benchmark: every output atomic, resumable after a kill, sharded across processes.

Output folder:
    plan.json                                   the benchmark, methods and settings (a re-run must match)
    metrics.json                                per metric: computed or not (why), the model actually used
    references/                                 built-in benchmarks' rendered reference photos
    images/none/<prompt>-s<seed>.png            without identity: one per (prompt, seed), shared by methods
    images/<method>/<identity>/<prompt>-s<seed>.png
    scores/<method>/<identity>/<prompt>-s<seed>.json   one per image ("none" scored against each identity)
    problems/<identity>.json                    identities skipped, and why (missing photo, no face, ...)
    timings/<shard>.json                        seconds spent generating and scoring, per shard
    results.jsonl, summary.json                 collected from scores/ in plan order (`collect`)

Work is cut into fixed batches from the plan alone (never from what is already done), and each batch is
owned by one shard (batch index mod shard count). A batch with any image missing is generated again whole
and only its missing images are written, so a resumed or sharded run computes every image exactly as an
uninterrupted single-process run does. Scores need the shared no-id images; a shard that finds one missing
(another shard still running) leaves that score for a later pass, which `run_eval` reports.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from idgen.core.schedule import PRESETS
from idgen.errors import IdgenError
from idgen.eval.folder import Job, check_plan, clean_temp_files, json_records, mask_strip_path, run_lock
from idgen.eval.manifest import Benchmark, IdentityPhoto
from idgen.eval.metrics.base import Cache, Metric, MetricModels, ScoreBatch, Skip, registered
from idgen.identity.base import IdentityFeatures
from idgen.io import atomic_save_image, atomic_write_text, load_image
from idgen.pipelines.names import IDENTITY_MODES, NONE, SPATIAL

__all__ = ["EvalGenerator", "FluxEvalGenerator", "Method", "MetricModels", "RunReport", "Shard", "run_eval"]


# ---------------------------------------------------------------------------------------------------------
# Methods under test.
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """One configuration under test: a mask mode with its id_weight and, for SpatialID, a named schedule
    preset (None: the model's own SpatialMask as it is, as `idgen generate` runs it; v1 on FLUX)."""

    mode: str
    id_weight: float = 1.0
    preset: str | None = None

    @property
    def name(self) -> str:
        """Folder-safe label: the mode, then the settings that differ from the defaults."""
        parts = [self.mode]
        if self.id_weight != 1.0:
            parts.append(f"w{self.id_weight:g}")
        if self.preset is not None and self.mode == SPATIAL:
            parts.append(self.preset)
        return "-".join(parts)

    @classmethod
    def parse(cls, spec: str) -> Method:
        """ "spatial", "uniform:id_weight=0.8", "spatial:preset=balanced,id_weight=0.6"."""
        mode, _, options = spec.strip().partition(":")
        if mode not in IDENTITY_MODES:
            raise IdgenError(
                f"unknown method {spec!r} (modes: {', '.join(IDENTITY_MODES)}; 'none' is always run)"
            )
        kwargs: dict[str, Any] = {}
        for item in filter(None, (o.strip() for o in options.split(","))):
            key, eq, value = item.partition("=")
            if not eq or key not in ("id_weight", "preset"):
                raise IdgenError(f"unknown method option {item!r} in {spec!r} (options: id_weight, preset)")
            try:
                kwargs[key] = float(value) if key == "id_weight" else value
            except ValueError:
                raise IdgenError(f"id_weight must be a number, got {value!r} in {spec!r}") from None
        method = cls(mode, **kwargs)
        if not math.isfinite(method.id_weight) or method.id_weight < 0:
            raise IdgenError(f"id_weight must be a finite number >= 0, got {method.id_weight} in {spec!r}")
        if method.preset is not None and method.preset not in PRESETS:
            raise IdgenError(f"unknown preset {method.preset!r} in {spec!r} (presets: {', '.join(PRESETS)})")
        return method

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "id_weight": self.id_weight, "preset": self.preset}


@runtime_checkable
class EvalGenerator(Protocol):
    """What the runner needs from a pipeline: encode a photo, generate a batch."""

    settings: dict[str, Any]

    def encode(self, photo: Image.Image, what: str) -> IdentityFeatures: ...

    def generate(
        self, prompts: list[str], seeds: list[int], features: IdentityFeatures | None, method: Method | None
    ) -> tuple[list[Image.Image], list[Image.Image] | None]: ...  # images, and mask strips where recorded


MASK_STRIP_EVERY = 4  # steps between the frames of an image's mask strip


class FluxEvalGenerator:
    """EvalGenerator over an IdentityFluxPipeline (the demo world or real PuLID-FLUX)."""

    def __init__(self, pipe: Any, sampling: dict[str, Any] | None = None) -> None:
        self.pipe = pipe
        # Keyword arguments of every pipeline call (height, width, num_inference_steps, guidance_scale,
        # true_cfg_scale); left out, the pipeline's own defaults apply.
        self.sampling = dict(sampling or {})
        # What a resumed run must match: sampling defaults, which identity networks generate, and how the
        # spatial mode builds its mask (a method's preset, where named, replaces the schedule).
        spatial = pipe.spatial
        self.settings = {
            **pipe.defaults,
            **self.sampling,
            "adapter": type(pipe.adapter).__name__,
            "encoder": type(pipe.encoder).__name__,
            SPATIAL: {
                part: repr(getattr(spatial, part)) for part in ("scheduler", "extractor", "refiner", "anchor")
            },
        }

    def encode(self, photo: Image.Image, what: str) -> IdentityFeatures:
        return self.pipe.encoder(photo, what=what)

    def generate(
        self, prompts: list[str], seeds: list[int], features: IdentityFeatures | None, method: Method | None
    ) -> tuple[list[Image.Image], list[Image.Image] | None]:
        from idgen.recording import MaskRecorder
        from idgen.viz import mask_strip

        if method is None:
            return list(self.pipe(prompts, mode=NONE, seed=seeds, **self.sampling).images), None
        recorder = MaskRecorder(keep_ca_norm=False) if method.mode == SPATIAL else None
        out = self.pipe(
            prompts,
            id_features=features,
            mode=method.mode,
            id_weight=method.id_weight,
            preset=method.preset,
            seed=seeds,
            recorder=recorder,
            **self.sampling,
        )
        images = list(out.images)
        if recorder is None:
            return images, None
        strips = [
            mask_strip(image, recorder.mean_mask_per_step(sample=k)[::MASK_STRIP_EVERY])
            for k, image in enumerate(images)
        ]
        return images, strips


# ---------------------------------------------------------------------------------------------------------
# Batches of jobs: a pure function of the plan.
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    index: int
    method: Method | None
    jobs: tuple[Job, ...]  # for "none", one job per distinct image


def plan_batches(benchmark: Benchmark, methods: Sequence[Method], batch_size: int) -> list[Batch]:
    """No-id images first (distinct (prompt, seed)), then each method over the pairs, in fixed chunks."""
    pairs = benchmark.all_pairs()
    none_jobs: dict[str, Job] = {}
    for pair in pairs:
        job = Job(NONE, pair)
        none_jobs.setdefault(job.image, job)
    groups: list[tuple[Method | None, list[Job]]] = [(None, list(none_jobs.values()))]
    groups += [(m, [Job(m.name, p) for p in pairs]) for m in methods]
    batches: list[Batch] = []
    for method, jobs in groups:
        for start in range(0, len(jobs), batch_size):
            batches.append(Batch(len(batches), method, tuple(jobs[start : start + batch_size])))
    return batches


def score_jobs(benchmark: Benchmark, methods: Sequence[Method]) -> list[Job]:
    """Every image to score, in plan order: each pair's no-id image (against its identity), then methods."""
    pairs = benchmark.all_pairs()
    return [Job(NONE, p) for p in pairs] + [Job(m.name, p) for m in methods for p in pairs]


# ---------------------------------------------------------------------------------------------------------
# The plan file.
# ---------------------------------------------------------------------------------------------------------
def plan_record(
    benchmark: Benchmark,
    methods: Sequence[Method],
    settings: dict[str, Any],
    batch_size: int,
    out: Path | None = None,
) -> dict[str, Any]:
    """What plan.json holds (see `idgen.eval.folder`): photo paths relative to `out`."""
    from idgen.eval.folder import PLAN_VERSION

    return {
        "version": PLAN_VERSION,
        "benchmark": benchmark.describe(out),
        "methods": [m.to_dict() for m in methods],
        "generation": {k: v for k, v in sorted(settings.items())},
        "batch_size": batch_size,
    }


# ---------------------------------------------------------------------------------------------------------
# Running.
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise IdgenError(f"shard must be i/n with 0 <= i < n, got {self.index}/{self.count}")

    def owns(self, batch_index: int) -> bool:
        return batch_index % self.count == self.index

    @classmethod
    def from_accelerate(cls) -> Shard:
        """This process's place in an `accelerate launch` (one process when accelerate is absent)."""
        try:
            from accelerate import PartialState
        except ImportError:
            return cls()
        state = PartialState()
        return cls(state.process_index, state.num_processes)


@dataclass
class RunReport:
    generated: int = 0
    scored: int = 0
    pending_scores: int = 0  # waiting for another shard's no-id images
    problems: dict[str, str] = field(default_factory=dict)  # identity id -> why skipped
    skipped_metrics: dict[str, str] = field(default_factory=dict)
    seconds_generating: float = 0.0
    seconds_scoring: float = 0.0


def identity_problem(out: Path, identity: IdentityPhoto, why: str) -> None:
    record = {"identity": identity.id, "photo": identity.path.name, "problem": why}
    atomic_write_text(out / "problems" / f"{identity.id}.json", json.dumps(record) + "\n")


def encode_identities(
    out: Path, identities: Sequence[IdentityPhoto], generator: EvalGenerator, report: RunReport
) -> dict[str, IdentityFeatures]:
    """Features of each photo; a photo that cannot be used is skipped (recorded, with the reason)."""
    features = {}
    for identity in identities:
        try:
            photo = load_image(identity.path, what=f"photo of identity {identity.id}")
            features[identity.id] = generator.encode(photo, what=f"photo of identity {identity.id}")
        except IdgenError as e:
            report.problems[identity.id] = str(e)
            identity_problem(out, identity, str(e))
    return features


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True)


def _missing(out: Path, paths: Iterator[str]) -> bool:
    return any(not (out / p).exists() for p in paths)


def _save_batch(out: Path, jobs: Sequence[Job], images: list[Image.Image], strips: Any) -> int:
    """Write the batch's images that are not on disk yet; their count."""
    written = 0
    for k, (job, image) in enumerate(zip(jobs, images, strict=True)):
        path = out / job.image
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if strips is not None:  # before the image: an image on disk means its strip is there
            atomic_save_image(strips[k], mask_strip_path(path))
        atomic_save_image(image, path)
        written += 1
    return written


def _generate_batch(
    out: Path, batch: Batch, generator: EvalGenerator, features: dict[str, IdentityFeatures]
) -> int:
    jobs = [j for j in batch.jobs if j.method == NONE or j.pair.identity.id in features]
    if not jobs:
        return 0
    batch_features = None
    if batch.method is not None:
        batch_features = IdentityFeatures.cat([features[j.pair.identity.id] for j in jobs])
    prompts, seeds = [j.pair.prompt.text for j in jobs], [j.pair.seed for j in jobs]
    images, strips = generator.generate(prompts, seeds, batch_features, batch.method)
    return _save_batch(out, jobs, images, strips)


def generate_batches(
    out: Path,
    batches: Sequence[Batch],
    generator: EvalGenerator,
    features: dict[str, IdentityFeatures],
    report: RunReport,
    progress: bool = True,
) -> None:
    todo = [b for b in batches if _missing(out, (j.image for j in b.jobs))]
    with _progress(sum(len(b.jobs) for b in todo), "generate", progress) as bar:
        for batch in todo:
            start = time.perf_counter()
            report.generated += _generate_batch(out, batch, generator, features)
            report.seconds_generating += time.perf_counter() - start
            bar.update(len(batch.jobs))


def _row(job: Job) -> dict[str, Any]:
    p = job.pair
    row = {"method": job.method, "identity": p.identity.id, "prompt": p.prompt.id, "seed": p.seed}
    return {**row, "image": job.image, "none_image": job.none_image}


def score_batch(
    out: Path,
    jobs: Sequence[Job],
    models: MetricModels,
    cache: Cache,
    identities: dict[str, IdentityPhoto],
    metrics: Sequence[Metric] | None = None,
) -> list[dict[str, Any]]:
    """Metric rows for jobs whose images all exist (checked by the caller): each computable metric's value,
    or under "skipped" the reason it has none for this image."""
    batch = ScoreBatch(out, jobs, models, cache, identities)
    rows = [_row(j) for j in jobs]
    if models.faces is not None:  # counted in the report: images and photos without a face
        for row, face, ref in zip(rows, batch.faces, batch.reference_faces, strict=True):
            row["face_found"], row["ref_face_found"] = face is not None, ref is not None
    for metric in registered() if metrics is None else metrics:
        if metric.unavailable(models) is not None:
            continue
        for row, value in zip(rows, metric.compute(batch), strict=True):
            if isinstance(value, Skip):
                row.setdefault("skipped", {})[metric.key] = value.why
            else:
                row[metric.key] = value
    return rows


def metric_record(models: MetricModels, metrics: Sequence[Metric] | None = None) -> dict[str, Any]:
    """metrics.json: per metric, the model actually used, or why it is not computed."""
    record = {}
    for metric in registered() if metrics is None else metrics:
        why = metric.unavailable(models)
        record[metric.key] = (
            {"computed": False, "reason": why}
            if why is not None
            else {"computed": True, "model": metric.model_name(models)}
        )
    return record


def _save_scores(out: Path, jobs: Sequence[Job], rows: list[dict[str, Any]]) -> int:
    written = 0
    for job, row in zip(jobs, rows, strict=True):
        path = out / job.score
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(row, sort_keys=True) + "\n")
            written += 1
    return written


def _ready(out: Path, chunk: Sequence[Job]) -> bool:
    """Whether every image a chunk's scores need is on disk (another shard may still be making some)."""
    return not _missing(out, (p for j in chunk for p in (j.image, j.none_image)))


def _ready_chunks(out: Path, jobs: Sequence[Job], report: RunReport, batch_size: int) -> list[list[Job]]:
    """Chunks with a score to write whose images are all there; the rest are counted as pending.

    Fixed chunks of the plan-ordered jobs, as for generation: a resumed run scores every image in the
    same batch as an uninterrupted one, so batched metric models give the same numbers."""
    usable = [j for j in jobs if j.pair.identity.id not in report.problems]
    chunks = [usable[i : i + batch_size] for i in range(0, len(usable), batch_size)]
    todo = [c for c in chunks if _missing(out, (j.score for j in c))]
    ready = [c for c in todo if _ready(out, c)]
    report.pending_scores += _unscored(out, [c for c in todo if c not in ready])
    return ready


def _unscored(out: Path, chunks: list[list[Job]]) -> int:
    return sum(not (out / j.score).exists() for c in chunks for j in c)


def score_all(
    out: Path,
    jobs: Sequence[Job],
    models: MetricModels,
    identities: dict[str, IdentityPhoto],
    report: RunReport,
    batch_size: int,
    progress: bool = True,
) -> None:
    ready = _ready_chunks(out, jobs, report, batch_size)
    cache = Cache()
    with _progress(sum(len(c) for c in ready), "score", progress) as bar:
        for chunk in ready:
            t0 = time.perf_counter()
            rows = score_batch(out, chunk, models, cache, identities)
            report.scored += _save_scores(out, chunk, rows)
            report.seconds_scoring += time.perf_counter() - t0
            bar.update(len(chunk))


def run_eval(
    out: str | Path,
    benchmark: Benchmark,
    methods: Sequence[Method],
    generator: EvalGenerator | Callable[[], EvalGenerator],
    metric_models: MetricModels | Callable[[], MetricModels],
    shard: Shard | None = None,
    batch_size: int = 8,
    progress: bool = True,
    barrier: Callable[[], None] | None = None,
    settings: dict[str, Any] | None = None,
) -> RunReport:
    """Generate this shard's batches, then score its share; resumable. Factories are called only when needed.

    `settings`: what the plan records about generation; given, the plan is checked before the generator
    loads (else the generator's own `settings` are used). `barrier` (accelerate's wait_for_everyone) runs
    between generating and scoring with several processes."""
    out, shard = Path(out), shard or Shard()
    if len({m.name for m in methods}) != len(methods):
        raise IdgenError("the same method is listed twice")
    report = RunReport()
    lock = f".lock-shard-{shard.index}-of-{shard.count}"
    with run_lock(out, lock):
        clean_temp_files(out, lock)
        start = time.perf_counter()  # model loading counts towards its phase
        if settings is not None:
            check_plan(out, plan_record(benchmark, methods, settings, batch_size, out))
        gen = generator if isinstance(generator, EvalGenerator) else generator()
        if settings is None:
            check_plan(out, plan_record(benchmark, methods, gen.settings, batch_size, out))
        report.seconds_generating += time.perf_counter() - start
        benchmark.prepare()
        _generate_phase(out, benchmark, methods, gen, shard, batch_size, progress, report)
        if barrier is not None:
            barrier()
        _score_phase(out, benchmark, methods, metric_models, shard, batch_size, progress, report)
        timing = {
            k: getattr(report, k) for k in ("generated", "scored", "seconds_generating", "seconds_scoring")
        }
        name = f"shard-{shard.index}-of-{shard.count}.json"
        atomic_write_text(out / "timings" / name, json.dumps(timing) + "\n")
    return report


def _generate_phase(
    out: Path,
    benchmark: Benchmark,
    methods: Sequence[Method],
    gen: EvalGenerator,
    shard: Shard,
    batch_size: int,
    progress: bool,
    report: RunReport,
) -> None:
    batches = [b for b in plan_batches(benchmark, methods, batch_size) if shard.owns(b.index)]
    needed = {j.pair.identity.id: j.pair.identity for b in batches if b.method is not None for j in b.jobs}
    start = time.perf_counter()
    features = encode_identities(out, list(needed.values()), gen, report)
    report.seconds_generating += time.perf_counter() - start
    generate_batches(out, batches, gen, features, report, progress)


def read_problems(out: Path) -> dict[str, str]:
    """identity id -> why it was skipped (problems/*.json)."""
    problems = {}
    for path in json_records(out / "problems"):
        record = json.loads(path.read_text())
        problems[record["identity"]] = record["problem"]
    return problems


def _score_phase(
    out: Path,
    benchmark: Benchmark,
    methods: Sequence[Method],
    metric_models: MetricModels | Callable[[], MetricModels],
    shard: Shard,
    batch_size: int,
    progress: bool,
    report: RunReport,
) -> None:
    for identity, why in read_problems(out).items():
        report.problems.setdefault(identity, why)
    jobs = [j for k, j in enumerate(score_jobs(benchmark, methods)) if k % shard.count == shard.index]
    start = time.perf_counter()
    models = metric_models() if callable(metric_models) else metric_models
    report.seconds_scoring += time.perf_counter() - start
    record = metric_record(models)
    report.skipped_metrics = {k: v["reason"] for k, v in record.items() if not v["computed"]}
    if shard.index == 0:
        atomic_write_text(out / "metrics.json", json.dumps(record, indent=1, sort_keys=True) + "\n")
    identities = {i.id: i for i in benchmark.identities}
    score_all(out, jobs, models, identities, report, batch_size, progress)


def iter_scores(out: Path, benchmark: Benchmark, methods: Sequence[Method]) -> Iterator[dict[str, Any]]:
    """Score rows in plan order (what exists; each image exactly once by construction)."""
    for job in score_jobs(benchmark, methods):
        path = out / job.score
        if path.exists():
            yield json.loads(path.read_text())
