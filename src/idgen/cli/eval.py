"""`idgen eval run|report`: the IBench protocol over the library's eval harness.

Settings precedence (documented in --help and docs/eval.md): the model's defaults < --protocol < explicit
flags. The demo world registers its benchmarks and evaluators into eval from here (eval never imports it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from idgen.cli.common import add_model_arguments, load_pipeline, model_defaults
from idgen.errors import IdgenError
from idgen.pipelines.lowvram import NO_QUANTIZE
from idgen.pipelines.names import DEFAULT_BACKBONE, IDENTITY_MODES, SD15_BACKBONE

TINY_SAMPLING = {"width": 64, "height": 64}  # the tiny random models' own size (FLUX's 1024 is for real ones)


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
                   help="run (default) or report (rebuild --out's report, from any directory)")  # fmt: skip
    _add_benchmark_flags(p)
    _add_setting_flags(p)
    p.add_argument("--out", help="results folder (default: outputs/eval/<benchmark>)")
    p.add_argument("--new-run", action="store_true",
                   help="if --out holds another plan, use the first free <out>-2, <out>-3, ...")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, help="recorded in the plan: a resume must match")
    p.add_argument("--shard", type=parse_shard, help="i/n: this process's share (default: accelerate's)")
    p.add_argument("--no-progress", action="store_true")
    add_model_arguments(p.add_argument_group("models under test (default: the embedded demo world)"))
    m = p.add_argument_group("metric models (real models; the demo world uses its own evaluators)")
    m.add_argument("--clip-model", default="openai/clip-vit-large-patch14")
    m.add_argument("--face-model", default="antelopev2", help="antelopev2 (insightface) or dlib (offline)")
    m.add_argument("--face-root", help="insightface root holding models/antelopev2")
    m.add_argument("--aesthetic-head", help="LAION aesthetic linear head for CLIP ViT-L/14 (.pth)")
    m.add_argument("--iq", action="store_true", help="MUSIQ image quality through pyiqa")
    m.add_argument("--iq-mode", choices=["ibench", "vbench"], default=None,
                   help="MUSIQ input: ibench (default; raw 0-255 full resolution, as IBench's code runs) "
                        "or vbench (longer side 512, 0-1)")  # fmt: skip
    m.add_argument("--iq-weights", help="local MUSIQ SPAQ checkpoint (needed with HF_HUB_OFFLINE=1)")
    p.set_defaults(func=run_eval_command)


def _add_benchmark_flags(p: Any) -> None:
    p.add_argument(
        "--benchmark",
        help="built-in benchmark: demo (100 held-out pairs), demo-quick (12) or "
        "demo-validation (100 validation pairs, for choosing settings)",
    )
    p.add_argument("--photos", help="folder of identity photos (optional manifest.json with genders)")
    p.add_argument("--prompts", help="IBench prompts json (e.g. human_longer_template.json) or a .txt")
    p.add_argument("--limit-photos", type=int, help="only the first N photos (sorted by file name)")
    p.add_argument("--limit-prompts", type=int, help="only the first M prompts (file order)")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="keep byte-identical photos as separate identities (reported anyway)")  # fmt: skip


def _add_setting_flags(p: Any) -> None:
    p.add_argument("--protocol", metavar="NAME",
                   help="a paper's settings and methods. spatialid-ibench: 896x1152, 25 steps, guidance 4, "
                        "seed 42 fixed, methods uniform, spatial, spatial:preset=balanced. Explicit flags "
                        "win; tiny and demo models keep their own size unless it is given")  # fmt: skip
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--steps", type=int, help="denoising steps")
    p.add_argument("--guidance", type=float, help="FLUX distilled guidance")
    p.add_argument("--true-cfg", type=float, help="true CFG scale (1 = off)")
    p.add_argument("--seed-policy", choices=["fixed", "per-prompt", "per-pair"], default=None,
                   help="default per-prompt (fixed with --protocol spatialid-ibench)")  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="base seed of the seed policy (default 42)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="e.g. uniform spatial:preset=balanced,id_weight=0.8 (none always runs; "
                        "default uniform spatial, or the protocol's)")  # fmt: skip


def _check_numbers(args: argparse.Namespace) -> None:
    import math

    if args.batch_size < 1:
        raise IdgenError(f"--batch-size must be >= 1, got {args.batch_size}")
    for flag in ("width", "height", "steps", "limit_photos", "limit_prompts", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise IdgenError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    for flag in ("guidance", "true_cfg"):
        value = getattr(args, flag)
        if value is not None and (not math.isfinite(value) or value < 0):
            raise IdgenError(f"--{flag.replace('_', '-')} must be a finite number >= 0, got {value}")
    if args.backbone == SD15_BACKBONE:
        from idgen.pipelines.pidiff_sd15 import flux_only_arguments, flux_only_refusal

        if flux_only_arguments({"true_cfg_scale": args.true_cfg}):
            raise IdgenError(flux_only_refusal(["--true-cfg"], f"--backbone {SD15_BACKBONE}"))


def report_command(args: argparse.Namespace) -> int:
    from idgen.eval.folder import read_plan
    from idgen.eval.manifest import benchmark_from_record
    from idgen.eval.report import write_report
    from idgen.eval.runner import Method

    if not args.out:
        raise IdgenError("idgen eval report needs --out (a results folder)")
    out = Path(args.out)
    plan = read_plan(out)
    methods = [Method(m["mode"], m["id_weight"], m["preset"]) for m in plan["methods"]]
    summary = write_report(out, benchmark_from_record(plan["benchmark"], out), methods)
    print(out / "report.md")
    if not _evaluated(summary):
        print(f"idgen: error: nothing was evaluated in {out} (see report.md for why)", file=sys.stderr)
        return 1
    return 0


def _evaluated(summary: dict[str, Any] | None) -> bool:
    return summary is None or any(e["images_scored"] for e in summary["methods"].values())


def _world(args: argparse.Namespace) -> bool:
    return args.flux is None and args.pulid is None and args.encoder is None


def _model_defaults(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """The model's own sampling defaults, and whether it is a small model (tiny random or demo world)."""
    from idgen.api import TINY_RANDOM

    defaults = model_defaults(args)
    if _world(args):
        return defaults, True
    small = args.flux == TINY_RANDOM
    if small and args.backbone != SD15_BACKBONE:  # tiny FLUX at its own size (FLUX's 1024 is for real ones)
        defaults |= TINY_SAMPLING
    return defaults, small


def _settings(
    args: argparse.Namespace, chosen: Any, sampling: dict[str, Any], metrics: Any
) -> dict[str, Any]:
    """What the plan keys generation on: protocol, sampling, explicit flags, models, metric models."""
    from idgen.eval.protocols import SAMPLING_FLAGS, source_key

    if _world(args):
        from idgen.world.bundle import plan_models

        models: dict[str, Any] = plan_models(args.world_adapter)
    else:
        models = {k: source_key(getattr(args, k)) for k in ("flux", "pulid", "encoder")}
        models["dtype"] = args.dtype
        # Recorded where not the default, so that the default's plans stay as they were and resume.
        if args.backbone != DEFAULT_BACKBONE:
            models["backbone"] = args.backbone
        if args.transformer is not None:
            models["transformer"] = source_key(args.transformer)
    if args.quantize != NO_QUANTIZE:
        models["quantize"] = args.quantize
    return {
        "protocol": chosen.name if chosen else None,
        "sampling": sampling,
        "explicit": sorted(flag for flag, _ in SAMPLING_FLAGS if getattr(args, flag) is not None),
        "models": models,
        "metric_models": metrics,
    }


def _metric_factory(args: argparse.Namespace, device: str, iq_mode: str) -> tuple[Any, Any]:
    from idgen.eval.harness import MetricOptions, metric_model_set, real_metric_models

    if _world(args):
        return metric_model_set("demo-world"), "demo-world evaluators"

    options = MetricOptions(
        args.clip_model, args.face_model, args.face_root, args.aesthetic_head, args.iq, device, iq_mode,
        args.iq_weights,
    )  # fmt: skip
    return (lambda: real_metric_models(options)), options.record()


def _shard(args: argparse.Namespace) -> tuple[Any, Any]:
    from idgen.eval.runner import Shard

    if args.shard is not None:
        return Shard(*args.shard), None
    shard = Shard.from_accelerate()
    if shard.count > 1:
        from accelerate import PartialState

        return shard, PartialState().wait_for_everyone
    return shard, None


def run_eval_command(args: argparse.Namespace) -> int:

    import idgen.world.eval_plugin  # noqa: F401  (registers the demo world's benchmarks)

    _check_numbers(args)
    if args.action == "report":
        return report_command(args)
    return _run(args)


def _methods_and_seeds(args: argparse.Namespace, chosen: Any) -> tuple[list[Any], Any]:
    """--methods and the seed policy: explicit flags, else the protocol's, else the defaults."""
    from idgen.eval.manifest import SeedPolicy
    from idgen.eval.runner import Method

    specs = args.methods or (chosen.methods if chosen else list(IDENTITY_MODES))
    methods = [Method.parse(spec) for spec in specs]
    if len({m.name for m in methods}) != len(methods):
        raise IdgenError("the same method is listed twice in --methods")
    policy = args.seed_policy or (chosen.seed_policy if chosen else "per-prompt")
    seed = args.seed if args.seed is not None else (chosen.seed if chosen else 42)
    return methods, SeedPolicy(policy, seed)


def _device(args: argparse.Namespace, shard: Any) -> str:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if shard.count > 1 and device == "cuda":
        device = f"cuda:{shard.index % max(1, torch.cuda.device_count())}"
    return str(device)


def _benchmark(args: argparse.Namespace, seeds: Any, out: Path) -> Any:
    from idgen.eval.harness import resolve_benchmark

    if args.benchmark is not None and not _world(args):
        raise IdgenError(
            "the built-in benchmarks are demo-world benchmarks; use --photos/--prompts with real models"
        )
    bench = resolve_benchmark(args.benchmark, out, args.photos, args.prompts, seeds, args.keep_duplicates)
    return bench.limited(args.limit_photos, args.limit_prompts)


def _run(args: argparse.Namespace) -> int:
    from idgen.api import check_offload
    from idgen.eval.harness import evaluate
    from idgen.eval.protocols import SAMPLING_FLAGS, protocol, resolve_sampling
    from idgen.eval.runner import FluxEvalGenerator, plan_record

    chosen = protocol(args.protocol)
    methods, seeds = _methods_and_seeds(args, chosen)
    out = Path(args.out or f"outputs/eval/{args.benchmark or Path(args.photos or 'photos').name}")
    benchmark = _benchmark(args, seeds, out)
    shard, barrier = _shard(args)
    device = _device(args, shard)
    check_offload(args.offload, device, args.backbone)  # before the plan is written or a model loads
    defaults, small = _model_defaults(args)
    sampling = resolve_sampling(defaults, chosen, {k: getattr(args, f) for f, k in SAMPLING_FLAGS}, small)
    metric_factory, metric_record = _metric_factory(
        args, device, args.iq_mode or (chosen.iq_mode if chosen else "ibench")
    )
    settings = _settings(args, chosen, sampling, metric_record)
    if args.new_run:
        from idgen.eval.folder import next_free_folder

        out = next_free_folder(out, plan_record(benchmark, methods, settings, args.batch_size, out))
        benchmark = _benchmark(args, seeds, out)
    run, summary = evaluate(
        out,
        benchmark,
        methods,
        lambda: FluxEvalGenerator(_quiet(load_pipeline(args, device), args.no_progress), sampling),
        metric_factory,
        shard=shard,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        barrier=barrier,
        settings=settings,
    )
    return _finish(out, run, summary)


def _quiet(pipe: Any, quiet: bool) -> Any:
    """--no-progress also silences the pipeline's per-call step bars."""
    if quiet:
        pipe.set_progress_bar_config(disable=True)
    return pipe


def _finish(out: Path, run: Any, summary: dict[str, Any] | None) -> int:
    for identity, why in run.problems.items():
        print(f"idgen: skipped identity {identity}: {why}", file=sys.stderr)
    for metric, why in run.skipped_metrics.items():
        print(f"idgen: metric {metric} not computed: {why}", file=sys.stderr)
    if run.pending_scores:
        print(f"idgen: {run.pending_scores} scores wait for other shards' no-id images; run again later",
              file=sys.stderr)  # fmt: skip
    print(f"generated {run.generated} images in {run.seconds_generating:.1f} s, scored {run.scored} in "
          f"{run.seconds_scoring:.1f} s")  # fmt: skip
    if summary is not None:
        print(out / "report.md")
    if not _evaluated(summary):
        print(f"idgen: error: nothing was evaluated in {out} (see report.md for why)", file=sys.stderr)
        return 1
    return 0
