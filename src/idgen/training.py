"""A small resumable training loop: atomic checkpoints, exact resume, progress bar, JSONL loss log.

Every step draws its randomness (batch sampling, noise, timesteps) from a generator seeded by
(seed, step), so a run killed at any moment and resumed from its last checkpoint computes exactly
the same steps as one that was never interrupted: nothing is lost beyond one checkpoint interval
and nothing is logged twice. A checkpoint written with another configuration (steps, learning rate,
seed, batch size...) is refused, not resumed: a changed recipe would otherwise mix two runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from idgen.errors import IdgenError
from idgen.io import atomic_output, atomic_write_text

StepFn = Callable[[int, torch.Generator], tuple[Tensor, dict[str, float]]]


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    checkpoint_every: int = 200
    log_every: int = 25
    seed: int = 0
    grad_clip: float | None = 1.0
    warmup: int = 0

    def reseeded(self, k: int) -> TrainConfig:
        """The same training with its k-th other seed, seed + 10 k (the world recipes' `reseeded`)."""
        return replace(self, seed=self.seed + 10 * k)


# How often a run writes is not what it computes: a resume may change these.
BOOKKEEPING = frozenset({"checkpoint_every", "log_every"})


def config_changes(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """The fields of `config` that change the result and differ from a checkpoint's saved config."""
    now = asdict(config)
    return sorted(k for k in now.keys() | saved.keys() if k not in BOOKKEEPING and saved.get(k) != now.get(k))


def timed(timings: dict[str, float], name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), recording its wall and CPU seconds in `timings` (CPU time is the one-core cost;
    wall time on a shared machine says little)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    timings[f"{name}_seconds"] = round(time.perf_counter() - wall, 1)
    timings[f"{name}_cpu_seconds"] = round(time.process_time() - cpu, 1)
    return out


class Stopwatch:
    """Runs the phases of a job, recording each one's wall and CPU seconds in `seconds` (see `timed`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        return timed(self.seconds, name, fn, *args)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator for one step: a pure function of (seed, step)."""
    digest = hashlib.sha256(f"{seed}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if config.warmup and step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item()))


class Trainer:
    """Trains `parameters` by minimising `step_fn(step, generator)`; resumable from `folder`."""

    def __init__(
        self,
        name: str,
        modules: dict[str, nn.Module],
        parameters: Iterable[nn.Parameter],
        config: TrainConfig,
        folder: str | os.PathLike[str],
    ) -> None:
        self.name, self.modules, self.config = name, modules, config
        self.parameters = [p for p in parameters if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr, weight_decay=config.weight_decay)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = self.folder / "checkpoint.pt"
        self.log_path = self.folder / "log.jsonl"
        self.step = 0

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "config": asdict(self.config),
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
        }

    def save_checkpoint(self) -> None:
        with atomic_output(self.checkpoint_path) as tmp:
            torch.save(self.state(), tmp)

    def resume(self) -> bool:
        """Load the last checkpoint if there is one; drop log lines written after it."""
        if not self.checkpoint_path.exists():
            if self.log_path.exists():
                self.log_path.unlink()
            return False
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        changed = config_changes(state.get("config", asdict(self.config)), self.config)
        if changed:
            raise IdgenError(
                f"{self.checkpoint_path} was written with another {', '.join(changed)}; remove "
                f"{self.folder} to train from scratch with this configuration"
            )
        for key, module in self.modules.items():
            module.load_state_dict(state["modules"][key])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        if self.log_path.exists():
            kept = [
                line
                for line in self.log_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] < self.step
            ]
            atomic_write_text(self.log_path, "".join(f"{line}\n" for line in kept))
        return True

    def fit(self, step_fn: StepFn, progress: bool = True) -> dict[str, float]:
        from tqdm.auto import tqdm

        self.resume()
        config = self.config
        last: dict[str, float] = {}
        for module in self.modules.values():
            module.train()
        bar = tqdm(
            total=config.steps, initial=self.step, desc=self.name, disable=not progress, dynamic_ncols=True
        )
        with bar, open(self.log_path, "a") as log:
            while self.step < config.steps:
                for group in self.optimizer.param_groups:
                    group["lr"] = learning_rate(config, self.step)
                generator = step_generator(config.seed, self.step)
                torch.manual_seed(generator.initial_seed())  # dropout & co. replay exactly on resume
                loss, metrics = step_fn(self.step, generator)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.parameters, config.grad_clip)
                self.optimizer.step()
                last = {"loss": float(loss.detach()), **metrics}
                if self.step % config.log_every == 0 or self.step == config.steps - 1:
                    log.write(json.dumps({"step": self.step, **last}) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{last['loss']:.4f}")
                self.step += 1
                bar.update(1)
                if self.step % config.checkpoint_every == 0 or self.step == config.steps:
                    log.flush()
                    self.save_checkpoint()
        for module in self.modules.values():
            module.eval()
        return last

    def log(self) -> list[dict[str, float]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]
