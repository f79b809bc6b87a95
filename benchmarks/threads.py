"""Wall time of `idgen generate` on the demo world with one and with two CPU threads, on an idle machine
and with busy processes competing for the cores, run in turn (1, 2, 1, 2, ...) so drift hits both.

    python benchmarks/threads.py                  # 3 runs each, idle and with 2 busy processes
    python benchmarks/threads.py --runs 5 --busy 0 1 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1] / "src/idgen/world/assets/references/test_000.png"


def busy(stop: mp.Event) -> None:  # type: ignore[valid-type]
    x = 0
    while not stop.is_set():  # type: ignore[attr-defined]
        x = (x * 1103515245 + 12345) % 2**31


def generate_seconds(threads: int, out: Path) -> float:
    argv = [sys.executable, "-m", "idgen.cli", "generate", "--id-image", str(REFERENCE), "--prompt",
            "a person in a park", "--out", str(out), "--overwrite", "--threads", str(threads)]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


def measure(runs: int, busy_processes: int, out: Path) -> dict[int, list[float]]:
    stop = mp.Event()
    workers = [mp.Process(target=busy, args=(stop,), daemon=True) for _ in range(busy_processes)]
    for w in workers:
        w.start()
    try:
        times: dict[int, list[float]] = {1: [], 2: []}
        generate_seconds(1, out)  # warm the file cache
        for _ in range(runs):
            for threads in (1, 2):
                times[threads].append(generate_seconds(threads, out))
        return times
    finally:
        stop.set()
        for w in workers:
            w.join()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 2], help="busy processes in each setting")
    args = parser.parse_args()
    print("| busy processes | 1 thread (s, median) | 2 threads (s, median) | 2 / 1 |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for count in args.busy:
            times = measure(args.runs, count, Path(folder) / "out.png")
            one, two = statistics.median(times[1]), statistics.median(times[2])
            print(f"| {count} | {one:.2f} | {two:.2f} | {two / one:.2f} |", flush=True)


if __name__ == "__main__":
    main()
