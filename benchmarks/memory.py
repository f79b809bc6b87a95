"""Peak memory and step time of each quantisation and offload option, against the plain pipeline, in one run.

    python benchmarks/memory.py                        # CPU, tiny random models: shows the mechanism
    python benchmarks/memory.py --full --device cuda   # full-size random FLUX.1-dev transformer, 1024x1024

CPU: "weights" is the transformer's bytes as stored (quantised tensors counted by their parts) and "peak"
the process's peak resident memory over the option's run, above what it was before (psutil). CUDA:
torch.cuda.max_memory_allocated over the run. Step time: mean over the timed call's denoiser steps after
one warm-up call. --full builds FLUX.1-dev's transformer (19 double, 38 single blocks, 3072 wide) with
random weights and a full-size PuLID adapter, and times one identity-injected denoiser call per step.
"""

from __future__ import annotations

import argparse
import gc
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from idgen.io import atomic_write_text
from idgen.pipelines.lowvram import QUANTIZE_CHOICES, check_quantize, quantize_transformer

OFFLOADS = ("model-offload", "sequential-offload", "group-offload", "group-offload-stream")
FLUX1_DEV: dict[str, Any] = dict(
    num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, in_channels=64, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)  # fmt: skip
FULL_MODEL: tuple[dict[str, Any], Any] = (FLUX1_DEV, None)  # None: PuLID-FLUX's released sizes


def tensor_bytes(tensor: Any) -> int:
    """Bytes a tensor holds; a quantised tensor subclass is counted by its inner tensors."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None and type(tensor) is not torch.nn.Parameter:
        return sum(tensor_bytes(getattr(tensor, name)) for name in flatten()[0])
    return tensor.numel() * tensor.element_size()


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(tensor_bytes(t) for t in [*module.parameters(), *module.buffers()])


@contextmanager
def peak_memory(device: str) -> Iterator[dict[str, float]]:
    """{"peak_mb": ...}: the peak over the block, above the start (RSS sampled every 5 ms on CPU)."""
    result: dict[str, float] = {}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        yield result
        torch.cuda.synchronize()
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return
    import psutil

    process, stop, peak = psutil.Process(), threading.Event(), [0]
    start = process.memory_info().rss

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["peak_mb"] = max(0, peak[0] - start) / 2**20


def tiny_pipeline(option: str, device: str) -> Any:
    from idgen.pipelines.pulid_flux import IdentityFluxPipeline
    from idgen.pipelines.tiny import tiny_flux_pipeline, tiny_identity_encoder, tiny_pulid_adapter

    flux = tiny_flux_pipeline(0).to(device)
    pipe = IdentityFluxPipeline(flux, tiny_pulid_adapter(0), tiny_identity_encoder(0))
    apply_option(flux, pipe.injector.transformer, option, device)
    return pipe


def apply_option(flux: Any, transformer: Any, option: str, device: str) -> None:
    """Quantise, or offload through diffusers' own methods (an offload needs an accelerator). Without a
    pipeline (flux=None, --full), the transformer alone is offloaded with accelerate's hooks."""
    if option in QUANTIZE_CHOICES:
        quantize_transformer(transformer, option)
    elif option == "model-offload" and flux is None:
        from accelerate import cpu_offload_with_hook

        cpu_offload_with_hook(transformer, torch.device(device))
    elif option == "model-offload":
        flux.enable_model_cpu_offload(device=device)
    elif option == "sequential-offload" and flux is None:
        from accelerate import cpu_offload

        cpu_offload(transformer, torch.device(device))
    elif option == "sequential-offload":
        flux.enable_sequential_cpu_offload(device=device)
    elif option in ("group-offload", "group-offload-stream"):  # stream: copies overlap compute (pinned)
        transformer.enable_group_offload(torch.device(device), offload_device=torch.device("cpu"),
                                         offload_type="block_level", num_blocks_per_group=1,
                                         use_stream=option == "group-offload-stream")  # fmt: skip


def unavailable(option: str, device: str) -> str | None:
    """Why an option cannot run here, or None."""
    if option in OFFLOADS and not device.startswith("cuda"):
        return "offloading to the CPU needs an accelerator device"
    try:
        check_quantize(option if option in QUANTIZE_CHOICES else "none", device)
    except Exception as error:
        return str(error)
    return None


def timed_steps(call: Callable[[], Any], steps: int, device: str) -> float:
    call()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    call()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def tiny_row(option: str, args: argparse.Namespace) -> dict[str, Any]:
    from idgen.identity.base import IdentityFeatures
    from idgen.pipelines.tiny import TINY_PULID

    g = torch.Generator().manual_seed(1)
    vit_hidden = [torch.randn(1, 17, TINY_PULID.vit_dim, generator=g) for _ in range(5)]
    features = IdentityFeatures(torch.randn(1, TINY_PULID.id_dim, generator=g), vit_hidden)
    with peak_memory(args.device) as peak:
        pipe = tiny_pipeline(option, args.device)

        def call() -> Any:
            size = dict(height=args.size, width=args.size, num_inference_steps=args.steps)
            return pipe("a photo of a person", id_features=features, mode="spatial", seed=0,
                        output_type="latent", **size)  # fmt: skip

        step_s = timed_steps(call, args.steps, args.device)
    return dict(weights_mb=weight_bytes(pipe.injector.transformer) / 2**20, step_s=step_s, **peak)


def full_row(option: str, args: argparse.Namespace) -> dict[str, Any]:
    """FLUX.1-dev's transformer with random bf16 weights and a full-size PuLID adapter (FULL_MODEL): one
    injected denoiser call per step at args.size. Text encoders, VAE and identity encoders are left out:
    the README's estimate adds their weights from parameter counts."""
    from diffusers import FluxTransformer2DModel

    from idgen.backbones.flux import FluxIdentityInjector, InjectionRun
    from idgen.models.pulid import PuLIDAdapter

    device, dtype = args.device, torch.bfloat16
    flux_config, pulid_config = FULL_MODEL
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bf16 directly: an fp32 FLUX.1-dev would take 48 GB
    try:
        with torch.device("cpu" if option in OFFLOADS else device):
            transformer: Any = FluxTransformer2DModel(**flux_config).eval()
        adapter = PuLIDAdapter(pulid_config).to(device).eval()
    finally:
        torch.set_default_dtype(previous)
    injector = FluxIdentityInjector(transformer, adapter)
    apply_option(None, transformer, option, device)
    inputs = full_inputs(transformer.config, args.size, device, dtype)
    c = adapter.config
    run = InjectionRun(id_tokens=torch.randn(1, c.num_queries, c.output_dim, device=device, dtype=dtype))

    @torch.no_grad()
    def call() -> Any:
        for _ in range(args.steps):
            with injector.run(run):
                transformer(**inputs)
            run.end_step()

    with peak_memory(device) as peak:
        step_s = timed_steps(call, args.steps, device)
    return dict(weights_mb=weight_bytes(transformer) / 2**20, step_s=step_s, **peak)


def full_inputs(config: Any, size: int, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """One denoiser call's inputs: a size x size image (a token per 16x16 pixels), 512 text tokens."""
    side, text = size // 16, 512
    img_ids = torch.zeros(side * side, 3, device=device)
    img_ids[:, 1] = torch.arange(side, device=device).repeat_interleave(side)
    img_ids[:, 2] = torch.arange(side, device=device).repeat(side)
    return dict(
        hidden_states=torch.randn(1, side * side, config.in_channels, device=device, dtype=dtype),
        encoder_hidden_states=torch.randn(1, text, config.joint_attention_dim, device=device, dtype=dtype),
        pooled_projections=torch.randn(1, config.pooled_projection_dim, device=device, dtype=dtype),
        timestep=torch.tensor([1.0], device=device, dtype=dtype),
        guidance=torch.tensor([3.5], device=device, dtype=dtype),
        img_ids=img_ids,
        txt_ids=torch.zeros(text, 3, device=device),
    )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="full-size random FLUX.1-dev transformer")
    p.add_argument("--device", default="cpu")
    p.add_argument("--options", nargs="+", default=list(QUANTIZE_CHOICES) + list(OFFLOADS))
    p.add_argument("--steps", type=int, default=None, help="default: 4 (tiny), 2 (full)")
    p.add_argument("--size", type=int, default=None, help="default: 128 (tiny), 1024 (full)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    args.steps = args.steps or (2 if args.full else 4)
    args.size = args.size or (1024 if args.full else 128)
    measure = full_row if args.full else tiny_row
    if not args.full:
        measure("none", args)  # imports and first allocations are not any option's memory
    rows = []
    for option in args.options:
        reason = unavailable(option, args.device)
        row = dict(option=option, skipped=reason) if reason else dict(option=option, **measure(option, args))
        rows.append(row)
        print(format_row(row, rows[0]), flush=True)
        if args.json:  # after every row, atomically: a run stopped at a time limit keeps what it measured
            atomic_write_text(args.json, json.dumps(rows, indent=1))
        gc.collect()
    return rows


def format_row(row: dict[str, Any], plain: dict[str, Any]) -> str:
    if row.get("skipped"):
        return f"{row['option']:<20} skipped: {row['skipped']}"
    ratio = row["step_s"] / plain["step_s"] if plain.get("step_s") else float("nan")
    return (f"{row['option']:<20} weights {row['weights_mb']:9.2f} MiB  peak {row['peak_mb']:9.1f} MiB  "
            f"step {row['step_s'] * 1000:8.1f} ms  ({ratio:.2f}x plain)")  # fmt: skip


if __name__ == "__main__":
    main()
