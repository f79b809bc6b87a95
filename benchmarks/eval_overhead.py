"""How much of an eval run the metrics take, on the demo world (target: at most 25%).

    python benchmarks/eval_overhead.py [--benchmark demo-quick] [--threads 1]

Runs the whole harness into a fresh temporary folder and prints the seconds spent generating (pipeline
loading, identity encoding, sampling) and scoring (metric model loading and every metric), and the ratio.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--benchmark", default="demo-quick", choices=["demo-quick", "demo"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from idgen.eval.harness import evaluate
    from idgen.eval.runner import FluxEvalGenerator, Method
    from idgen.world.bundle import load_world
    from idgen.world.eval_plugin import builtin, world_metric_models

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        bench = builtin(args.benchmark, out / "references")
        start = time.perf_counter()
        run, _ = evaluate(
            out,
            bench,
            [Method("uniform"), Method("spatial")],
            lambda: FluxEvalGenerator(load_world()),
            world_metric_models,
            batch_size=args.batch_size,
            progress=False,
        )
        total = time.perf_counter() - start
    gen, score = run.seconds_generating, run.seconds_scoring
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} thread(s)")
    print(f"benchmark {args.benchmark}: {run.generated} images generated, {run.scored} scored")
    rest = total - gen - score
    print(f"generating {gen:.1f} s | scoring {score:.1f} s | report {rest:.1f} s | total {total:.1f} s")
    print(f"metrics share of generate+score: {score / (gen + score):.1%} (target <= 25%)")


if __name__ == "__main__":
    main()
