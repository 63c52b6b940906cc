"""MAGE (Merge And GuidE, Xie et al. 2025): a Bone-Soup base guided by one preference-merged value model.

Stage 1, base: m backbones trained by MORLHF (RLOO, LoRA) on the rows of B = b I + (1-b)/(m-1) (J - I);
row r's base is the exact LoRA merge theta_base(mu) = theta_ref + sum_j c_j delta_j, c = diag(k) (B^T)^-1 mu.
Stage 2, proxy: per-objective DPO experts pi_i (implicit) and value models V_i = LoRA_i + head_i regressed on
the z-scores of scored rollouts of the reference policy (explicit), merged by mu in weight space:
pi_mu = theta_ref + sum_i mu_i delta_dpo_i, V_mu = (theta_ref + sum_i mu_i delta_value_i, sum_i mu_i head_i).
Decoding: at each step, with T_k the base's top-k next tokens, the next token maximises (greedy) or is sampled
from softmax(s / temperature) over T_k of

    s(v) = log pi_base(mu)(v | x, y<t) + alpha * g(v),
    g(v) = w_imp * beta * [log pi_mu(v | x, y<t) - log pi_ref(v | x, y<t)] + w_exp * V_mu(x, y<t v),

beta the DPO experts' beta, w_imp = 1/beta by default (the implicit term is then the log-ratio itself), w_exp = 1
(V in z-units), alpha = 1. guidance=implicit sets w_exp = 0, explicit sets w_imp = 0; proxy=ensemble replaces
the merged proxy by sum_i mu_i [beta (log pi_i - log pi_ref)] and sum_i mu_i V_i(x, y<t v) (one model each);
base=reference decodes from pi_ref (then log pi_ref is the base itself). Constants come from task.budgets["mage"]:
b, k, alpha, top_k, implicit_weight, explicit_weight.
"""

from __future__ import annotations

from typing import Any

from mobench import hookimpl
from mobench.api import MobenchError, Preference, RunContext, TaskInstance

MAGE_BUDGET_KEYS = ("b", "k", "alpha", "top_k", "implicit_weight", "explicit_weight")


class Mage:
    """MAGE and its ablations (guidance, proxy and base switches), one class."""

    batch_preferences = True

    def __init__(self, guidance: str = "both", proxy: str = "merged", base: str = "bonesoup", variant: str = "mage", **unknown: Any):
        if unknown:
            raise MobenchError(f"mage takes options guidance, proxy, base (got {', '.join(sorted(unknown))})")
        self.name = variant
        self.options = {"guidance": guidance, "proxy": proxy, "base": base}
        self.task: TaskInstance | None = None
        self.context = RunContext()
        self.decoder = None
        self.pieces: dict[str, Any] = {}

    def settings(self, task: TaskInstance):
        """The MageSettings for ``task``: this method's switches plus task.budgets["mage"] and the DPO beta."""
        from mobench.mage.decoder import MageSettings
        from mobench.training.dpo import dpo_budget

        given = dict(task.budgets.get("mage") or {})
        unknown = set(given) - set(MAGE_BUDGET_KEYS)
        if unknown:
            raise MobenchError(f"task budget 'mage' has unknown keys {sorted(unknown)}; known: {', '.join(MAGE_BUDGET_KEYS)}")
        given = {k: v for k, v in given.items() if v is not None}
        if "k" in given:
            given["k"] = tuple(float(x) for x in given["k"])
        s = MageSettings(**self.options, beta=float(dpo_budget(task)["beta"]), **given)
        s.check()
        return s

    def prepare(self, task: TaskInstance, context: RunContext) -> None:
        import torch

        from mobench.bonesoup import train_backbones
        from mobench.mage.decoder import MageDecoder
        from mobench.mage.value import load_head, train_value_model
        from mobench.training.common import load_policy_with_adapters, resolve_device
        from mobench.training.dpo import load_experts

        if len(task.objectives) < 2:
            raise MobenchError(f"mage needs at least 2 objectives; task {task.name!r} has {len(task.objectives)}")
        self.task, self.context = task, context
        settings = self.settings(task)
        names = task.objective_names
        adapters: dict[str, str] = {}
        if settings.base == "bonesoup":
            for j, path in enumerate(train_backbones(task, settings.b, context)):
                adapters[f"bone{j}"] = str(path)
        if settings.uses_implicit:
            for name, path in load_experts(task, context).items():  # the same cached experts as rewarded-soups
                adapters[f"dpo_{name}"] = str(path)
        value_paths = {}
        if settings.uses_explicit:
            value_paths = {name: train_value_model(task, name, context) for name in names}
            adapters.update({f"value_{name}": str(p) for name, p in value_paths.items()})
        heads = None
        if value_paths:
            loaded = [load_head(value_paths[n]) for n in names]
            heads = (torch.cat([w for w, _ in loaded]), torch.cat([b for _, b in loaded]))
        model, tok = load_policy_with_adapters(task.policy, adapters, resolve_device(context)) if adapters else _plain(task, context)
        self.pieces = {"adapters": adapters, "settings": settings.__dict__}
        self.decoder = MageDecoder(
            model, tok, settings,
            backbones=[a for a in adapters if a.startswith("bone")],
            experts=[f"dpo_{n}" for n in names] if settings.uses_implicit else [],
            values=[f"value_{n}" for n in names] if settings.uses_explicit else [],
            heads=heads,
        )

    def generate(self, prompts: list[str], preferences: list[Preference]) -> list[list[str]]:
        if self.decoder is None or self.task is None:
            raise MobenchError(f"{self.name}.generate called before prepare")
        return self.decoder.generate(prompts, preferences, self.task.generation, self.context.seed, self.context.progress)

    def provenance(self) -> dict[str, Any]:
        return {"method": self.name, "options": self.options, "formula": __doc__, **self.pieces}


def _plain(task: TaskInstance, context: RunContext):
    from mobench.models import load_causal_lm
    from mobench.training.common import resolve_device

    return load_causal_lm(task.policy, device=resolve_device(context))


VARIANTS = {
    "mage": ({}, "MAGE: Bone-Soup base + merged implicit and explicit value guidance on the top-k"),
    "mage-implicit": ({"guidance": "implicit"}, "MAGE ablation: implicit (DPO log-ratio) guidance only"),
    "mage-explicit": ({"guidance": "explicit"}, "MAGE ablation: explicit value-head guidance only"),
    "mage-ensemble": ({"proxy": "ensemble"}, "MAGE ablation: ensemble of per-objective value models, not one merged proxy"),
    "mage-refbase": ({"base": "reference"}, "MAGE ablation: guide the reference policy, not the Bone-Soup base"),
}


@hookimpl
def register_methods(register):
    for name, (options, description) in VARIANTS.items():
        register.method(name, Mage, description, variant=name, **options)
