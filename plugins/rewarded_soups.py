"""Rewarded Soups (Ramé et al. 2023): theta(w) = sum_i w_i theta_i over per-objective LoRA DPO experts.

The soup is the exact LoRA-delta merge sum_i w_i B_i A_i (mobench.merging), rebuilt per grid point on
one in-memory copy of the policy; the experts come from the artifact cache (mobench.training). The
experts' DPO budget is this method's option group ``experts`` (``-o steps=8`` sets ``experts.steps``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mobench import hookimpl
from mobench.api import Preference
from mobench.options import Options, budget
from mobench.training import DpoBudget, ExpertsMethod


@dataclass(frozen=True)
class RewardedSoupsOptions(Options):
    """Rewarded Soups' options: only the budget of the per-objective DPO experts it merges."""

    experts: DpoBudget = budget(DpoBudget, "the per-objective LoRA DPO experts (shared with other methods through the cache)")


class RewardedSoups(ExpertsMethod):
    """Merge the experts' LoRA deltas by the preference, then decode with the merged policy."""

    Options = RewardedSoupsOptions
    name = "rewarded-soups"
    batch_preferences = False  # one merged model per grid point: nothing to share across points

    def generate(self, prompts: list[str], preferences: list[Preference]) -> list[list[str]]:
        from mobench.decoding import generate_for_task
        from mobench.merging import merge_lora_adapters

        task, context = self.prepared()
        self.check_preferences(preferences)
        out = []
        for preference in preferences:
            merge_lora_adapters(self.model, list(self.experts), preference.weights)
            out.append(generate_for_task(self.model, self.tokenizer, prompts, task.generation, context, f"rewarded-soups w=({preference.key})"))
        return out

    def provenance(self) -> dict[str, Any]:
        merge = "exact LoRA-delta soup sum_i w_i B_i A_i (peft add_weighted_adapter, combination_type=cat)"
        return {**super().provenance(), "merge": merge}


@hookimpl
def register_methods(register):
    register.method("rewarded-soups", RewardedSoups, "Rewarded Soups: exact merge of per-objective LoRA DPO experts by the preference")
