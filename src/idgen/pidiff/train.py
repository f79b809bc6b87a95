"""PIDiff identity-tailored fine-tuning of a W+ adapter on a frozen SD1.5 pipeline (accelerate).

Only the identity branch trains: F_w (mapping) and/or every Wq+/Wk+/Wv+. The UNet, VAE and text
encoder are frozen. Per step, with e(w) the UNet's epsilon prediction under identity code w:

    stage1:              L = ||e(w) - eps||^2
    stage2 / identity:   L = ||e(w) - eps||^2 + lambda_d ||(1 - M)(sg e(w~) - e(w))||^2
                             + lambda_p ||sg e(branch off) - e(w)||^2

(idgen.core.losses.identity_tailored_loss; w~ = perturb_codes(w); M = the face mask on the latent
grid). Captions and codes are dropped 5% / 5% / 5% (text, W+, both) as in the W+ adapter: a dropped
caption is "", a dropped code is zeros (F_w(0) is the uncond identity at inference).

Resume guarantees (those of idgen.training.Trainer, kept in an accelerate loop): all randomness of
step s comes from step_generator(seed, s), drawn on CPU for the global batch and sliced per process;
checkpoint.pt (adapter + optimizer + step) is written atomically every `checkpoint_every` steps;
on resume, log lines at or after the checkpoint's step are dropped, so none is written twice.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import torch
from PIL import Image
from torch import Tensor, nn

from idgen.core.losses import IdentityLossWeights, face_mask_on_grid, identity_tailored_loss, perturb_codes
from idgen.core.wplus_edit import W_DIM, W_PLUS_LAYERS
from idgen.errors import IdgenError
from idgen.io import atomic_output, atomic_write_text, folder_lock, load_image
from idgen.models.wplus import WPlusAdapter
from idgen.pidiff.edit import W_PLUS_KEY, pick_code, read_tensors
from idgen.training import TrainConfig, learning_rate, step_generator

Mode = Literal["general", "identity"]
Stage = Literal["stage1", "stage2"]
METADATA = "metadata.jsonl"
SHARED_CODES = "wplus.safetensors"
CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
ADAPTER_FOLDER = "adapter"
# Config fields that may change between a run and its resume without changing the maths.
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "log_every", "progress", "mixed_precision", "verify_data"}


@dataclass(frozen=True)
class PIDiffTrainConfig:
    mode: Mode = "general"
    stage: Stage = "stage2"  # general mode only; identity mode always uses the full loss
    train_mapping: bool | None = None  # None: stage1 yes; stage2 and identity no
    steps: int = 1000
    batch_size: int = 4  # per process
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: int = 0
    grad_clip: float | None = 1.0
    resolution: int = 512
    num_layers: int = W_PLUS_LAYERS
    w_dim: int = W_DIM
    drop_text: float = 0.05
    drop_wplus: float = 0.05
    drop_both: float = 0.05
    disentangle: float = 2.0  # lambda_d
    preserve: float = 1.0  # lambda_p
    perturb_noise: float = 0.1
    mask_erode: int = 1  # latent pixels of erosion (the W+ adapter erodes the face mask)
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    mixed_precision: str = "no"  # "fp16" / "bf16" apply on GPU only
    overfit_one_batch: bool = False  # reuse step 0's batch, noise and timesteps (debugging)
    verify_data: bool = True  # decode every image and mask before training
    progress: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("general", "identity"):
            raise IdgenError(f"training mode must be general or identity, got {self.mode!r}")
        if self.stage not in ("stage1", "stage2"):
            raise IdgenError(f"training stage must be stage1 or stage2, got {self.stage!r}")
        for name in ("steps", "batch_size", "resolution", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise IdgenError(f"{name} must be >= 1, got {getattr(self, name)}")
        drops = (self.drop_text, self.drop_wplus, self.drop_both)
        if min(drops) < 0 or sum(drops) > 1:
            raise IdgenError(f"caption/W+ dropout rates must be >= 0 and sum to <= 1, got {drops}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise IdgenError(f"mixed precision must be no, fp16 or bf16, got {self.mixed_precision!r}")

    @property
    def full_loss(self) -> bool:
        return self.mode == "identity" or self.stage == "stage2"

    @property
    def trains_mapping(self) -> bool:
        if self.train_mapping is not None:
            return self.train_mapping
        return self.mode == "general" and self.stage == "stage1"


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Item:
    name: str  # "metadata.jsonl line 3 (x.png)", for error messages
    image: Path
    mask: Path
    caption: str
    w_plus: Tensor  # (L, D) float32


class PIDiffDataset:
    """A training folder (see docs/pidiff.md, "Training data"). Codes load eagerly, pixels on demand."""

    def __init__(self, folder: str | os.PathLike[str], resolution: int, num_layers: int, w_dim: int) -> None:
        self.folder, self.resolution = Path(folder), resolution
        self.num_layers, self.w_dim = num_layers, w_dim
        self._files: dict[Path, dict[str, Tensor]] = {}
        self.items = [self._item(n, raw) for n, raw in self._lines()]
        if not self.items:
            raise IdgenError(f"{self.folder / METADATA} lists no training items")
        self._files.clear()

    def _lines(self) -> Iterator[tuple[int, dict[str, Any]]]:
        path = self.folder / METADATA
        if not path.is_file():
            raise IdgenError(f"training data folder has no {METADATA}: {self.folder}")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise IdgenError(f"{METADATA} line {n}: not JSON ({e.msg})") from None
            if not isinstance(raw, dict):
                raise IdgenError(f"{METADATA} line {n}: expected a JSON object")
            yield n, raw

    def _item(self, n: int, raw: dict[str, Any]) -> Item:
        image = raw.get("image")
        if not isinstance(image, str) or not image:
            raise IdgenError(f"{METADATA} line {n}: missing 'image'")
        name = f"{METADATA} line {n} ({image})"
        caption = raw.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise IdgenError(f"{name}: missing caption")
        mask = raw.get("mask")
        if not isinstance(mask, str) or not (self.folder / mask).is_file():
            raise IdgenError(f"{name}: mask file not found: {mask}")
        if not (self.folder / image).is_file():
            raise IdgenError(f"{name}: image file not found")
        return Item(name, self.folder / image, self.folder / mask, caption, self._code(name, raw))

    def _code(self, name: str, raw: dict[str, Any]) -> Tensor:
        # Per-item file with "w_plus", or a shared file with one tensor per "id".
        path = self.folder / str(raw.get("wplus", SHARED_CODES))
        if path not in self._files:
            self._files[path] = read_tensors(path, f"{name}: W+ file") if path.is_file() else {}
        tensors = self._files[path]
        if not tensors:
            raise IdgenError(f"{name}: W+ file not found or empty: {path.name}")
        key = W_PLUS_KEY if W_PLUS_KEY in tensors else str(raw.get("id", W_PLUS_KEY))
        return pick_code(tensors, key, self.num_layers, self.w_dim, f"{name}: W+ code")

    def __len__(self) -> int:
        return len(self.items)

    def pixels(self, index: int) -> tuple[Tensor, Tensor]:
        """-> image (3, R, R) in [-1, 1], face mask (R, R) bool; resized to cover R, centre-cropped."""
        item = self.items[index]
        image = load_image(item.image, what=f"{item.name}: image")
        mask = load_image(item.mask, what=f"{item.name}: mask")
        if mask.size != image.size:
            raise IdgenError(f"{item.name}: mask is {mask.size}, image is {image.size}")
        rgb = _to_tensor(_cover_crop(image, self.resolution, Image.Resampling.BICUBIC))  # (3, R, R)
        grey = _to_tensor(_cover_crop(mask.convert("L"), self.resolution, Image.Resampling.NEAREST))
        return rgb * 2 - 1, grey[0] > 0.5

    def verify(self) -> None:
        for index in range(len(self)):
            self.pixels(index)


def _cover_crop(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), resample)
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def _to_tensor(image: Image.Image) -> Tensor:
    # (H, W, C) uint8 -> (C, H, W) float in [0, 1]
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, -1).permute(2, 0, 1).float() / 255


# ----------------------------------------------------------------------------- one step


@dataclass
class StepDraws:
    """Everything random in one step, drawn on CPU from the step's generator for the global batch."""

    indices: Tensor  # (B,) dataset rows
    drop: Tensor  # (B,) uniform, selects caption/W+ dropout
    noise: Tensor  # (B, C, h, w) epsilon
    vae_noise: Tensor  # (B, C, h, w) for sampling the VAE posterior
    timesteps: Tensor  # (B,)
    perturb: torch.Generator  # for perturb_codes (drawn last)


def draw(g: torch.Generator, size: int, batch: int, latent: tuple[int, int, int], steps: int) -> StepDraws:
    return StepDraws(
        indices=torch.randint(0, size, (batch,), generator=g),
        drop=torch.rand(batch, generator=g),
        noise=torch.randn((batch, *latent), generator=g),
        vae_noise=torch.randn((batch, *latent), generator=g),
        timesteps=torch.randint(0, steps, (batch,), generator=g),
        perturb=g,
    )


class PIDiffStep:
    """Computes one step's loss on this process's share of the global batch."""

    def __init__(self, config: PIDiffTrainConfig, pipe: Any, injector: Any, data: PIDiffDataset, accel: Any):
        from diffusers import DDPMScheduler

        self.config, self.pipe, self.injector, self.data, self.accel = config, pipe, injector, data, accel
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.num_train_timesteps = int(self.noise_scheduler.config.num_train_timesteps)
        vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        side = config.resolution // vae_scale
        self.latent = (int(pipe.unet.config.in_channels), side, side)
        self.weights = IdentityLossWeights(config.disentangle, config.preserve)

    def __call__(self, step: int) -> tuple[Tensor, dict[str, float]]:
        c, accel = self.config, self.accel
        g = step_generator(c.seed, 0 if c.overfit_one_batch else step)
        world, rank = accel.num_processes, accel.process_index
        d = draw(g, len(self.data), c.batch_size * world, self.latent, self.num_train_timesteps)
        mine = slice(rank * c.batch_size, (rank + 1) * c.batch_size)  # this process's rows
        rows = d.indices[mine].tolist()
        pixels, masks = zip(*(self.data.pixels(i) for i in rows), strict=True)
        w = torch.stack([self.data.items[i].w_plus for i in rows])  # (b, L, D)
        captions = [self.data.items[i].caption for i in rows]
        w, captions = self.dropout(d.drop[mine], w, captions)
        w_tilde = perturb_codes(w, d.perturb, c.perturb_noise) if c.full_loss else w  # (b, L, D)

        dev = accel.device
        latents = self.encode_images(torch.stack(pixels).to(dev), d.vae_noise[mine].to(dev))  # (b, C, h, w)
        noise, t = d.noise[mine].to(dev), d.timesteps[mine].to(dev)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        target = self.target(latents, noise, t)
        text = self.encode_text(captions)  # (b, 77, token_dim)

        pred = self.predict(noisy, t, text, w.to(dev))
        if not c.full_loss:
            loss = torch.nn.functional.mse_loss(pred.float(), target.float())
            return loss, {"denoise": float(loss.detach())}
        with torch.no_grad():
            pred_tilde = self.predict(noisy, t, text, w_tilde.to(dev))
            pred_base = self.predict(noisy, t, text, None)
        h, wd = self.latent[1:]
        face = face_mask_on_grid(torch.stack(masks), h, wd, c.mask_erode)  # (b, h*w, 1)
        face = face.view(-1, 1, h, wd).to(dev)  # (b, 1, h, w), broadcasts over channels
        return identity_tailored_loss(
            pred.float(), target.float(), pred_tilde.float(), pred_base.float(), face, self.weights
        )

    def dropout(self, u: Tensor, w: Tensor, captions: list[str]) -> tuple[Tensor, list[str]]:
        c = self.config
        no_text = u < c.drop_text
        no_code = (u >= c.drop_text) & (u < c.drop_text + c.drop_wplus)
        both = (u >= c.drop_text + c.drop_wplus) & (u < c.drop_text + c.drop_wplus + c.drop_both)
        w = torch.where((no_code | both)[:, None, None], torch.zeros_like(w), w)
        captions = ["" if bool(a or b) else cap for cap, a, b in zip(captions, no_text, both, strict=True)]
        return w, captions

    @torch.no_grad()
    def encode_images(self, pixels: Tensor, vae_noise: Tensor) -> Tensor:
        vae = self.pipe.vae
        posterior = vae.encode(pixels.to(vae.dtype)).latent_dist
        latents = posterior.mean + posterior.std * vae_noise.to(vae.dtype)  # a posterior sample
        return latents * vae.config.scaling_factor

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> Tensor:
        tok = self.pipe.tokenizer
        ids = tok(
            captions,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return cast(Tensor, self.pipe.text_encoder(ids.to(self.accel.device))[0])

    def target(self, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return cast(Tensor, self.noise_scheduler.get_velocity(latents, noise, t))
        raise IdgenError(f"cannot train on a scheduler with prediction_type {kind!r}")

    def predict(self, noisy: Tensor, t: Tensor, text: Tensor, w: Tensor | None) -> Tensor:
        """The UNet's prediction with identity code w (B, L, D), or with the branch off (w None)."""
        from idgen.backbones.sd15 import WPlusRun

        unet = self.pipe.unet
        with self.accel.autocast():
            if w is None:  # outside a run the UNet is bit-identical to stock
                return cast(Tensor, unet(noisy, t, encoder_hidden_states=text).sample)
            tokens = self.injector.adapter.encode(w)  # (B, K, token_dim); grads reach F_w if trainable
            run = WPlusRun(tokens, num_train_timesteps=self.num_train_timesteps)
            with self.injector.run(run):
                return cast(Tensor, unet(noisy, t, encoder_hidden_states=text).sample)


# ----------------------------------------------------------------------------- the loop


@contextmanager
def frozen_except(
    frozen: list[nn.Module], trainable: list[nn.Parameter], adapter: nn.Module
) -> Iterator[None]:
    """requires_grad off on everything but `trainable`; the caller's flags come back afterwards."""
    modules = [*frozen, adapter]
    saved = [[p.requires_grad for p in m.parameters()] for m in modules]
    keep = {id(p) for p in trainable}
    try:
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(id(p) in keep)
        yield
    finally:
        for m, flags in zip(modules, saved, strict=True):
            for p, flag in zip(m.parameters(), flags, strict=True):
                p.requires_grad_(flag)


def load_sd_pipeline(pipe_or_path: Any) -> Any:
    if not isinstance(pipe_or_path, (str, os.PathLike)):
        return pipe_or_path
    from diffusers import StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_pretrained(str(pipe_or_path), torch_dtype=torch.float32)
    except (OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        from idgen.models.checkpoint import DOCTOR_HINT

        first = first.rstrip(".")
        raise IdgenError(f"cannot load SD1.5 pipeline {pipe_or_path}: {first}; {DOCTOR_HINT}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def new_adapter(unet: nn.Module, config: PIDiffTrainConfig) -> WPlusAdapter:
    """A fresh adapter for this UNet: projections copied from the UNet's q/k/v, F_w random."""
    from idgen.backbones.sd15 import init_projections_from_unet, wplus_config_for_unet

    L = config.num_layers
    groups: tuple[tuple[int, int], ...] = ((0, 4), (4, 8), (8, 12), (12, 18))
    if L != W_PLUS_LAYERS:
        # up to 4 near-equal groups, coarse to fine
        edges = [round(i * L / min(4, L)) for i in range(min(4, L) + 1)]
        groups = tuple(itertools.pairwise(edges))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        adapter = WPlusAdapter(wplus_config_for_unet(unet, num_layers=L, w_dim=config.w_dim, groups=groups))
    init_projections_from_unet(adapter, unet)
    return adapter


def trainable_parameters(adapter: WPlusAdapter, config: PIDiffTrainConfig) -> list[nn.Parameter]:
    mapping = adapter.mapping_parameters() if config.trains_mapping else []
    return mapping + adapter.attention_parameters()


class RunFiles:
    """checkpoint.pt and log.jsonl of one output folder, with Trainer's resume rules."""

    def __init__(self, folder: Path, config: PIDiffTrainConfig) -> None:
        self.folder, self.config = folder, config
        self.checkpoint, self.log = folder / CHECKPOINT, folder / LOG

    def save(self, step: int, adapter: nn.Module, optimizer: Any, scaler: Any) -> None:
        state = {
            "step": step,
            "config": asdict(self.config),
            "adapter": adapter.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
        }
        with atomic_output(self.checkpoint) as tmp:
            torch.save(state, tmp)

    def resume(self, adapter: nn.Module, optimizer: Any, scaler: Any) -> int:
        """Load the checkpoint if any (else start over); -> the step to continue from."""
        if not self.checkpoint.exists():
            self.log.unlink(missing_ok=True)
            return 0
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        self.check_same_run(state["config"])
        adapter.load_state_dict(state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        if self.log.exists():
            kept = [
                line for line in self.log.read_text().splitlines() if line and json.loads(line)["step"] < step
            ]
            atomic_write_text(self.log, "".join(f"{line}\n" for line in kept))
        return step

    def check_same_run(self, saved: dict[str, Any]) -> None:
        now = asdict(self.config)
        for key in sorted(set(now) - RESUMABLE_CHANGES):
            old, new = saved.get(key), now[key]
            if _plain(old) != _plain(new):
                raise IdgenError(
                    f"{self.checkpoint} was written with {key}={old!r}, this run has {key}={new!r}; "
                    f"use another output folder or the same settings"
                )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value  # the checkpoint turns tuples into lists


def _float32_pipeline(pipe_or_path: Any) -> Any:
    pipe = load_sd_pipeline(pipe_or_path)
    if pipe.unet.dtype != torch.float32:
        raise IdgenError(
            f"train on a float32 pipeline (got {pipe.unet.dtype}); mixed_precision gives the speed"
        )
    return pipe


def _check_code_shape(adapter: WPlusAdapter, config: PIDiffTrainConfig) -> None:
    if (adapter.config.num_layers, adapter.config.w_dim) != (config.num_layers, config.w_dim):
        raise IdgenError(
            f"the adapter reads ({adapter.config.num_layers}, {adapter.config.w_dim}) W+ codes, "
            f"the training config says ({config.num_layers}, {config.w_dim})"
        )


def _accelerate(
    config: PIDiffTrainConfig, pipe: Any, adapter: WPlusAdapter
) -> tuple[Any, list[nn.Parameter], Any]:
    """Accelerator (mixed precision on a GPU only), the models on its device, the trainable parameters and
    their optimizer."""
    from accelerate import Accelerator

    gpu = torch.cuda.is_available()
    accel = Accelerator(mixed_precision=config.mixed_precision if gpu else "no")
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, adapter):
        module.to(accel.device)
    params = trainable_parameters(adapter, config)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    optimizer = accel.prepare(optimizer)  # loss scaling with fp16; the models are not wrapped
    return accel, params, optimizer


def train_pidiff(
    config: PIDiffTrainConfig,
    pipe_or_path: Any,
    adapter: WPlusAdapter | None,
    data_folder: str | os.PathLike[str],
    out_folder: str | os.PathLike[str],
    *,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train `adapter` (None: a fresh one, projections from the UNet) on `data_folder`; resumable.

    pipe_or_path: a float32 StableDiffusionPipeline, or a path / hub id to load one.
    Writes out_folder/checkpoint.pt, log.jsonl and, at the end, adapter/ (save_wplus_adapter).
    stop_after: leave after this many steps in total (a time-limited job; run again to continue).
    Returns {"step", "steps", "loss", "adapter", "log", "trainable", "resumed_from"}.
    A second run into the same `out_folder` while this one lives is a one-line error.
    """
    from accelerate import PartialState

    out = Path(out_folder)
    main = PartialState().is_main_process  # the lock is the main process's; the others share its run
    with folder_lock(out, "PIDiff training run") if main else nullcontext():
        return _train_pidiff(config, pipe_or_path, adapter, data_folder, out, stop_after)


def _train_pidiff(
    config: PIDiffTrainConfig,
    pipe_or_path: Any,
    adapter: WPlusAdapter | None,
    data_folder: str | os.PathLike[str],
    out_folder: Path,
    stop_after: int | None,
) -> dict[str, Any]:
    from idgen.backbones.sd15 import install_wplus
    from idgen.models.wplus import save_wplus_adapter

    data = PIDiffDataset(data_folder, config.resolution, config.num_layers, config.w_dim)
    if config.verify_data:
        data.verify()
    pipe = _float32_pipeline(pipe_or_path)
    adapter = adapter if adapter is not None else new_adapter(pipe.unet, config)
    _check_code_shape(adapter, config)
    accel, params, optimizer = _accelerate(config, pipe, adapter)
    files = RunFiles(Path(out_folder), config)
    Path(out_folder).mkdir(parents=True, exist_ok=True)
    start = files.resume(adapter, optimizer, accel.scaler)
    injector = install_wplus(pipe.unet, adapter)
    try:
        with frozen_except([pipe.unet, pipe.vae, pipe.text_encoder], params, adapter):
            step_fn = PIDiffStep(config, pipe, injector, data, accel)
            last = _loop(config, accel, step_fn, adapter, params, optimizer, files, start, stop_after)
    finally:
        injector.remove()
    done = min(config.steps, stop_after) if stop_after is not None else config.steps
    saved = Path(out_folder) / ADAPTER_FOLDER
    if accel.is_main_process and done >= config.steps:
        save_wplus_adapter(adapter, saved)
    accel.wait_for_everyone()
    return {
        "step": max(done, start),
        "steps": config.steps,
        "loss": last.get("loss", math.nan),
        "adapter": str(saved),
        "log": str(files.log),
        "trainable": sum(p.numel() for p in params),
        "resumed_from": start,
    }


def _optimise(
    config: PIDiffTrainConfig,
    accel: Any,
    step_fn: PIDiffStep,
    params: list[nn.Parameter],
    optimizer: Any,
    step: int,
) -> dict[str, float]:
    """One optimizer step at `step` (learning rate from the schedule, seed replayed on resume) -> the values
    to log: loss (averaged over processes), the loss parts and the learning rate."""
    lr = learning_rate(TrainConfig(steps=config.steps, lr=config.lr, warmup=config.warmup), step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(step_generator(config.seed, step).initial_seed())  # replays on resume
    loss, parts = step_fn(step)
    optimizer.zero_grad(set_to_none=True)
    accel.backward(loss)
    _average_gradients(accel, params)
    if config.grad_clip is not None:
        accel.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    return {"loss": float(accel.reduce(loss.detach(), reduction="mean")), **parts, "lr": lr}


def _loop(
    config: PIDiffTrainConfig,
    accel: Any,
    step_fn: PIDiffStep,
    adapter: nn.Module,
    params: list[nn.Parameter],
    optimizer: Any,
    files: RunFiles,
    step: int,
    stop_after: int | None,
) -> dict[str, float]:
    from tqdm.auto import tqdm

    end = config.steps if stop_after is None else min(config.steps, stop_after)
    main = accel.is_main_process
    last: dict[str, float] = {}
    adapter.train()
    bar = tqdm(total=config.steps, initial=step, desc="pidiff", disable=not (config.progress and main))
    with bar, open(files.log, "a") if main else open(os.devnull, "w") as log:
        while step < end:
            last = _optimise(config, accel, step_fn, params, optimizer, step)
            if step % config.log_every == 0 or step == config.steps - 1:
                log.write(json.dumps({"step": step, **last}) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{last['loss']:.4f}")
            step += 1
            bar.update(1)
            if step % config.checkpoint_every == 0 or step == end:
                log.flush()
                if main:
                    files.save(step, adapter, optimizer, accel.scaler)
                accel.wait_for_everyone()
    adapter.eval()
    return last


def _average_gradients(accel: Any, params: list[nn.Parameter]) -> None:
    # The adapter is called piecewise by the attention processors, not through one forward, so it
    # is not DDP-wrapped; gradients are averaged over processes by hand instead.
    if accel.num_processes == 1:
        return
    for p in params:
        if p.grad is not None:
            p.grad = accel.reduce(p.grad, reduction="mean")


def with_overrides(config: PIDiffTrainConfig, **changes: Any) -> PIDiffTrainConfig:
    """`replace` that ignores None values (CLI options left unset)."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
