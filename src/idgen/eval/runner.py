"""Generate and score a benchmark: every output atomic, resumable after a kill, sharded across processes.

Output folder:
    plan.json                                   the benchmark, methods and settings (a re-run must match)
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
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from idgen.errors import IdgenError
from idgen.eval import metrics as M
from idgen.eval.manifest import Benchmark, IdentityPhoto, Pair
from idgen.eval.models import Face, FaceModel, ImageScorer, ImageTextModel, largest_face
from idgen.identity.base import IdentityFeatures
from idgen.io import atomic_save_image, atomic_write_text, load_image

MODES = ("uniform", "spatial")
NONE = "none"


# ---------------------------------------------------------------------------------------------------------
# Methods under test.
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """One configuration under test: a mask mode with its id_weight and preset (SpatialID), or "none"."""

    mode: str
    id_weight: float = 1.0
    preset: str = "v1"

    @property
    def name(self) -> str:
        """Folder-safe label: the mode, then the settings that differ from the defaults."""
        parts = [self.mode]
        if self.id_weight != 1.0:
            parts.append(f"w{self.id_weight:g}")
        if self.preset != "v1" and self.mode == "spatial":
            parts.append(self.preset)
        return "-".join(parts)

    @classmethod
    def parse(cls, spec: str) -> Method:
        """ "spatial", "uniform:id_weight=0.8", "spatial:preset=balanced,id_weight=0.6"."""
        mode, _, options = spec.strip().partition(":")
        if mode not in MODES:
            raise IdgenError(f"unknown method {spec!r} (modes: {', '.join(MODES)}; 'none' is always run)")
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
        if method.id_weight < 0:
            raise IdgenError(f"id_weight must be >= 0, got {method.id_weight} in {spec!r}")
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

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        # What a resumed run must match: sampling defaults, which identity networks generate, and how the
        # spatial mode builds its mask (its schedule is each method's preset).
        spatial = pipe.spatial
        self.settings = {
            **pipe.defaults,
            "adapter": type(pipe.adapter).__name__,
            "encoder": type(pipe.encoder).__name__,
            "spatial": {part: repr(getattr(spatial, part)) for part in ("extractor", "refiner", "anchor")},
        }

    def encode(self, photo: Image.Image, what: str) -> IdentityFeatures:
        return self.pipe.encoder(photo, what=what)

    def generate(
        self, prompts: list[str], seeds: list[int], features: IdentityFeatures | None, method: Method | None
    ) -> tuple[list[Image.Image], list[Image.Image] | None]:
        from idgen.recording import MaskRecorder
        from idgen.viz import mask_strip

        if method is None:
            return list(self.pipe(prompts, mode="none", seed=seeds).images), None
        recorder = MaskRecorder(keep_ca_norm=False) if method.mode == "spatial" else None
        out = self.pipe(
            prompts,
            id_features=features,
            mode=method.mode,
            id_weight=method.id_weight,
            preset=method.preset,
            seed=seeds,
            recorder=recorder,
        )
        images = list(out.images)
        if recorder is None:
            return images, None
        strips = [
            mask_strip(image, recorder.mean_mask_per_step(sample=k)[::MASK_STRIP_EVERY])
            for k, image in enumerate(images)
        ]
        return images, strips


@dataclass
class MetricModels:
    """The models metrics need; a missing one skips its metrics (named in `skipped`), never the run."""

    clip: ImageTextModel | None = None
    faces: FaceModel | None = None
    scorers: dict[str, ImageScorer] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why


# ---------------------------------------------------------------------------------------------------------
# Jobs and batches: a pure function of the plan.
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    method: str  # a Method name, or "none"
    pair: Pair

    @property
    def image(self) -> str:
        p = self.pair
        stem = f"{p.prompt.id}-s{p.seed}.png"
        return (
            f"images/{NONE}/{stem}" if self.method == NONE else f"images/{self.method}/{p.identity.id}/{stem}"
        )

    @property
    def score(self) -> str:
        p = self.pair
        return f"scores/{self.method}/{p.identity.id}/{p.prompt.id}-s{p.seed}.json"

    @property
    def none_image(self) -> str:
        return Job(NONE, self.pair).image


def mask_strip_path(image: Path) -> Path:
    return image.with_suffix(".masks.png")


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
def plan_record(benchmark: Benchmark, methods: Sequence[Method], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": benchmark.describe(),
        "methods": [m.to_dict() for m in methods],
        "generation": {k: v for k, v in sorted(settings.items())},
    }


def check_plan(out: Path, record: dict[str, Any]) -> None:
    """Write plan.json, or check an existing one matches: resuming into another plan's folder is refused."""
    path = out / "plan.json"
    text = json.dumps(record, indent=1, sort_keys=True, default=str) + "\n"
    if path.exists():
        if json.loads(path.read_text()) != json.loads(text):
            raise IdgenError(
                f"{out} holds results of a different plan (plan.json differs); use another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


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
    record = {"identity": identity.id, "photo": str(identity.path), "problem": why}
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


def generate_batches(
    out: Path,
    batches: Sequence[Batch],
    generator: EvalGenerator,
    features: dict[str, IdentityFeatures],
    report: RunReport,
    progress: bool = True,
) -> None:
    todo = [b for b in batches if any(not (out / j.image).exists() for j in b.jobs)]
    with _progress(sum(len(b.jobs) for b in todo), "generate", progress) as bar:
        for batch in todo:
            jobs = [j for j in batch.jobs if j.method == NONE or j.pair.identity.id in features]
            if not jobs:
                bar.update(len(batch.jobs))
                continue
            start = time.perf_counter()
            prompts = [j.pair.prompt.text for j in jobs]
            seeds = [j.pair.seed for j in jobs]
            batch_features = None
            if batch.method is not None:
                batch_features = IdentityFeatures.cat([features[j.pair.identity.id] for j in jobs])
            images, strips = generator.generate(prompts, seeds, batch_features, batch.method)
            for k, (job, image) in enumerate(zip(jobs, images, strict=True)):
                path = out / job.image
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if strips is not None:  # before the image: an image on disk means its strip is there
                        atomic_save_image(strips[k], mask_strip_path(path))
                    atomic_save_image(image, path)
                    report.generated += 1
            report.seconds_generating += time.perf_counter() - start
            bar.update(len(batch.jobs))


class _Cache:
    """Per-process memo of embeddings of files and texts (reference photos, no-id images, prompts)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], Any] = {}

    def get(self, kind: str, key: str, make: Callable[[Any], Any], arg: Any) -> Any:
        """make(arg), computed once per (kind, key)."""
        if (kind, key) not in self.values:
            self.values[(kind, key)] = make(arg)
        return self.values[(kind, key)]


def _faces(models: MetricModels, images: list[Image.Image]) -> list[Face | None]:
    assert models.faces is not None
    return [largest_face(found) for found in models.faces.faces(images)]


def _patch_tokens(clip_and_image: tuple[ImageTextModel, Image.Image]) -> Any:
    clip, image = clip_and_image
    return clip.patch_embeds([image])[0][0]  # (N, C), one image per call: independent of batching


def _one_face(models: MetricModels, image: Image.Image) -> Face | None:
    return _faces(models, [image])[0]


def score_batch(
    out: Path, jobs: Sequence[Job], models: MetricModels, cache: _Cache, identities: dict[str, IdentityPhoto]
) -> list[dict[str, Any]]:
    """Metric rows for jobs whose images all exist (checked by the caller)."""
    images = [load_image(out / j.image, what="generated image") for j in jobs]
    bases = [cache.get("image", j.none_image, load_image, out / j.none_image) for j in jobs]
    refs = [cache.get("ref", j.pair.identity.id, load_image, j.pair.identity.path) for j in jobs]
    rows: list[dict[str, Any]] = [
        {
            "method": j.method,
            "identity": j.pair.identity.id,
            "prompt": j.pair.prompt.id,
            "seed": j.pair.seed,
            "image": j.image,
            "none_image": j.none_image,
        }
        for j in jobs
    ]
    with_id = [j.method != NONE for j in jobs]
    if models.clip is not None:
        clip = models.clip
        emb = clip.image_embeds(images)
        text = torch.cat(
            [cache.get("text", j.pair.prompt.id, clip.text_embeds, [j.pair.prompt.text]) for j in jobs]
        )
        base_emb = torch.cat(
            [cache.get("clip", j.none_image, clip.image_embeds, [bases[k]]) for k, j in enumerate(jobs)]
        )
        ref_emb = torch.cat(
            [
                cache.get("clip-ref", j.pair.identity.id, clip.image_embeds, [refs[k]])
                for k, j in enumerate(jobs)
            ]
        )
        clip_t, clip_i, clip_i_ref = M.cosine(emb, text), M.cosine(emb, base_emb), M.cosine(emb, ref_emb)
        for k, row in enumerate(rows):
            row["clip_t"] = float(clip_t[k])
            row["clip_i_ref"] = float(clip_i_ref[k])
            if with_id[k]:
                row["clip_i"] = float(clip_i[k])
    faces = _faces(models, images) if models.faces is not None else None
    if faces is not None:
        one_face = partial(_one_face, models)
        base_faces = [cache.get("face", j.none_image, one_face, bases[k]) for k, j in enumerate(jobs)]
        ref_faces = [cache.get("face-ref", j.pair.identity.id, one_face, refs[k]) for k, j in enumerate(jobs)]
        for k, row in enumerate(rows):
            face = faces[k]
            row["face_found"] = face is not None
            row["ref_face_found"] = ref_faces[k] is not None
            ref_face, base_face = ref_faces[k], base_faces[k]
            if face is not None and ref_face is not None:
                row["facesim"] = float(M.cosine(face.embedding[None], ref_face.embedding[None])[0])
            if with_id[k] and face is not None and base_face is not None:
                row["antifacesim"] = float(M.cosine(face.embedding[None], base_face.embedding[None])[0])
    for name, scorer in models.scorers.items():
        values = scorer.score(images)
        for k, row in enumerate(rows):
            row[name] = float(values[k])
    if faces is None or not any(with_id):
        return rows
    index = [k for k in range(len(jobs)) if with_id[k]]
    # Background: outside the face of both the with-id and the no-id image.
    keeps = {k: M.background([faces[k], base_faces[k]], images[k].size) for k in index}
    for k in index:
        gen_px, base_px = np.array(images[k]), np.array(bases[k])
        rows[k]["contamination_px"] = M.pixel_contamination(gen_px, base_px, keeps[k])
        backdrop = identities[jobs[k].pair.identity.id].backdrop_rgb
        if backdrop is not None:
            gen_t, base_t = (torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in (gen_px, base_px))
            rows[k]["backdrop_shift"] = M.backdrop_shift(
                gen_t, base_t, torch.from_numpy(keeps[k]), torch.tensor(backdrop, dtype=torch.float32)
            )
    if models.clip is not None:
        clip = models.clip
        patches, grid = clip.patch_embeds([images[k] for k in index])
        # No-id images are shared by every method: their patch tokens are computed once per process.
        for n, k in enumerate(index):
            base_patches = cache.get("patches", jobs[k].none_image, _patch_tokens, (clip, bases[k]))
            patch_keep = M.patch_background(keeps[k], clip.view_box(images[k].size), grid)
            rows[k]["contamination_clip"] = M.patch_contamination(patches[n], base_patches, patch_keep)
    return rows


def score_all(
    out: Path,
    jobs: Sequence[Job],
    models: MetricModels,
    identities: dict[str, IdentityPhoto],
    report: RunReport,
    batch_size: int,
    progress: bool = True,
) -> None:
    # Fixed chunks of the plan-ordered jobs, as for generation: a resumed run scores every image in the
    # same batch as an uninterrupted one, so batched metric models give the same numbers.
    usable = [j for j in jobs if j.pair.identity.id not in report.problems]
    chunks = [usable[i : i + batch_size] for i in range(0, len(usable), batch_size)]
    todo = [c for c in chunks if any(not (out / j.score).exists() for j in c)]
    ready = [c for c in todo if all((out / j.image).exists() and (out / j.none_image).exists() for j in c)]
    report.pending_scores += sum(not (out / j.score).exists() for c in todo if c not in ready for j in c)
    cache = _Cache()
    with _progress(sum(len(c) for c in ready), "score", progress) as bar:
        for chunk in ready:
            t0 = time.perf_counter()
            rows = score_batch(out, chunk, models, cache, identities)
            for job, row in zip(chunk, rows, strict=True):
                path = out / job.score
                if path.exists():
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, json.dumps(row, sort_keys=True) + "\n")
                report.scored += 1
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
) -> RunReport:
    """Generate this shard's batches, then score its share; resumable. Factories are called only when needed.

    `barrier` (accelerate's wait_for_everyone) runs between generating and scoring with several processes."""
    out = Path(out)
    shard = shard or Shard()
    if len(set(m.name for m in methods)) != len(methods):
        raise IdgenError("the same method is listed twice")
    report = RunReport()
    start = time.perf_counter()  # model loading counts towards its phase
    gen = generator if isinstance(generator, EvalGenerator) else generator()
    report.seconds_generating += time.perf_counter() - start
    check_plan(out, plan_record(benchmark, methods, gen.settings))
    batches = [b for b in plan_batches(benchmark, methods, batch_size) if shard.owns(b.index)]
    needed = {j.pair.identity.id: j.pair.identity for b in batches if b.method is not None for j in b.jobs}
    start = time.perf_counter()
    features = encode_identities(out, list(needed.values()), gen, report)
    report.seconds_generating += time.perf_counter() - start
    generate_batches(out, batches, gen, features, report, progress)
    if barrier is not None:
        barrier()
    for problem in sorted((out / "problems").glob("*.json")) if (out / "problems").exists() else []:
        record = json.loads(problem.read_text())
        report.problems.setdefault(record["identity"], record["problem"])
    jobs = [j for k, j in enumerate(score_jobs(benchmark, methods)) if k % shard.count == shard.index]
    start = time.perf_counter()
    models = metric_models() if callable(metric_models) else metric_models
    report.seconds_scoring += time.perf_counter() - start
    report.skipped_metrics = dict(models.skipped)
    identities = {i.id: i for i in benchmark.identities}
    score_all(out, jobs, models, identities, report, batch_size, progress)
    timing = {
        "generated": report.generated,
        "scored": report.scored,
        "seconds_generating": report.seconds_generating,
        "seconds_scoring": report.seconds_scoring,
    }
    atomic_write_text(
        out / "timings" / f"shard-{shard.index}-of-{shard.count}.json", json.dumps(timing) + "\n"
    )
    return report


def iter_scores(out: Path, benchmark: Benchmark, methods: Sequence[Method]) -> Iterator[dict[str, Any]]:
    """Score rows in plan order (what exists; each image exactly once by construction)."""
    for job in score_jobs(benchmark, methods):
        path = out / job.score
        if path.exists():
            yield json.loads(path.read_text())
