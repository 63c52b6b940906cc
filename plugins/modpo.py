"""MODPO (Zhou et al. 2024): one margin-DPO LoRA policy per grid point, trained on trl's DPOTrainer.

At w, MODPO trains on the pairs of the objective k with the largest weight, with the margin
w_{-k} . (r_{-k}(x, y_w) - r_{-k}(x, y_l)) from the other objectives, and the loss divided by w_k
(see mobench.training.modpo). Option ``margin``: "scores" (default; the task's objectives, z-normalised)
or "implicit" (beta log pi_j/pi_ref of the per-objective DPO experts, shared with Rewarded Soups).
Budget keys given as options (``-o steps=12``) override the task's MODPO/DPO budget for this run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mobench import hookimpl
from mobench.api import MobenchError, Preference, RunContext, TaskInstance


class Modpo:
    """Train (or reuse) one MODPO policy per preference, then generate with it."""

    name = "modpo"
    batch_preferences = False

    def __init__(self, margin: str = "scores", **budget: Any):
        from mobench.training.modpo import BUDGET_KEYS

        unknown = sorted(set(budget) - BUDGET_KEYS)
        if unknown:
            raise MobenchError(f"modpo has no option(s) {', '.join(unknown)}; it takes margin=scores|implicit and budget keys {', '.join(sorted(BUDGET_KEYS))}")
        self.margin = str(margin)
        self.budget_overrides = budget
        self.task: TaskInstance | None = None
        self.context = RunContext()
        self.policies: dict[str, str] = {}

    def prepare(self, task: TaskInstance, context: RunContext) -> None:
        from mobench.training.modpo import MarginSource

        if not any(task.pairs.get(name) for name in task.objective_names):
            raise MobenchError(f"modpo trains on preference pairs and task {task.name!r} has none")
        if self.budget_overrides:  # -o steps=12 ...: a different budget, hence different cached policies
            budgets = {**task.budgets, "modpo": {**(task.budgets.get("modpo") or {}), **self.budget_overrides}}
            task = dataclasses.replace(task, budgets=budgets)
        self.task, self.context = task, context
        self.margins = MarginSource(task, context, self.margin)

    def generate(self, prompts: list[str], preferences: list[Preference]) -> list[list[str]]:
        from mobench.decoding.generate import generate_with_adapter
        from mobench.training.modpo import train_modpo_policy

        if self.task is None:
            raise MobenchError("modpo.generate called before prepare")
        out = []
        for preference in preferences:
            path = train_modpo_policy(self.task, preference.weights, self.margins, self.context)
            self.policies[preference.key] = str(path)
            out.append(generate_with_adapter(self.task, path, prompts, self.context, f"MODPO generating w=({preference.key})"))
        return out

    def provenance(self) -> dict[str, Any]:
        from mobench.training.modpo import modpo_budget

        return {
            "method": "modpo",
            "trainer": "trl.DPOTrainer subclass (MODPO margin loss), LoRA",
            "margin": self.margin,
            "budget": modpo_budget(self.task) if self.task is not None else None,
            "policies": dict(self.policies),
        }


@hookimpl
def register_methods(register):
    register.method("modpo", Modpo, "MODPO: one margin-DPO LoRA policy per preference (trl DPOTrainer)")
