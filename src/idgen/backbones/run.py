"""One generation's identity settings and the sampler's position, shared by every backbone's hooks.

The position is driven explicitly, never guessed from the timesteps:
- the backbone's pre-hook calls `advance(timestep, grid)` at each denoiser call (a "pass");
- the pipeline calls `end_step()` after each sampler step, through diffusers' `callback_on_step_end`
  (`step_end_callback`, or `chain_step_end(user_callback)` to keep a user's callback too).
Within a step, pass 0 is the conditional pass and pass 1 the negative pass of true CFG.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor, nn

from idgen.core.gate import MaskPolicy, UniformMask
from idgen.core.multi import CompetingMasks
from idgen.errors import IdgenError

Grid = tuple[int, int]
MAX_PASSES_PER_STEP = 2  # conditional + negative (true CFG)


class Recorder(Protocol):
    def record(
        self, step: int, t: float, point: str, mask: Tensor | None, heads_out: Tensor, grid: Grid
    ) -> None: ...


class IdentityRecorder(Protocol):
    """Records each identity's mask when several identities compete (a plain Recorder gets their sum)."""

    def record_identity(
        self,
        identity: int,
        step: int,
        t: float,
        point: str,
        mask: Tensor | None,
        heads_out: Tensor,
        grid: Grid,
    ) -> None: ...


@dataclass
class InjectionRun:
    """id_tokens: (1 | B, K, dim); row i goes with row i of the denoiser's batch. A backbone that batches
    CFG (SD's UNet runs [uncond; cond]) takes the rows stacked the same way.

    t = timestep / num_train_timesteps: FLUX's transformer already gets t in [0, 1] (1), SD's UNet gets
    0..1000 (WPlusRun). grid: FLUX's token grid, or SD's latent size (each UNet level halves it).
    true_cfg_start_step: on earlier steps the negative pass's output is replaced by the conditional one,
    so neg + s * (cond - neg) == cond, as in PuLID-FLUX's sampler (0: the negative pass counts at every step).
    """

    id_tokens: Tensor
    id_weight: float = 1.0
    start_step: int = 0  # steps before it run without identity
    policy: MaskPolicy = field(default_factory=UniformMask)
    uncond_id_tokens: Tensor | None = None  # for the negative pass of a true-CFG step
    recorder: Recorder | None = None
    true_cfg_start_step: int = 0
    num_train_timesteps: int = 1
    recorded_rows: int | None = None  # the recorder keeps the last rows only (a CFG batch's cond half)
    # Several identities (FLUX): id_tokens stack n identities' rows identity-major, (n * B, K, dim); each
    # identity's CA runs on its rows and `competition` decides the masks, `id_weights` the weights.
    competition: CompetingMasks | None = None
    id_weights: tuple[float, ...] = ()
    # The sampler's position.
    step: int = 0
    pass_index: int = -1  # denoiser calls since the last step boundary, minus one
    t: float = 1.0
    grid: Grid = (0, 0)

    def __post_init__(self) -> None:
        if self.id_tokens.dim() != 3:
            raise IdgenError(f"identity tokens must be (B, K, dim), got shape {tuple(self.id_tokens.shape)}")
        if self.start_step < 0:
            raise IdgenError(f"identity start step must be >= 0, got {self.start_step}")
        if self.true_cfg_start_step < 0:
            raise IdgenError(f"true CFG start step must be >= 0, got {self.true_cfg_start_step}")
        if self.competition is not None and len(self.id_weights) != self.competition.identities:
            raise IdgenError(
                f"{len(self.id_weights)} identity weights for {self.competition.identities} identities"
            )

    def advance(self, timestep: float, grid: Grid) -> None:
        """A denoiser call begins (called by the backbone's pre-hook)."""
        if self.pass_index + 1 >= MAX_PASSES_PER_STEP:
            raise IdgenError(
                "a third denoiser call in one sampler step: mark step ends with "
                "callback_on_step_end=run.step_end_callback"
            )
        self.pass_index += 1
        self.t, self.grid = timestep / self.num_train_timesteps, grid

    def end_step(self) -> None:
        """The sampler finished a step (called by the pipeline)."""
        self.step, self.pass_index = self.step + 1, -1

    def step_end_callback(
        self, pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        """diffusers' `callback_on_step_end`: marks the step's end, changes nothing."""
        self.end_step()
        return {}

    def chain_step_end(self, user: Callable[..., dict[str, Any]] | None) -> Callable[..., dict[str, Any]]:
        """A step-end callback that marks the boundary, then runs the user's callback (if any)."""
        if user is None:
            return self.step_end_callback

        def callback(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            self.end_step()
            return user(pipe, index, timestep, tensors)

        return callback

    def mark_steps_in(self, call: dict[str, Any]) -> None:
        """Make a diffusers pipeline call's `callback_on_step_end` mark this run's steps, keeping the
        user's callback (a function, or a PipelineCallback with its tensor_inputs)."""
        user = call.get("callback_on_step_end")
        inputs = getattr(user, "tensor_inputs", None)
        if inputs is not None:
            call.setdefault("callback_on_step_end_tensor_inputs", inputs)
        call["callback_on_step_end"] = self.chain_step_end(user)

    @property
    def identity_on(self) -> bool:
        return self.id_weight != 0 and self.step >= self.start_step

    def tokens_for_call(self) -> Tensor | None:
        """The identity tokens of the current pass; None while the identity is off."""
        if not self.identity_on:
            return None
        if self.pass_index <= 0:
            return self.id_tokens
        return self.uncond_id_tokens if self.uncond_id_tokens is not None else self.id_tokens

    @property
    def keeps_cond_output(self) -> bool:
        """The conditional pass's output will stand in for this step's negative pass."""
        return self.pass_index == 0 and self.step < self.true_cfg_start_step

    @property
    def reuses_cond_output(self) -> bool:
        """This is a negative pass before true CFG starts: its output is replaced by the conditional one."""
        return self.pass_index == 1 and self.step < self.true_cfg_start_step


class RunHost:
    """An injector's one active run and the id tokens of the current pass (None while identity is off).

    `with injector.run(run):` activates a run; outside one the hooks leave the denoiser stock.
    """

    denoiser = "denoiser"  # named in errors

    def __init__(self) -> None:
        self._run: InjectionRun | None = None
        self._tokens: Tensor | None = None

    @contextmanager
    def run(self, run: InjectionRun) -> Iterator[InjectionRun]:
        self._check_run(run)
        if self._run is not None:
            raise IdgenError(f"an identity run is already active on this {self.denoiser}")
        self._run = run
        try:
            yield run
        finally:
            self._run, self._tokens = None, None
            self._after_run()

    def active(self) -> tuple[InjectionRun | None, Tensor | None]:
        """The current run and its tokens for this denoiser call."""
        return self._run, self._tokens

    def _check_run(self, run: InjectionRun) -> None:
        """Refuse a run this injector cannot take, before it starts."""

    def _after_run(self) -> None:
        """Drop what the run left behind."""


def call_arguments(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A forward pre-hook's (args, kwargs), by parameter name."""
    if not args:
        return kwargs
    return dict(inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments)
