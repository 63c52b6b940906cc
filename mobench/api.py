"""The typed shapes that cross plugin boundaries.

Everything here is light (no torch import): the CLI, the registry and the store use these types
without loading any model.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Protocol, Sequence, runtime_checkable

SCALES = ("tiny", "paper")

#: The rule for objective names (checked when a task loads): they appear in tables, file keys and plots.
OBJECTIVE_NAME = r"[a-z0-9][a-z0-9._-]{0,63}"


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

    Build objectives through the registry (``context.objective(name, scale)`` in a task's ``load``): the
    registered :class:`ObjectiveSpec` is the one place that declares an objective's name and direction.
    """

    #: The registered name (lower-case letters, digits, '-', '_' or '.').
    name: str
    #: +1 when a higher score is better, -1 when a lower score is better.
    direction: int

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One raw score per (templated prompt, response) pair, batched, in order."""
        ...

    def provenance(self) -> dict[str, Any]:
        """Where the scorer came from (model, data, held-out accuracy), written into every manifest.

        Every field except ``artifact``, ``data`` and the held-out statistics
        (:data:`mobench.provenance.NOT_SCORING_FIELDS`) is read as part of the scoring rule: a change gives new
        run ids and a separate leaderboard. Put machine-specific paths under ``artifact`` or ``data``.
        """
        ...


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
        """The z-score of a raw ``score`` for an objective of ``direction`` (+1 or -1); a zero std counts as 1."""
        return direction * (score - self.mean) / (self.std if self.std > 0 else 1.0)


@dataclass(frozen=True)
class Generation:
    """How a task's responses are decoded; the one place with defaults (every reader uses this class)."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    batch_size: int = 8
    top_p: float = 1.0  # nucleus sampling (with do_sample): keep the smallest set of tokens of this much probability

    @classmethod
    def of(cls, value: "Generation | dict[str, Any] | None") -> "Generation":
        """A Generation from itself, a dict of some of its fields (others default), or None (all defaults)."""
        if isinstance(value, Generation):
            return value
        given = dict(value or {})
        unknown = sorted(set(given) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise MobenchError(f"unknown generation setting(s) {', '.join(unknown)}; known: {', '.join(cls.__dataclass_fields__)}")
        g = cls(**given)
        if g.max_new_tokens < 1 or g.batch_size < 1 or not g.temperature > 0 or not 0 < g.top_p <= 1:
            raise MobenchError(f"generation settings out of range: {g}")
        return cls(int(g.max_new_tokens), bool(g.do_sample), float(g.temperature), int(g.batch_size), float(g.top_p))

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for manifests and keys).

        ``top_p`` appears only when it filters (below 1): settings made before it existed keep their dict, so
        their run ids and cached reference responses stay valid.
        """
        out = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
               "temperature": self.temperature, "batch_size": self.batch_size}
        if self.top_p != 1.0:
            out["top_p"] = self.top_p
        return out

    def with_overrides(self, overrides: dict[str, str]) -> "Generation":
        """These settings with some fields replaced from text (``--gen max_new_tokens=32,top_p=0.9``), each
        converted to its field's type; an unknown field or a bad value is a MobenchError."""
        values = self.to_dict() | {"top_p": self.top_p}
        for key, text in overrides.items():
            if key not in self.__dataclass_fields__:
                raise MobenchError(f"--gen: unknown setting {key!r}; known: {', '.join(self.__dataclass_fields__)}")
            kind = type(getattr(self, key))
            text = str(text).strip()
            try:
                if kind is bool:
                    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(text)
                    values[key] = text.lower() in ("true", "1", "yes")
                else:
                    values[key] = kind(text)
            except ValueError:
                raise MobenchError(f"--gen: {key}={text!r} is not a {kind.__name__}") from None
        return Generation.of(values)


def prompts_sha256(prompts: Sequence[str]) -> str:
    """The one digest of a list of prompts (run ids, manifests, calibration files, artifact keys)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()


Chat = list[dict[str, str]]


@dataclass
class TaskInstance:
    """What a task hands the runner and the methods for one scale.

    ``prompts`` are formatted for the policy (chat template applied; :func:`mobench.toolkit.chat_prompts`
    does it) and ``chats`` holds the same prompts as structured messages (``[{"role", "content"}]``), in
    the same order, for scorers and methods that need the conversation rather than the templated text.
    ``pairs`` maps an objective name to its preference pairs (prompts templated the same way), for methods
    that train. ``normalisation`` and ``reference_point`` are fixed per task and scale (never derived from
    the runs being compared); the reference point is in normalised space, one coordinate per objective.
    Leave both empty and the core fills them from the task's calibration file (``mobench calibrate``).
    ``grid_points`` is the scale's default points per simplex edge; ``generation`` the decoding settings
    (a :class:`Generation`; a dict of its fields is converted). ``provenance`` says where the prompts and
    pairs came from (data sets, seeds, counts) and is copied into every manifest. Training budgets are not the task's: each
    method owns its own (see :mod:`mobench.options`). ``validation_prompts`` (optional, templated like ``prompts``)
    are held-out prompts disjoint from the evaluation prompts (checked) and, for the built-in tasks, from every
    pair prompt: for choosing a method's tunable constants without looking at the evaluation prompts.
    """

    name: str
    scale: str
    policy: str
    objectives: list[Objective]
    prompts: list[str]
    normalisation: dict[str, Normalisation] = field(default_factory=dict)
    reference_point: tuple[float, ...] = ()
    pairs: dict[str, list[PreferencePair]] = field(default_factory=dict)
    grid_points: int = 3
    generation: Generation = field(default_factory=Generation)
    provenance: dict[str, Any] = field(default_factory=dict)
    chats: list[Chat] = field(default_factory=list)
    validation_prompts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.generation = Generation.of(self.generation)
        self.reference_point = tuple(float(x) for x in self.reference_point)
        if self.chats and len(self.chats) != len(self.prompts):
            raise MobenchError(f"task {self.name!r}: {len(self.chats)} chats for {len(self.prompts)} prompts")
        shared = set(self.validation_prompts) & set(self.prompts)
        if shared:
            raise MobenchError(f"task {self.name!r}: {len(shared)} validation prompts are also evaluation prompts")

    def validate(self) -> None:
        """MobenchError (one line) unless the instance is coherent: objective names follow
        :data:`OBJECTIVE_NAME` and are unique; there is a prompt; normalisation has one finite mean and a
        finite, non-negative std for each objective and no other; the reference point has one finite
        coordinate per objective. The runner calls it when the task loads, after the calibration is attached.
        """
        import re

        names = [getattr(o, "name", None) for o in self.objectives]
        if not names:
            raise MobenchError(f"task {self.name!r} has no objectives")
        for name in names:
            if not isinstance(name, str) or not re.fullmatch(OBJECTIVE_NAME, name):
                raise MobenchError(f"task {self.name!r}: objective name {str(name)[:60]!r} breaks the rule "
                                   "(lower-case letters, digits, '-', '_' or '.', starting with a letter or digit, at most 64)")
        if len(set(names)) != len(names):
            raise MobenchError(f"task {self.name!r}: objective names repeat ({', '.join(names)})")
        if getattr(self.objectives[0], "direction", None) is None or any(getattr(o, "direction", None) not in (1, -1) for o in self.objectives):
            raise MobenchError(f"task {self.name!r}: every objective's direction must be +1 or -1")
        if not self.prompts or any(not isinstance(p, str) for p in self.prompts):
            raise MobenchError(f"task {self.name!r} has no prompts, or a prompt that is not text")
        if set(self.normalisation) != set(names):
            extra, lacking = sorted(set(self.normalisation) - set(names)), sorted(set(names) - set(self.normalisation))
            raise MobenchError(f"task {self.name!r}: normalisation does not match the objectives {names}"
                               + (f" (missing {', '.join(lacking)})" if lacking else "")
                               + (f" (unknown {', '.join(map(str, extra))})" if extra else ""))
        for name in names:
            norm = self.normalisation[name]
            mean, std = getattr(norm, "mean", None), getattr(norm, "std", None)
            if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (mean, std)) or std < 0:
                raise MobenchError(f"task {self.name!r}: normalisation of {name!r} needs a finite mean and a finite std >= 0, got {mean!r} and {std!r}")
        if len(self.reference_point) != len(names) or not all(math.isfinite(x) for x in self.reference_point):
            raise MobenchError(f"task {self.name!r}: the reference point {list(self.reference_point)} needs one finite "
                               f"coordinate per objective ({len(names)}: {', '.join(names)})")

    @property
    def objective_names(self) -> list[str]:
        """The objectives' names, in the order of the preference weights."""
        return [o.name for o in self.objectives]

    @property
    def calibrated(self) -> bool:
        """Whether normalisation and reference point are set for every objective."""
        return set(self.normalisation) == set(self.objective_names) and len(self.reference_point) == len(self.objectives)


@dataclass
class RunContext:
    """What the runner gives a task's ``load`` and a method besides the task.

    ``seed``: the run's ``--seed`` (the runner has already seeded ``random``, numpy and torch with it before
    ``prepare`` and before ``generate``); ``device``: ``--device`` or None (then cuda when visible, else
    cpu); ``progress``: a reporter for long steps (None outside the CLI); ``registry``: the plugin
    registry of this run, through which :meth:`objective` builds registered objectives; ``dtype``: ``--dtype``
    (float32, bfloat16, float16) or None (fp32 on CPU, bf16 on CUDA), for the models a method or task loads
    (:meth:`torch_dtype`); ``library_log``: where library output goes (a :class:`mobench.logs.LibraryLog`,
    None outside the CLI), which the runner attaches to the run folder's log file once it knows the folder.
    """

    seed: int = 0
    device: str | None = None
    progress: "Progress | None" = None
    registry: Any = None
    dtype: str | None = None
    library_log: Any = None

    def torch_dtype(self):
        """``dtype`` as a torch dtype, or None for the device's default (what ``load_causal_lm`` takes)."""
        from mobench.models import resolve_dtype

        return resolve_dtype(self.dtype)

    def objective(self, name: str, scale: str = "tiny") -> Objective:
        """The registered objective ``name`` at ``scale`` (a task's ``load`` gets its scorers this way)."""
        if self.registry is None:
            from mobench.plugins import get_plugin_manager

            self.registry = get_plugin_manager().registry
        return self.registry.build_objective(name, scale, context=self)


class Progress(Protocol):
    """A progress reporter for long steps (training, generation)."""

    def step(self, description: str, total: int | None = None) -> "ProgressStep":
        """Start a step of ``total`` units (None: unknown); returns its handle."""
        ...


class ProgressStep(Protocol):
    """One running step of a :class:`Progress`."""

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        ...

    def close(self) -> None:
        """End the step."""
        ...


class Method:
    """A steering method: prepared once per task, then asked for responses at preference points.

    Subclass it (or write a class with the same members). The core builds a method as ``factory(options)``
    when the class declares ``Options`` (a :class:`mobench.options.Options` dataclass with a preset per
    scale; ``mobench options NAME`` lists it), else as ``factory()``. The registered name is set on
    ``name`` by the core. ``batch_preferences = True`` asks the runner to pass every missing grid point to
    one ``generate`` call (methods that decode all points in one batch); else it passes one at a time.

    Offline cost is a result: the runner records the seconds of ``prepare`` and, apart from decoding, the
    offline work a method does inside ``generate`` (a policy trained per preference), which the method
    wraps in ``with self.offline():``; ``self.offline(evaluations=n)`` also counts n fitness or
    calibration evaluations (or add to ``offline_evaluations`` directly).
    """

    name: str = "method"
    batch_preferences: bool = False
    #: True for a method that trains one policy per preference (MORLHF, MODPO: every
    #: :class:`mobench.training.PolicyPerPreference`): ``mobench sweep`` then splits its grid across jobs.
    trains_per_preference: ClassVar[bool] = False
    Options: ClassVar[type | None] = None
    #: Seconds of offline work done inside ``generate`` so far (``prepare`` is timed by the runner).
    offline_seconds: float = 0.0
    #: Offline evaluations so far (fitness calls, calibration passes, reward-model scorings of a search).
    offline_evaluations: int = 0

    def __init__(self, options: Any = None):
        self.options = options if options is not None else (type(self).Options() if type(self).Options else None)
        self.task: TaskInstance | None = None
        self.context: RunContext | None = None

    def prepare(self, task: TaskInstance, context: RunContext) -> None:
        """Get ready for ``task``: train or load what the method needs (through the artifact cache).

        Called once per run, after the runner seeded everything from ``context.seed``. The base class keeps
        ``task`` and ``context``; raise :class:`MobenchError` for a task the method cannot serve.
        """
        self.task, self.context = task, context

    def generate(self, prompts: list[str], preferences: list[Preference]) -> list[list[str]]:
        """For each preference in order, one response (the new text only) per prompt."""
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        """What produced the responses (options, trained pieces and their records), for the manifest.

        Called after ``prepare`` and again after the last ``generate`` (per-point policies are known then).
        """
        return {"method": self.name, "options": _options_dict(self.options)}

    @contextmanager
    def offline(self, evaluations: int = 0) -> Iterator[None]:
        """Count the enclosed work as offline cost (seconds, and ``evaluations`` evaluations), not decoding."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.offline_seconds += time.perf_counter() - started
            self.offline_evaluations += int(evaluations)

    def prepared(self) -> tuple[TaskInstance, RunContext]:
        """``(task, context)``, or a MobenchError when ``generate`` is called before ``prepare``."""
        if self.task is None or self.context is None:
            raise MobenchError(f"{self.name}.generate called before prepare")
        return self.task, self.context


def _options_dict(options: Any) -> Any:
    return options.to_dict() if hasattr(options, "to_dict") else options


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: a name, a factory building the Method, a description, fixed option values.

    ``fixed`` holds option values the registration sets (an ablation registered under its own name, for
    example); the user's ``-o`` can still override them.
    """

    name: str
    factory: Callable[..., Any]
    description: str = ""
    fixed: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: a name, a loader ``load(scale, context) -> TaskInstance``, its objectives in order.

    ``calibration`` is the JSON file that holds the task's normalisation and reference point per scale
    (written by ``mobench calibrate --task NAME``); None puts it in the cache folder,
    ``$MOBENCH_CACHE/calibration/NAME.json``.
    """

    name: str
    load: Callable[[str, RunContext], TaskInstance]
    objectives: tuple[str, ...]
    description: str = ""
    calibration: Any = None


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: a name, a factory ``build(scale) -> Objective``, its direction, a description."""

    name: str
    build: Callable[..., Objective]
    direction: int = 1
    description: str = ""
