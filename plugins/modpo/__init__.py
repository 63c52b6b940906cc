"""MODPO (Zhou et al. 2024): one margin-DPO LoRA policy per grid point, trained on trl's DPOTrainer.

At w, MODPO trains on the pairs of the objective k with the largest weight, with the margin
w_{-k} . (r_{-k}(x, y_w) - r_{-k}(x, y_l)) from the other objectives, and the loss divided by w_k
(see :mod:`mobench.methods.modpo.trainer`). Option ``margin``: "implicit" (default; beta log pi_j/pi_ref of
the per-objective DPO experts, shared with Rewarded Soups: a reward on the DPO log-ratio's own scale, the paper's
implicit-reward margin) or "scores" (the task's objectives, z-normalised). "implicit" was chosen on validation
prompts (bench/validation_sweep.py --set margin=scores,implicit; README "Tuning a method's knob").
Two budgets: ``train`` (the MODPO policy, ``-o train.steps=12``) and ``experts`` (the DPO experts of implicit
margins, ``-o experts.steps=8``); a bare ``steps`` is ambiguous and refused.

At a corner w = e_k MODPO's loss is plain DPO on objective k's pairs (no margin, w_k = 1): with ``corners``
"expert" (default) that policy is the DPO expert of objective k under the ``train`` budget, the same cached
artifact the expert-based methods use, instead of a second training of the same estimator (two of the five
trainings of the tiny grid). "train" trains the corners through the MODPO trainer like every other point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mobench import hookimpl
from mobench.api import MobenchError, Preference
from mobench.options import Options, budget, option
from mobench.training import DpoBudget, PolicyPerPreference


@dataclass(frozen=True)
class ModpoOptions(Options):
    """MODPO's options: where the margins come from, the MODPO policy's budget and the experts' budget."""

    margin: Literal["scores", "implicit"] = option(
        "implicit",
        "margins from the DPO experts' implicit rewards beta log pi_j/pi_ref (implicit) or the task's z-scored "
        "objectives (scores). implicit: chosen on validation prompts by the smallest worst-task shortfall (scores "
        "trails it by 2.29 [1.42, 3.32] HV on summarize, where its interior writes like the quality expert; "
        "implicit trails scores by 0.60 [-0.32, 1.45] on hh, not separable); README 'Tuning a method's knob'",
    )
    train: DpoBudget = budget(DpoBudget, "the margin-DPO LoRA policy trained per preference")
    experts: DpoBudget = budget(DpoBudget, "the per-objective LoRA DPO experts that give implicit margins (margin=implicit)")
    corners: Literal["expert", "train"] = option(
        "expert",
        "at w = e_k (plain DPO on objective k's pairs): the DPO expert under the train budget, shared with the "
        "expert-based methods (expert), or a MODPO-trainer policy (train)",
    )


class Modpo(PolicyPerPreference):
    """Train (or reuse) one MODPO policy per preference, then generate with it."""

    Options = ModpoOptions
    name = "modpo"
    label = "MODPO"
    batch_preferences = False

    def prepare(self, task, context) -> None:
        from mobench.methods.modpo.trainer import MarginSource

        if not any(task.pairs.get(name) for name in task.objective_names):
            raise MobenchError(f"modpo trains on preference pairs and task {task.name!r} has none")
        super().prepare(task, context)
        self.margins = MarginSource(task, context, self.options.margin, self.options.experts)

    def train_policy(self, preference: Preference) -> Path:
        from mobench.methods.modpo.trainer import modpo_plan, train_modpo_policy
        from mobench.training import train_dpo_expert

        task, context = self.prepared()
        k, others = modpo_plan(task, preference.weights)
        if self.options.corners == "expert" and not others:
            name = task.objective_names[k]  # w = e_k: MODPO's loss is DPO on k's pairs, the expert's
            return train_dpo_expert(task.policy, name, task.pairs[name], self.options.train, context)
        return train_modpo_policy(task, preference.weights, self.margins, self.options.train, context)

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "trainer": "trl.DPOTrainer subclass (MODPO margin loss), LoRA"}


@hookimpl
def register_methods(register):
    register.method("modpo", Modpo, "MODPO: one margin-DPO LoRA policy per preference (trl DPOTrainer)")
