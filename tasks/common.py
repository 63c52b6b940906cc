"""What the built-in tasks share: the per-scale declaration of a task and the assembly of its TaskInstance.

A built-in task is a :class:`BuiltinTask`: its objectives (by registered name), data sources, scales,
evaluation chats and preference pairs. Loading one templates every chat for the scale's policy
(:func:`mobench.tasks.chats.template`, which keeps each prompt's chat for the scorers), gets the
objectives from the registry and hands the core a TaskInstance without normalisation: the core attaches
it from the task's calibration file (``mobench calibrate --task NAME`` writes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mobench import hookimpl
from mobench.api import SCALES, Chat, Generation, MobenchError, PreferencePair, RunContext, TaskInstance, prompts_sha256
from mobench.tasks.data import RawPair, seeded_order

TINY_POLICY = "smollm2-135m-instruct"
PAPER_POLICY = "Qwen/Qwen2.5-7B-Instruct"
# Points per edge of the weight simplex, the same for every method on a task: at least 5 at tiny scale
# (the corners, the middle and the quarter points of a 2-objective edge) and 11 at paper scale (steps of 0.1).
TINY_GRID_POINTS = 5
PAPER_GRID_POINTS = 11


@dataclass(frozen=True)
class ScaleConfig:
    """One scale of a task: policy, prompt counts and limit, grid size, decoding settings, data seed.

    ``n_validation``: validation prompts per group of ``n_prompts`` (same keys), drawn from the same held-out
    pool right after the evaluation prompts, so they share their distribution and none of their prompts.
    """

    policy: str
    n_prompts: dict[str, int]
    prompt_limit: int
    grid_points: int
    generation: Generation
    seed: int = 0
    n_validation: dict[str, int] = field(default_factory=dict)


TINY_BATCH = 32  # decoding rows a batch at the tiny scale (see tiny_scale)


def tiny_scale(n_prompts: dict[str, int], prompt_limit: int, max_new_tokens: int,
               n_validation: dict[str, int] | None = None) -> ScaleConfig:
    """The tiny scale: SmolLM2-135M-Instruct on a CPU, a 5-point grid, greedy decoding in batches of 32.

    32, not 8: on the 2-core CPU (bench/mage.py, SmolLM2-135M, 32 new tokens, one run each) plain generate makes
    87.3 tokens/s at batch 32 against 43.8 at 8 (1.99x) and MAGE's guided decoding 11.8 against 6.4 (1.84x);
    64 adds 1.09x to MAGE for 0.7 GB more, and longer chunks wait longer for their last row.
    """
    return ScaleConfig(TINY_POLICY, n_prompts, prompt_limit, TINY_GRID_POINTS, Generation(max_new_tokens, False, 1.0, TINY_BATCH),
                       n_validation=dict(n_validation or {}))


def paper_scale(n_prompts: dict[str, int], prompt_limit: int, max_new_tokens: int,
                n_validation: dict[str, int] | None = None) -> ScaleConfig:
    """The paper scale: Qwen2.5-7B-Instruct, an 11-point grid, greedy decoding in batches of 32."""
    return ScaleConfig(PAPER_POLICY, n_prompts, prompt_limit, PAPER_GRID_POINTS, Generation(max_new_tokens, False, 1.0, 32),
                       n_validation=dict(n_validation or {}))


@dataclass(frozen=True)
class BuiltinTask:
    """A built-in task's declaration; :meth:`load` is its loader and :meth:`register` its registration.

    ``chats(cfg)``: the evaluation chats at a scale; ``pairs()``: objective name -> preference pairs before
    templating; ``sources``: the data sources (for provenance); ``calibration``: its committed calibration file;
    ``validation(cfg)`` (optional): the validation chats at a scale, held out like the evaluation chats and
    disjoint from them (checked at load, as is their disjointness from the pairs' prompts).
    """

    name: str
    objectives: tuple[str, ...]
    sources: tuple[str, ...]
    scales: dict[str, ScaleConfig]
    chats: Callable[[ScaleConfig], list[Chat]]
    pairs: Callable[[], dict[str, list[RawPair]]]
    calibration: Path
    description: str = ""
    validation: Callable[[ScaleConfig], list[Chat]] | None = None

    def config(self, scale: str) -> ScaleConfig:
        """The declared scale, or a MobenchError naming the known ones."""
        if scale not in self.scales:
            known = ", ".join(s for s in SCALES if s in self.scales)
            raise MobenchError(f"task {self.name!r} has no scale {scale!r} (known: {known})")
        return self.scales[scale]

    def training_pairs(self, scale: str = "tiny") -> dict[str, list[PreferencePair]]:
        """Objective name -> the preference pairs at ``scale``, in their seeded order, prompts templated for the policy.

        What :meth:`load` puts in ``TaskInstance.pairs``, without building the objectives (benches of the trainers).
        """
        from mobench.tasks.chats import template

        cfg = self.config(scale)
        # A seeded order so that the first n pairs a trainer takes are a fair sample of all of them.
        raw = {name: seeded_order(pairs, cfg.seed) for name, pairs in self.pairs().items()}
        rest = iter(template(cfg.policy, [p.chat for ps in raw.values() for p in ps]))
        return {name: [PreferencePair(next(rest), p.chosen, p.rejected) for p in ps] for name, ps in raw.items()}

    def load(self, scale: str = "tiny", context: RunContext | None = None) -> TaskInstance:
        """The task at ``scale``: prompts and pairs templated for the policy, objectives from the registry."""
        from mobench.tasks.chats import template
        from mobench.tasks.sources import SOURCES

        cfg = self.config(scale)
        context = context if context is not None else RunContext()
        chats = self.chats(cfg)
        prompts = template(cfg.policy, chats)
        pairs = self.training_pairs(scale)
        leaked = set(prompts) & {p.prompt for ps in pairs.values() for p in ps}
        if leaked:  # guarded by construction in tasks.data; kept as a check because it would bias every method
            raise MobenchError(f"task {self.name!r}: {len(leaked)} evaluation prompts also appear in training pairs")
        validation = template(cfg.policy, self.validation(cfg)) if self.validation is not None else []
        leaked = set(validation) & ({p.prompt for ps in pairs.values() for p in ps} | set(prompts))
        if leaked:  # the same held-out pool as the evaluation prompts, after them: disjoint by construction
            raise MobenchError(f"task {self.name!r}: {len(leaked)} validation prompts are evaluation or pair prompts")
        provenance: dict[str, Any] = {
            "task": self.name,
            "scale": scale,
            "seed": cfg.seed,
            "n_prompts": len(prompts),
            "prompts_sha256": prompts_sha256(prompts),
            "pairs": {name: len(ps) for name, ps in pairs.items()},
            "data": [SOURCES.provenance(s) for s in self.sources],
        }
        if validation:
            provenance["validation"] = {"n": len(validation), "sha256": prompts_sha256(validation)}
        return TaskInstance(
            name=self.name,
            scale=scale,
            policy=cfg.policy,
            objectives=[context.objective(name, scale) for name in self.objectives],
            prompts=prompts,
            chats=chats,
            pairs=pairs,
            grid_points=cfg.grid_points,
            generation=cfg.generation,
            provenance=provenance,
            validation_prompts=validation,
        )

    @hookimpl
    def register_tasks(self, register) -> None:
        """The task module's ``register_tasks`` hook (``register_tasks = TASK.register_tasks`` in the module)."""
        register.task(self.name, self.load, objectives=self.objectives, description=self.description,
                      calibration=self.calibration)
