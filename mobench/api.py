"""The typed shapes that cross plugin boundaries.

Everything here is light (no torch import): the CLI, the registry and the store use these types
without loading any model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

SCALES = ("tiny", "paper")


class MobenchError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


@dataclass(frozen=True)
class Preference:
    """A point on the probability simplex: one non-negative weight per objective, summing to 1."""

    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        w = tuple(float(x) for x in self.weights)
        object.__setattr__(self, "weights", w)
        if not w:
            raise MobenchError("a preference needs at least one weight")
        if any(not math.isfinite(x) for x in w):
            raise MobenchError(f"preference {list(w)} has a non-finite weight")
        if any(x < 0 for x in w):
            raise MobenchError(f"preference {list(w)} has a negative weight; weights must be >= 0")
        if abs(sum(w) - 1.0) > 1e-6:
            raise MobenchError(f"preference {list(w)} sums to {sum(w):.6g}; weights must sum to 1 (within 1e-6)")

    def __len__(self) -> int:
        return len(self.weights)

    def __getitem__(self, i: int) -> float:
        return self.weights[i]

    def __iter__(self):
        return iter(self.weights)

    @property
    def key(self) -> str:
        """A stable text key for the store (rounded so that float noise never splits a point)."""
        return ",".join(f"{x:.6f}" for x in self.weights)


@runtime_checkable
class Objective(Protocol):
    """One thing a response is scored on.

    ``direction`` is +1 when higher is better and -1 when lower is better. ``score`` is batched and
    returns one float per (prompt, response) pair. ``provenance`` says where the scorer came from
    (model, data, accuracy) and is written into the run manifest.
    """

    name: str
    direction: int

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...

    def provenance(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with a preferred (chosen) and a dispreferred (rejected) response for one objective."""

    prompt: str
    chosen: str
    rejected: str


@dataclass
class Normalisation:
    """Per-objective affine statistics: z = direction * (score - mean) / std, so higher z is better."""

    mean: float
    std: float

    def apply(self, score: float, direction: int = 1) -> float:
        return direction * (score - self.mean) / (self.std if self.std > 0 else 1.0)


@dataclass
class TaskInstance:
    """What a task hands the runner and the methods for one scale.

    ``prompts`` are already formatted for the policy (chat template applied). ``pairs`` maps an
    objective name to its preference pairs, for methods that train. ``normalisation`` and
    ``reference_point`` are fixed per task and scale (never derived from the runs being compared);
    the reference point is in normalised space, one coordinate per objective. ``grid_points`` is the
    scale's default points per simplex edge; ``generation`` holds decoding settings (max_new_tokens,
    do_sample, temperature, batch_size); ``budgets`` holds training budgets per trainer ("dpo", "rl",
    "value_head", ...), read by the methods.
    """

    name: str
    scale: str
    policy: str
    objectives: list[Objective]
    prompts: list[str]
    normalisation: dict[str, Normalisation]
    reference_point: tuple[float, ...]
    pairs: dict[str, list[PreferencePair]] = field(default_factory=dict)
    grid_points: int = 3
    generation: dict[str, Any] = field(default_factory=dict)
    budgets: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]


@dataclass
class RunContext:
    """What the runner gives a method besides the task: seed, device, cache and a progress reporter."""

    seed: int = 0
    device: str | None = None
    progress: "Progress | None" = None
    options: dict[str, Any] = field(default_factory=dict)


class Progress(Protocol):
    """A progress reporter for long steps (training, generation)."""

    def step(self, description: str, total: int | None = None) -> "ProgressStep": ...


class ProgressStep(Protocol):
    def advance(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


class Method(Protocol):
    """A steering method: prepared once per task, then asked for responses at preference points.

    ``generate`` receives the prompts and a list of preferences and returns, for each preference in
    order, one response per prompt. The runner passes one preference at a time unless the method sets
    ``batch_preferences = True``, in which case it passes all missing grid points at once.
    """

    name: str

    def prepare(self, task: TaskInstance, context: RunContext) -> None: ...

    def generate(self, prompts: list[str], preferences: list[Preference]) -> list[list[str]]: ...

    def provenance(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: a name, a factory building the Method, and a one-line description."""

    name: str
    factory: Callable[..., Method]
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: a name, a loader ``load(scale, context) -> TaskInstance``, a description."""

    name: str
    load: Callable[[str, RunContext], TaskInstance]
    objectives: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: a name, a factory ``build(scale) -> Objective``, its direction."""

    name: str
    build: Callable[..., Objective]
    direction: int = 1
    description: str = ""
