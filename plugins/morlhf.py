"""MORLHF: one RL-trained LoRA policy per grid point on the scalarised reward sum_i w_i z_i.

Training is trl's RLOOTrainer with a KL penalty to the reference policy in the reward, the stand-in for the
papers' PPO (why: see mobench.training.rl). Each objective is z-normalised by the task's statistics first.
The RL budget is this method's option group ``train`` (``-o steps=24`` sets ``train.steps``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mobench import hookimpl
from mobench.api import Method, Preference
from mobench.options import Options, budget
from mobench.training import RlBudget


@dataclass(frozen=True)
class MorlhfOptions(Options):
    """MORLHF's options: the budget of the RLOO policy trained at each grid point."""

    train: RlBudget = budget(RlBudget, "the LoRA RLOO policy trained per preference on sum_i w_i z_i")


class Morlhf(Method):
    """Train (or reuse) one RLOO policy per preference, then generate with it."""

    Options = MorlhfOptions
    name = "morlhf"
    batch_preferences = False

    def __init__(self, options: MorlhfOptions | None = None):
        super().__init__(options)
        self.policies: dict[str, str] = {}

    def prepare(self, task, context) -> None:
        from mobench.training import training_prompts

        super().prepare(task, context)
        train = self.options.train
        # The task's pair prompts, never its evaluation prompts; chosen now so that a task without any fails here.
        self.prompts = training_prompts(task, train.n_prompts, context.seed, train.max_prompt_chars)

    def generate(self, prompts: list[str], preferences: list[Preference]) -> list[list[str]]:
        from mobench.decoding import generate_with_adapter
        from mobench.training import train_rl_policy

        task, context = self.prepared()
        out = []
        for preference in preferences:
            path = train_rl_policy(task.policy, task.objectives, task.normalisation, preference.weights, self.prompts,
                                   self.options.train, context)
            self.policies[preference.key] = str(path)
            out.append(generate_with_adapter(task.policy, path, prompts, task.generation, context, f"MORLHF generating w=({preference.key})"))
        return out

    def provenance(self) -> dict[str, Any]:
        return {
            **super().provenance(),
            "trainer": "trl.RLOOTrainer (KL-penalised reward, leave-one-out baseline), LoRA",
            "reward": "sum_i w_i z_i, z_i = direction_i (score_i - mean_i) / std_i",
            "policies": dict(self.policies),
        }


@hookimpl
def register_methods(register):
    register.method("morlhf", Morlhf, "MORLHF: one RLOO LoRA policy per preference on sum_i w_i z_i (trl RLOOTrainer)")
