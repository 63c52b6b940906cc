"""MORLHF: one RL-trained LoRA policy per grid point on the scalarised reward sum_i w_i z_i.

Training is trl's RLOOTrainer with a KL penalty to the reference policy in the reward, the stand-in for the
papers' PPO (why: see mobench.training.rl). Each objective is z-normalised by the task's statistics first.
The RL budget is this method's option group ``train`` (``-o steps=24`` sets ``train.steps``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobench import hookimpl
from mobench.api import Preference
from mobench.options import Options, budget
from mobench.training import PolicyPerPreference, RlBudget


@dataclass(frozen=True)
class MorlhfOptions(Options):
    """MORLHF's options: the budget of the RLOO policy trained at each grid point."""

    train: RlBudget = budget(RlBudget, "the LoRA RLOO policy trained per preference on sum_i w_i z_i")


class Morlhf(PolicyPerPreference):
    """Train (or reuse) one RLOO policy per preference, then generate with it."""

    Options = MorlhfOptions
    name = "morlhf"
    label = "MORLHF"
    batch_preferences = False

    def prepare(self, task, context) -> None:
        from mobench.training import rl_prompts

        super().prepare(task, context)
        # The task's pair prompts, never its evaluation prompts, no longer than its longest evaluation prompt unless
        # set; chosen now so that a task with too few fails here, before any training.
        self.budget = self.options.train.at_task(task)  # resolved once: every grid point trains with it
        self.prompts = rl_prompts(task, self.budget, context.seed)

    def train_policy(self, preference: Preference) -> Path:
        from mobench.training import train_rl_policy

        task, context = self.prepared()
        return train_rl_policy(task.policy, task.objectives, task.normalisation, preference.weights, self.prompts,
                               self.budget, context)

    def provenance(self) -> dict[str, Any]:
        return {
            **super().provenance(),
            "trainer": "trl.RLOOTrainer (KL-penalised reward, leave-one-out baseline), LoRA",
            "reward": "sum_i w_i z_i, z_i = direction_i (score_i - mean_i) / std_i",
        }


@hookimpl
def register_methods(register):
    register.method("morlhf", Morlhf, "MORLHF: one RLOO LoRA policy per preference on sum_i w_i z_i (trl RLOOTrainer)")
