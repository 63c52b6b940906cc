"""MORLHF: one RL-trained LoRA policy per grid point on the scalarised reward sum_i w_i z_i.

Training is trl's RLOOTrainer with a KL penalty to the reference policy in the reward, the stand-in for the
papers' PPO (why: see mobench.training.rl). Each objective is z-normalised by the task's statistics first.
Budget keys given as options (``-o steps=24``) override the task's "rl" budget for this run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mobench import hookimpl
from mobench.api import MobenchError, Preference, RunContext, TaskInstance


class Morlhf:
    """Train (or reuse) one RLOO policy per preference, then generate with it."""

    name = "morlhf"
    batch_preferences = False

    def __init__(self, **budget: Any):
        from mobench.training.rl import BUDGET_KEYS

        unknown = sorted(set(budget) - BUDGET_KEYS)
        if unknown:
            raise MobenchError(f"morlhf has no option(s) {', '.join(unknown)}; it takes budget keys {', '.join(sorted(BUDGET_KEYS))}")
        self.budget_overrides = budget
        self.task: TaskInstance | None = None
        self.context = RunContext()
        self.policies: dict[str, str] = {}

    def prepare(self, task: TaskInstance, context: RunContext) -> None:
        from mobench.training.rl import training_prompts, rl_budget

        if self.budget_overrides:  # -o steps=24 ...: a different budget, hence different cached policies
            task = dataclasses.replace(task, budgets={**task.budgets, "rl": {**(task.budgets.get("rl") or {}), **self.budget_overrides}})
        self.task, self.context = task, context
        budget = rl_budget(task)
        training_prompts(task, budget["n_prompts"], context.seed, budget["max_prompt_chars"])  # fail now, not later

    def generate(self, prompts: list[str], preferences: list[Preference]) -> list[list[str]]:
        from mobench.decoding.generate import generate_with_adapter
        from mobench.training.rl import train_rl_policy

        if self.task is None:
            raise MobenchError("morlhf.generate called before prepare")
        out = []
        for preference in preferences:
            path = train_rl_policy(self.task, preference.weights, self.context)
            self.policies[preference.key] = str(path)
            out.append(generate_with_adapter(self.task, path, prompts, self.context, f"MORLHF generating w=({preference.key})"))
        return out

    def provenance(self) -> dict[str, Any]:
        from mobench.training.rl import rl_budget

        return {
            "method": "morlhf",
            "trainer": "trl.RLOOTrainer (KL-penalised reward, leave-one-out baseline), LoRA",
            "reward": "sum_i w_i z_i, z_i = direction_i (score_i - mean_i) / std_i",
            "budget": rl_budget(self.task) if self.task is not None else None,
            "policies": dict(self.policies),
        }


@hookimpl
def register_methods(register):
    register.method("morlhf", Morlhf, "MORLHF: one RLOO LoRA policy per preference on sum_i w_i z_i (trl RLOOTrainer)")
