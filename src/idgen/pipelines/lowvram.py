"""Low-VRAM FLUX transformers: fp8 storage, int8 or nf4 weights, GGUF files.

Each scheme quantises a transformer already loaded (in place), through the backend diffusers itself uses
for it; the identity networks keep their own dtype (see backbones/flux.py), so any of these can be wrapped.

    fp8          diffusers' layerwise casting: weights stored in float8_e4m3fn, cast to the compute dtype
                 layer by layer (no extra package)
    int8         torchao int8 weight-only
    int8-quanto  optimum-quanto qint8 weights
    fp8-quanto   optimum-quanto qfloat8 weights
    nf4          bitsandbytes 4-bit NormalFloat (Linear4bit) on the blocks' linear layers

One transformer file in place of the folder's (a published GGUF such as FLUX.1-dev Q4_K_S, or a single
safetensors file such as flux1-dev.safetensors or ComfyUI's fp8 one) is loaded with `load_transformer_file`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from idgen.errors import CheckpointError, IdgenError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "QUANTIZE_CHOICES",
    "check_quantize",
    "check_transformer_file",
    "load_gguf_transformer",
    "load_transformer_file",
    "quantize_transformer",
]

NONE = "none"
NO_QUANTIZE = NONE
# scheme -> (module that must import, the pip requirement that brings it)
PACKAGES: dict[str, tuple[str, str]] = {
    "int8": ("torchao", "torchao>=0.13"),
    "int8-quanto": ("optimum.quanto", "optimum-quanto>=0.2.7"),
    "fp8-quanto": ("optimum.quanto", "optimum-quanto>=0.2.7"),
    "nf4": ("bitsandbytes", "bitsandbytes>=0.46"),
}
QUANTIZE_CHOICES = (NONE, "fp8", "int8", "int8-quanto", "fp8-quanto", "nf4")
GGUF_PACKAGE = ("gguf", "gguf>=0.10")


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package (optimum)
        return False


def missing_package(what: str, module: str, requirement: str) -> IdgenError:
    return IdgenError(
        f"{what} needs the {requirement.split('>')[0]} package: pip install '{requirement}' "
        f"(or pip install 'idgen[lowvram]')"
    )


def check_quantize(scheme: str, device: Any = "cpu", backbone: str = "flux-pulid") -> None:
    """Refuse, in one line and before any model loads, a scheme unknown or not served here."""
    if scheme not in QUANTIZE_CHOICES:
        raise IdgenError(f"unknown quantisation {scheme!r}; choose one of {', '.join(QUANTIZE_CHOICES)}")
    if scheme != NONE and not backbone.startswith("flux"):
        raise IdgenError(f"--quantize {scheme} applies to the FLUX backbones only, not {backbone!r}")
    if scheme in PACKAGES and not installed(PACKAGES[scheme][0]):
        raise missing_package(f"--quantize {scheme}", *PACKAGES[scheme])
    if scheme == "fp8" and str(device).split(":")[0] == "mps":
        raise IdgenError("--quantize fp8 cannot run on mps (no float8 storage there); use int8 or none")


def quantize_transformer(transformer: nn.Module, scheme: str) -> nn.Module:
    """Quantise a FLUX transformer in place (and return it); "none" leaves it as it is."""
    check_quantize(scheme, next(transformer.parameters()).device)
    QUANTIZERS[scheme](transformer)
    return transformer


def quantize_pipeline(pipe: Any, scheme: str) -> Any:
    """Quantise an identity pipeline's FLUX transformer in place (and return the pipeline)."""
    if scheme == NONE:
        return pipe
    transformer = getattr(getattr(pipe, "flux", None), "transformer", None)
    if transformer is None:
        raise IdgenError(f"--quantize {scheme} applies to the FLUX backbones only")
    quantize_transformer(transformer, scheme)
    return pipe


def _fp8(transformer: Any) -> None:
    import torch

    from idgen.backbones.flux import compute_dtype

    transformer.enable_layerwise_casting(
        storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype(transformer)
    )


def _torchao_int8(transformer: nn.Module) -> None:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(transformer, Int8WeightOnlyConfig())


def _quanto(weights: str) -> Callable[[nn.Module], None]:
    def quantize(transformer: nn.Module) -> None:
        from optimum import quanto

        quanto.quantize(transformer, weights=getattr(quanto, weights))
        quanto.freeze(transformer)

    return quantize


def _nf4(transformer: nn.Module) -> None:
    """Each linear layer of the blocks becomes a bitsandbytes Linear4bit (nf4, computing in the
    transformer's dtype); the embedders and the output projection stay as they are. Moving a layer's
    weight to its device quantises it."""
    import bitsandbytes as bnb

    from idgen.backbones.flux import compute_dtype

    dtype = compute_dtype(transformer)
    for blocks in (transformer.transformer_blocks, transformer.single_transformer_blocks):
        for parent, name, linear in linear_layers(blocks):  # type: ignore[arg-type]
            device = linear.weight.device
            layer = bnb.nn.Linear4bit(
                linear.in_features, linear.out_features, bias=linear.bias is not None,
                compute_dtype=dtype, quant_type="nf4", device=device,
            )  # fmt: skip
            layer.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type="nf4")
            layer.bias = linear.bias
            setattr(parent, name, layer.to(device))


def linear_layers(module: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute name, layer) of each plain nn.Linear under `module`."""
    from torch import nn

    return [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]


QUANTIZERS: dict[str, Callable[[Any], None]] = {
    NONE: lambda transformer: None,
    "fp8": _fp8,
    "int8": _torchao_int8,
    "int8-quanto": _quanto("qint8"),
    "fp8-quanto": _quanto("qfloat8"),
    "nf4": _nf4,
}


# One transformer file in place of a FLUX folder's: what the community publishes for small GPUs.
GGUF_SUFFIX = ".gguf"
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
TRANSFORMER_FILE_SUFFIXES = (*SAFETENSORS_SUFFIXES, GGUF_SUFFIX)
# A FLUX transformer's tensors in Black Forest Labs' layout (ComfyUI prefixes it) or in diffusers'.
_FLUX_BLOCK_PREFIXES = ("double_blocks.", "transformer_blocks.")
_COMFYUI_PREFIX = "model.diffusion_model."


def check_transformer_file(path: str | os.PathLike[str], quantize: str = NONE) -> Path:
    """Refuse, in one line and before any model loads, a transformer file that cannot be loaded here:
    missing, of another kind, holding no FLUX transformer, a GGUF file without the gguf package, or a
    GGUF file (already quantised) with a `quantize` scheme. Returns the path, `~` expanded."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise IdgenError(
            f"the transformer is one file, not a folder (a whole FLUX model is the base): {path}"
        )
    if not file.is_file():
        raise IdgenError(f"transformer file not found: {os.fspath(path)}")
    suffix = file.suffix.lower()
    if suffix not in TRANSFORMER_FILE_SUFFIXES:
        raise IdgenError(f"a transformer file is {' or '.join(TRANSFORMER_FILE_SUFFIXES)}, not {file.name!r}")
    if suffix == GGUF_SUFFIX and quantize != NONE:
        raise IdgenError(
            f"{file.name} is a GGUF file, already quantised: it takes no quantisation ({quantize})"
        )
    if suffix == GGUF_SUFFIX and not installed(GGUF_PACKAGE[0]):
        raise missing_package("a GGUF transformer", *GGUF_PACKAGE)
    names = _tensor_names(file)
    if not any(n.removeprefix(_COMFYUI_PREFIX).startswith(_FLUX_BLOCK_PREFIXES) for n in names):
        raise CheckpointError(
            f"{file} holds no FLUX transformer (no double_blocks / transformer_blocks tensors)"
        )
    return file


def _tensor_names(file: Path) -> list[str]:
    """The tensor names a safetensors or GGUF file lists, read from its header alone."""
    try:
        if file.suffix.lower() == GGUF_SUFFIX:
            from gguf import GGUFReader

            return [t.name for t in GGUFReader(file).tensors]
        from safetensors import safe_open

        with safe_open(file, framework="pt") as f:
            return list(f.keys())
    except Exception as error:  # each library has its own errors for a file that is not its format
        kind = "GGUF" if file.suffix.lower() == GGUF_SUFFIX else "safetensors"
        raise CheckpointError(f"{file} is not a readable {kind} file ({_first_line(error)})") from error


def load_transformer_file(
    path: str | os.PathLike[str], config: str | os.PathLike[str], dtype: Any = None, *, quantize: str = NONE
) -> Any:
    """A FluxTransformer2DModel from one file, through diffusers' single-file loader: a GGUF file (kept
    quantised, computing in `dtype`), or safetensors in diffusers' layout, Black Forest Labs' original one
    (flux1-dev.safetensors) or ComfyUI's (the same, prefixed; fp8 files included), cast to `dtype`.
    config: a transformer folder (its config.json), or a FLUX pipeline's folder or hub id (its
    `transformer` subfolder); offline, a hub id must be in the cache. dtype: default bfloat16. quantize:
    the scheme the caller applies afterwards (a GGUF file takes none); the file is checked before loading
    (`check_transformer_file`)."""
    import torch

    file = check_transformer_file(path, quantize)
    dtype = torch.bfloat16 if dtype is None else dtype
    if file.suffix.lower() == GGUF_SUFFIX:
        from diffusers import GGUFQuantizationConfig

        return _from_single_file(
            file, config, torch_dtype=dtype, quantization_config=GGUFQuantizationConfig(compute_dtype=dtype)
        )
    return _from_single_file(file, config, torch_dtype=dtype)


def load_gguf_transformer(
    path: str | os.PathLike[str], config: str | os.PathLike[str], dtype: Any = None
) -> Any:
    """A FluxTransformer2DModel from a GGUF file (`load_transformer_file` for GGUF files alone)."""
    if Path(path).suffix.lower() != GGUF_SUFFIX:
        raise IdgenError(f"{os.fspath(path)} is not a .gguf file")
    return load_transformer_file(path, config, dtype)


def _from_single_file(file: Path, config: str | os.PathLike[str], **kwargs: Any) -> Any:
    from diffusers import FluxTransformer2DModel

    in_folder = os.path.isfile(os.path.join(config, "config.json"))
    try:
        return FluxTransformer2DModel.from_single_file(
            os.fspath(file),
            config=os.fspath(config),
            subfolder=None if in_folder else "transformer",
            **kwargs,
        )
    except (ValueError, RuntimeError, KeyError, IndexError) as error:
        # diffusers converts keys it does not know as another layout's, and fails somewhere inside
        raise CheckpointError(
            f"{os.fspath(file)} does not fit the transformer of {os.fspath(config)}: {_first_line(error)}"
        ) from error


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
