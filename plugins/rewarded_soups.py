"""Rewarded Soups (Ramé et al. 2023): theta(w) = sum_i w_i theta_i over per-objective LoRA DPO experts.

The soup is the exact LoRA-delta merge sum_i w_i B_i A_i (mobench.merging), rebuilt per grid point on
one in-memory copy of the policy; the experts come from the artifact cache (mobench.training.dpo).
DPO budget keys given as options (``-o steps=8``) override the task's expert budget for a run.
"""

from __future__ import annotations

from typing import Any

from mobench import hookimpl
from mobench.api import MobenchError, Preference, RunContext, TaskInstance


class RewardedSoups:
    """Merge the experts' LoRA deltas by the preference, then decode with the merged policy."""

    name = "rewarded-soups"
    batch_preferences = False  # one merged model per grid point: nothing to share across points

    def __init__(self, **budget: Any):
        from mobench.training.dpo import DPO_DEFAULTS

        unknown = sorted(set(budget) - set(DPO_DEFAULTS))
        if unknown:
            raise MobenchError(f"rewarded-soups has no option(s) {', '.join(unknown)}; it takes DPO budget keys {', '.join(sorted(DPO_DEFAULTS))}")
        self.budget_overrides = budget
        self.task: TaskInstance | None = None
        self.context = RunContext()
        self.experts: dict[str, Any] = {}

    def prepare(self, task: TaskInstance, context: RunContext) -> None:
        from mobench.training.dpo import load_expert_policy, with_dpo_budget

        # -o steps=8 ...: a different expert budget, hence different (separately cached) experts
        task = with_dpo_budget(task, self.budget_overrides)
        self.task, self.context = task, context
        self.model, self.tokenizer, self.experts = load_expert_policy(task, context)

    def generate(self, prompts: list[str], preferences: list[Preference]) -> list[list[str]]:
        from mobench.decoding.generate import generate_for_task
        from mobench.merging import merge_lora_adapters

        if self.task is None:
            raise MobenchError("rewarded-soups.generate called before prepare")
        names = list(self.experts)
        out = []
        for preference in preferences:
            if len(preference) != len(names):
                raise MobenchError(f"preference {preference.key} has {len(preference)} weights for {len(names)} experts")
            merge_lora_adapters(self.model, names, preference.weights)
            out.append(generate_for_task(self.model, self.tokenizer, prompts, self.task, self.context, f"rewarded-soups w=({preference.key})"))
        return out

    def provenance(self) -> dict[str, Any]:
        from mobench.training.dpo import dpo_budget, expert_record

        return {
            "method": self.name,
            "merge": "exact LoRA-delta soup sum_i w_i B_i A_i (peft add_weighted_adapter, combination_type=cat)",
            "experts": {k: {"path": str(v), "train": expert_record(v)} for k, v in self.experts.items()},
            "budget": dpo_budget(self.task) if self.task is not None else None,
        }


@hookimpl
def register_methods(register):
    register.method("rewarded-soups", RewardedSoups, "Rewarded Soups: exact merge of per-objective LoRA DPO experts by the preference")
