"""Logit-ensemble guidance (MOD, Shi et al. 2024): next-token score sum_i w_i log pi_i(y_t | x, y_<t).

The per-objective LoRA DPO experts (shared with Rewarded Soups through the artifact cache) sit as
adapters on one base; mobench.decoding's loop runs one KV cache per expert and batches prompts and grid
points together, each row carrying its own weights. Options: ``max_rows`` (rows per decoding batch) and
the experts' DPO budget ``experts`` (``-o steps=8`` sets ``experts.steps``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mobench import hookimpl
from mobench.api import MobenchError, Preference
from mobench.options import Options, budget, option
from mobench.training import DpoBudget, ExpertsMethod


@dataclass(frozen=True)
class LogitEnsembleOptions(Options):
    """The logit ensemble's options: rows per decoding batch and the experts' DPO budget."""

    max_rows: int = option(64, "rows (prompt x grid point) decoded per batch at most")
    experts: DpoBudget = budget(DpoBudget, "the per-objective LoRA DPO experts (shared with other methods through the cache)")

    def check(self) -> None:
        if self.max_rows < 1:
            raise MobenchError(f"logit-ensemble max_rows must be >= 1, not {self.max_rows!r}")


class LogitEnsemble(ExpertsMethod):
    """Decode every grid point at once with the weighted sum of the experts' next-token log-probs."""

    Options = LogitEnsembleOptions
    name = "logit-ensemble"
    batch_preferences = True

    def prepare(self, task, context) -> None:
        from mobench.decoding import ModelScorer

        super().prepare(task, context)  # the experts, as adapters on one policy
        self.scorers = [ModelScorer(self.model, name) for name in self.experts]

    def generate(self, prompts: list[str], preferences: list[Preference]) -> list[list[str]]:
        from mobench.decoding import decode_grid, logit_ensemble

        task, context = self.prepared()
        self.check_preferences(preferences)
        return decode_grid(self.scorers, logit_ensemble, self.tokenizer, prompts, preferences, task.generation, context,
                           self.options.max_rows, "logit-ensemble")

    def provenance(self) -> dict[str, Any]:
        decoding = "sum_i w_i log pi_i per token, one KV cache per expert adapter (mobench.decoding)"
        return {**super().provenance(), "decoding": decoding}


@hookimpl
def register_methods(register):
    register.method("logit-ensemble", LogitEnsemble, "MOD logit ensemble: decode with sum_i w_i log pi_i of per-objective DPO experts")
