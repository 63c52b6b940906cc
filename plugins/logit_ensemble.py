"""Logit-ensemble guidance (MOD, Shi et al. 2024): next-token score sum_i w_i log pi_i(y_t | x, y_<t).

The per-objective LoRA DPO experts (shared with Rewarded Soups through the artifact cache) sit as
adapters on one base; mobench.decoding.loop runs one KV cache per expert and batches prompts and grid
points together, each row carrying its own weights. Options: ``max_rows`` (rows per decoding batch) and
DPO budget keys (``-o steps=8``), which override the task's expert budget for a run.
"""

from __future__ import annotations

from typing import Any

from mobench import hookimpl
from mobench.api import MobenchError, Preference, RunContext, TaskInstance


class LogitEnsemble:
    """Decode every grid point at once with the weighted sum of the experts' next-token log-probs."""

    name = "logit-ensemble"
    batch_preferences = True

    def __init__(self, max_rows: int = 64, **budget: Any):
        from mobench.training.dpo import DPO_DEFAULTS

        unknown = sorted(set(budget) - set(DPO_DEFAULTS))
        if unknown:
            raise MobenchError(f"logit-ensemble has no option(s) {', '.join(unknown)}; it takes max_rows=N and DPO budget keys {', '.join(sorted(DPO_DEFAULTS))}")
        self.budget_overrides = budget
        self.max_rows = int(max_rows)
        if self.max_rows < 1:
            raise MobenchError(f"logit-ensemble max_rows must be >= 1, not {max_rows!r}")
        self.task: TaskInstance | None = None
        self.context = RunContext()
        self.experts: dict[str, Any] = {}

    def prepare(self, task: TaskInstance, context: RunContext) -> None:
        from mobench.decoding.loop import ModelScorer
        from mobench.training.dpo import load_expert_policy, with_dpo_budget

        # -o steps=8 ...: a different expert budget, hence different (separately cached) experts
        task = with_dpo_budget(task, self.budget_overrides)
        self.task, self.context = task, context
        self.model, self.tokenizer, self.experts = load_expert_policy(task, context)
        self.scorers = [ModelScorer(self.model, name) for name in self.experts]

    def generate(self, prompts: list[str], preferences: list[Preference]) -> list[list[str]]:
        from dataclasses import replace

        from mobench.decoding.loop import DecodeSettings, decode, logit_ensemble

        if self.task is None:
            raise MobenchError("logit-ensemble.generate called before prepare")
        k = len(self.experts)
        for p in preferences:
            if len(p) != k:
                raise MobenchError(f"preference {p.key} has {len(p)} weights for {k} experts")
        settings = DecodeSettings.from_task(self.task.generation, self.context.seed)
        # A batch holds batch_size prompts at every grid point (capped by max_rows): rows are
        # prompt-major, so a batch's rows share prompts and need little padding.
        settings = replace(settings, batch_size=max(1, min(self.max_rows, settings.batch_size * len(preferences))))
        rows = [(i, j) for i in range(len(prompts)) for j in range(len(preferences))]
        texts = decode(
            self.scorers,
            logit_ensemble,
            self.tokenizer,
            [prompts[i] for i, _ in rows],
            [preferences[j].weights for _, j in rows],
            settings,
            progress=self.context.progress,
            description=f"logit-ensemble ({len(preferences)} grid points x {len(prompts)} prompts)",
        )
        out = [[""] * len(prompts) for _ in preferences]
        for (i, j), text in zip(rows, texts):
            out[j][i] = text
        return out

    def provenance(self) -> dict[str, Any]:
        from mobench.training.dpo import dpo_budget, expert_record

        return {
            "method": self.name,
            "decoding": "sum_i w_i log pi_i per token, one KV cache per expert adapter (mobench.decoding.loop)",
            "max_rows": self.max_rows,
            "experts": {k: {"path": str(v), "train": expert_record(v)} for k, v in self.experts.items()},
            "budget": dpo_budget(self.task) if self.task is not None else None,
        }


@hookimpl
def register_methods(register):
    register.method("logit-ensemble", LogitEnsemble, "MOD logit ensemble: decode with sum_i w_i log pi_i of per-objective DPO experts")
