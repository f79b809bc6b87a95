"""`idgen eval run|report`: the IBench protocol over the library's eval harness."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from idgen.cli.common import load_pipeline
from idgen.errors import IdgenError


def parse_shard(text: str) -> tuple[int, int]:
    index, slash, count = text.partition("/")
    try:
        if not slash:
            raise ValueError
        return int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must be i/n, got {text!r}") from None


def add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="the IBench protocol: generate, score and report (resumable, sharded)")
    p.add_argument("action", nargs="?", choices=["run", "report"], default="run",
                   help="run (default) or report (rebuild the report of --out)")  # fmt: skip
    p.add_argument("--benchmark", help="built-in benchmark: demo (100 pairs) or demo-quick (12 pairs)")
    p.add_argument("--photos", help="folder of identity photos (optional manifest.json with genders)")
    p.add_argument("--prompts", help="IBench prompts json, or a text file with one prompt per line")
    p.add_argument("--seed-policy", choices=["fixed", "per-prompt", "per-pair"], default="per-prompt")
    p.add_argument("--seed", type=int, default=42, help="base seed of the seed policy")
    p.add_argument("--methods", nargs="+", default=["uniform", "spatial"],
                   help="e.g. uniform spatial:preset=balanced,id_weight=0.8 (none always runs)")  # fmt: skip
    p.add_argument("--out", help="results folder (default: outputs/eval/<benchmark>)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard", type=parse_shard, help="i/n: this process's share (default: accelerate's)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("models under test (default: the embedded demo world)")
    g.add_argument("--flux", help="FLUX.1 pipeline folder or hub id")
    g.add_argument("--pulid", help="PuLID-FLUX checkpoint: file, folder or hub id")
    g.add_argument("--encoder", help="identity encoder: pulid (antelopev2 + EVA02-CLIP) or tiny-random")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--world-adapter", choices=["pulid", "pidiff"], default="pulid",
                   help="demo world: PuLID's adapter or PIDiff's W+ branch")  # fmt: skip
    m = p.add_argument_group("metric models (real models; the demo world uses its own evaluators)")
    m.add_argument("--clip-model", default="openai/clip-vit-large-patch14")
    m.add_argument("--face-model", default="antelopev2", help="antelopev2 (insightface) or dlib (offline)")
    m.add_argument("--face-root", help="insightface root holding models/antelopev2")
    m.add_argument("--aesthetic-head", help="LAION aesthetic linear head for CLIP ViT-L/14 (.pth)")
    m.add_argument("--iq", action="store_true", help="MUSIQ image quality through pyiqa")
    p.set_defaults(func=run_eval_command)


def run_eval_command(args: argparse.Namespace) -> int:
    import torch

    from idgen.eval.harness import (
        MetricOptions,
        evaluate,
        real_metric_models,
        resolve_benchmark,
        world_metric_models,
    )
    from idgen.eval.manifest import SeedPolicy, benchmark_from_record
    from idgen.eval.runner import FluxEvalGenerator, Method, Shard

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        raise IdgenError(f"--batch-size must be >= 1, got {args.batch_size}")
    world = args.flux is None and args.pulid is None and args.encoder is None
    if args.action == "report":
        from idgen.eval.report import write_report

        if not args.out:
            raise IdgenError("idgen eval report needs --out (a results folder)")
        out = Path(args.out)
        if not (out / "plan.json").is_file():
            raise IdgenError(f"no eval results in {out} (plan.json missing)")
        plan = json.loads((out / "plan.json").read_text())
        methods = [Method(m["mode"], m["id_weight"], m["preset"]) for m in plan["methods"]]
        write_report(out, benchmark_from_record(plan["benchmark"]), methods)
        print(out / "report.md")
        return 0
    methods = [Method.parse(spec) for spec in args.methods]
    out = Path(args.out or f"outputs/eval/{args.benchmark or Path(args.photos or 'photos').name}")
    benchmark = resolve_benchmark(
        args.benchmark, out, args.photos, args.prompts, SeedPolicy(args.seed_policy, args.seed)
    )
    if args.benchmark is not None and not world:
        raise IdgenError(
            "the built-in benchmarks are demo-world benchmarks; use --photos/--prompts with real models"
        )
    barrier = None
    if args.shard is not None:
        shard = Shard(*args.shard)
    else:
        shard = Shard.from_accelerate()
        if shard.count > 1:
            from accelerate import PartialState

            barrier = PartialState().wait_for_everyone
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if shard.count > 1 and device == "cuda":
        device = f"cuda:{shard.index % max(1, torch.cuda.device_count())}"
    if world:
        metric_factory: Any = world_metric_models
        face_model = "demo-world evaluator recogniser (not comparable to ArcFace)"
    else:
        options = MetricOptions(
            args.clip_model, args.face_model, args.face_root, args.aesthetic_head, args.iq, device
        )
        metric_factory = lambda: real_metric_models(options)  # noqa: E731
        face_model = (
            "dlib 128-d (offline; not comparable to ArcFace)"
            if args.face_model == "dlib"
            else args.face_model
        )
    run, summary = evaluate(
        out,
        benchmark,
        methods,
        lambda: FluxEvalGenerator(load_pipeline(args, device)),
        metric_factory,
        shard=shard,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        barrier=barrier,
        face_model=face_model,
    )
    for identity, why in run.problems.items():
        print(f"idgen: skipped identity {identity}: {why}", file=sys.stderr)
    for metric, why in run.skipped_metrics.items():
        print(f"idgen: skipped metric {metric}: {why}", file=sys.stderr)
    if run.pending_scores:
        print(f"idgen: {run.pending_scores} scores wait for other shards' no-id images; run again later",
              file=sys.stderr)  # fmt: skip
    print(f"generated {run.generated} images in {run.seconds_generating:.1f} s, scored {run.scored} in "
          f"{run.seconds_scoring:.1f} s")  # fmt: skip
    if summary is not None:
        print(out / "report.md")
    return 0
