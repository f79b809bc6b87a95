"""Step time and peak memory of SpatialID (`spatial`) against PuLID (`uniform`) and no identity.

One run measures all three on the same transformer, inputs and timesteps (the 25-step schedule
SpatialID's IBench runs use, so each stage gets its real share of steps), interleaving the modes
to cancel drift, and prints the overhead ratios.

    python benchmarks/step_overhead.py                    # tiny random models, CPU
    python benchmarks/step_overhead.py --full --device cuda --dtype bfloat16
        # full-size random FLUX (19/38 blocks, 3072 wide); --compile inductor: the same, compiled
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from typing import Any

import torch

from idgen.backbones.flux import FluxIdentityInjector, InjectionRun
from idgen.core.gate import SpatialMask, UniformMask
from idgen.core.schedule import TemporalSpatialScheduler
from idgen.models.pulid import PuLIDAdapter, PuLIDConfig
from idgen.pipelines.tiny import TINY_FLUX_TRANSFORMER, TINY_PULID

MODES = ("none", "uniform", "spatial")
FULL_FLUX = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)


def schedule_sigmas(steps: int, tokens: int) -> list[float]:
    """FLUX's shifted flow-matching sigmas (resolution-dependent shift), as FluxPipeline computes them."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
    scheduler.set_timesteps(steps, mu=mu)
    return [float(s) for s in scheduler.sigmas[:-1]]


def build(full: bool, device: str, dtype: torch.dtype) -> tuple[Any, PuLIDAdapter, dict[str, int]]:
    from diffusers import FluxTransformer2DModel

    config = FULL_FLUX if full else TINY_FLUX_TRANSFORMER
    pulid = PuLIDConfig() if full else TINY_PULID
    torch.manual_seed(0)
    with torch.device(device):
        transformer = FluxTransformer2DModel(**config).to(dtype).eval()  # type: ignore[arg-type]
        adapter = PuLIDAdapter(pulid).to(dtype).eval()
    return transformer, adapter, config  # type: ignore[return-value]


def inputs(
    config: dict[str, Any], height: int, width: int, device: str, dtype: torch.dtype
) -> dict[str, Any]:
    rows, cols = height // 16, width // 16
    ids = torch.zeros(rows * cols, 3, device=device)
    ids[:, 1] = torch.arange(rows, device=device).repeat_interleave(cols).float()
    ids[:, 2] = torch.arange(cols, device=device).repeat(rows).float()
    text_len = 128
    return dict(
        hidden_states=torch.randn(1, rows * cols, config["in_channels"], device=device, dtype=dtype),
        encoder_hidden_states=torch.randn(
            1, text_len, config["joint_attention_dim"], device=device, dtype=dtype
        ),
        pooled_projections=torch.randn(1, config["pooled_projection_dim"], device=device, dtype=dtype),
        img_ids=ids,
        txt_ids=torch.zeros(text_len, 3, device=device),
        guidance=torch.full((1,), 4.0, device=device, dtype=dtype),
    )


def make_run(mode: str, adapter: PuLIDAdapter, device: str, dtype: torch.dtype) -> InjectionRun | None:
    if mode == "none":
        return None
    c = adapter.config
    id_tokens = torch.randn(1, c.num_queries, c.output_dim, device=device, dtype=dtype)
    policy = SpatialMask(TemporalSpatialScheduler.from_preset("v1")) if mode == "spatial" else UniformMask()
    return InjectionRun(id_tokens=id_tokens, policy=policy)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def one_call(transformer: Any, injector: FluxIdentityInjector, run: InjectionRun | None, args: dict[str, Any],
             sigma: float, device: str) -> float:  # fmt: skip
    """Seconds of one transformer call at one timestep."""
    timestep = torch.full((1,), sigma, device=device, dtype=args["hidden_states"].dtype)
    if run is not None:
        run = InjectionRun(id_tokens=run.id_tokens, policy=run.policy)  # a fresh run: step 0 at this sigma
    sync(device)
    start = time.perf_counter()
    with injector.run(run) if run is not None else nullcontext():
        transformer(**args, timestep=timestep)
    sync(device)
    return time.perf_counter() - start


def measure(opts: argparse.Namespace) -> dict[str, Any]:
    """Per-step time of each mode: for every timestep of the schedule, the median over repeats of
    one call; modes alternate call by call in rotating order so drift and noise hit all alike."""
    dtype = getattr(torch, opts.dtype)
    transformer, adapter, config = build(opts.full, opts.device, dtype)
    injector = FluxIdentityInjector(transformer, adapter)
    if opts.compile != "none":  # after wrapping, as a user would; fullgraph: a graph break is an error
        transformer = torch.compile(transformer, fullgraph=True, backend=opts.compile)
    args = inputs(config, opts.height, opts.width, opts.device, dtype)
    sigmas = schedule_sigmas(opts.steps, (opts.height // 16) * (opts.width // 16))
    runs = {m: make_run(m, adapter, opts.device, dtype) for m in MODES}
    warm_up = sigmas if opts.compile != "none" else sigmas[:2]  # compiled: every stage's graph first
    for mode in MODES:
        for sigma in warm_up:
            one_call(transformer, injector, runs[mode], args, sigma, opts.device)
    times: dict[str, list[list[float]]] = {m: [[] for _ in sigmas] for m in MODES}
    for repeat in range(opts.repeats):
        for i, sigma in enumerate(sigmas):
            order = MODES[(repeat + i) % 3 :] + MODES[: (repeat + i) % 3]
            for mode in order:
                times[mode][i].append(one_call(transformer, injector, runs[mode], args, sigma, opts.device))
    result: dict[str, Any] = {m: sum(statistics.median(t) for t in times[m]) / len(sigmas) for m in MODES}
    if opts.device.startswith("cuda"):
        for mode in MODES:
            torch.cuda.reset_peak_memory_stats()
            for sigma in sigmas[:2]:
                one_call(transformer, injector, runs[mode], args, sigma, opts.device)
            result[f"peak_{mode}"] = torch.cuda.max_memory_allocated()
    return result


def peak_rss_child(opts: argparse.Namespace, mode: str) -> int:
    """Peak resident memory (bytes) of a fresh process that builds the models and runs `mode`."""
    cmd = [
        sys.executable,
        __file__,
        "--_memory-of",
        mode,
        "--height",
        str(opts.height),
        "--width",
        str(opts.width),
        "--steps",
        str(opts.steps),
        "--dtype",
        opts.dtype,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def memory_child(opts: argparse.Namespace) -> None:
    import resource

    if opts.threads:
        torch.set_num_threads(opts.threads)
    dtype = getattr(torch, opts.dtype)
    transformer, adapter, config = build(False, "cpu", dtype)
    injector = FluxIdentityInjector(transformer, adapter)
    args = inputs(config, opts.height, opts.width, "cpu", dtype)
    sigmas = schedule_sigmas(opts.steps, (opts.height // 16) * (opts.width // 16))
    run = make_run(opts.memory_of, adapter, "cpu", dtype)
    for sigma in sigmas:
        one_call(transformer, injector, run, args, sigma, "cpu")
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="full-size FLUX.1 shapes (needs a GPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    p.add_argument("--compile", default="none", choices=("none", "inductor", "eager"),
                   help="torch.compile the wrapped transformer with this backend")  # fmt: skip
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--_memory-of", dest="memory_of", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.memory_of:
        memory_child(opts)
        return
    if opts.threads:
        # On a shared CPU, intra-op threads stall on tiny ops whenever a core is taken: 1 thread is steadier.
        torch.set_num_threads(opts.threads)
    result = measure(opts)
    if not opts.device.startswith("cuda"):
        for mode in MODES:
            result[f"peak_{mode}"] = peak_rss_child(opts, mode)
    size = (
        "full-size FLUX.1 (19/38 blocks, 3072 wide)"
        if opts.full
        else "tiny random FLUX (3/5 blocks, 32 wide)"
    )
    machine = (
        torch.cuda.get_device_name() if opts.device.startswith("cuda") else platform.processor() or "CPU"
    )
    print(
        f"{size}, {opts.width}x{opts.height}, {opts.steps} steps, {opts.dtype}, {opts.device} ({machine}, "
        f"{torch.get_num_threads()} threads), median of {opts.repeats} per timestep"
        + ("" if opts.compile == "none" else f", torch.compile backend={opts.compile}")
    )
    memory = "peak GPU memory" if opts.device.startswith("cuda") else "peak RSS"
    for mode in MODES:
        peak = result[f"peak_{mode}"] / 2**20
        print(f"  {mode:8s} {result[mode] * 1e3:9.2f} ms/step   {memory} {peak:9.1f} MiB")
    result["spatial_over_uniform"] = result["spatial"] / result["uniform"]
    result["uniform_over_none"] = result["uniform"] / result["none"]
    print(
        f"  step time  spatial / uniform = {result['spatial_over_uniform']:.4f} "
        f"({(result['spatial_over_uniform'] - 1) * 100:+.2f}%)"
    )
    print(f"  step time  uniform / none    = {result['uniform_over_none']:.4f}")
    print(f"  memory     spatial / uniform = {result['peak_spatial'] / result['peak_uniform']:.4f}")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
