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
base=reference decodes from pi_ref (then log pi_ref is the base itself). Constants are MageOptions' fields
(``mobench options mage``): b, k, alpha, top_k, implicit_weight, explicit_weight, and experts.beta.

The package: bonesoup.py (mixing matrix, merge coefficients, backbones), value.py (explicit value models and
their budget), rowmerge.py (per-row exact LoRA merges), guidance.py (scorers and the combiner for the shared
decoding loop), decoder.py (MageDecoder, which assembles them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from mobench import hookimpl
from mobench.api import Method, MobenchError, Preference, RunContext, TaskInstance
from mobench.options import Options, budget, option
from mobench.training import DpoBudget, RlBudget

from .value import ValueBudget


@dataclass(frozen=True)
class MageOptions(Options):
    """MAGE's switches (the ablations), guidance constants, and the budgets of the pieces it trains."""

    guidance: Literal["both", "implicit", "explicit"] = option(
        "both", "value guidance: implicit (DPO log-ratios) and explicit (value heads), or one of them")
    proxy: Literal["merged", "ensemble"] = option(
        "merged", "merged: one proxy merged by mu in weight space; ensemble: mu-weighted sum of per-objective models")
    base: Literal["bonesoup", "reference"] = option(
        "bonesoup", "the policy guided: the Bone-Soup merge of the backbones, or the reference policy")
    b: float = option(0.7, "Bone-Soup mixing: backbone j's reward weights are b on objective j, (1-b)/(m-1) elsewhere")
    k: tuple[float, ...] | None = option(None, "Bone-Soup rescaling of each backbone's merge coefficient (None: all 1)")
    alpha: float = option(1.0, "guidance strength: s = log pi_base + alpha g")
    top_k: int = option(8, "candidates per step: the base's top-k next tokens, re-scored by the guidance")
    implicit_weight: float | None = option(None, "w_imp, the implicit term's weight (None: 1/beta, the plain log-ratio)")
    explicit_weight: float = option(1.0, "w_exp, the explicit value's weight (values are in z-units)")
    experts: DpoBudget = budget(DpoBudget, "the per-objective DPO experts (implicit guidance; beta is the DPO beta)")
    backbones: RlBudget = budget(RlBudget, "the Stage-1 MORLHF backbones (RLOO on the rows of the mixing matrix)")
    value: ValueBudget = budget(ValueBudget, "the explicit value models (rollouts, then LoRA + head regression)")

    PRESETS: ClassVar = {"tiny": {}, "paper": {}}  # the nested budgets carry their own presets

    def check(self) -> None:
        if self.top_k < 1:
            raise MobenchError(f"mage top_k must be >= 1, got {self.top_k}")
        if not 0 < self.b <= 1:
            raise MobenchError(f"mage b must lie in (1/m, 1] for m objectives, got {self.b:g}")

    @property
    def uses_implicit(self) -> bool:
        """Whether the DPO experts' log-ratio guides (guidance both or implicit)."""
        return self.guidance in ("both", "implicit")

    @property
    def uses_explicit(self) -> bool:
        """Whether the value models guide (guidance both or explicit)."""
        return self.guidance in ("both", "explicit")

    @property
    def w_implicit(self) -> float:
        """The implicit term's weight in g (0 when it does not guide)."""
        if not self.uses_implicit:
            return 0.0
        return 1.0 / self.experts.beta if self.implicit_weight is None else float(self.implicit_weight)

    @property
    def w_explicit(self) -> float:
        """The explicit term's weight in g (0 when it does not guide)."""
        return float(self.explicit_weight) if self.uses_explicit else 0.0


class Mage(Method):
    """MAGE and its ablations (guidance, proxy and base switches), one class."""

    Options = MageOptions
    batch_preferences = True

    def __init__(self, options: MageOptions | None = None):
        super().__init__(options)
        self.options: MageOptions
        self.decoder = None
        self.pieces: dict[str, Any] = {}

    def prepare(self, task: TaskInstance, context: RunContext) -> None:
        """Train or load the backbones, DPO experts and value models the options need; build the decoder."""
        import torch

        from mobench.training import load_experts, load_policy_with_adapters, resolve_device, training_prompts

        from .bonesoup import train_backbones
        from .decoder import MageDecoder
        from .value import load_head, train_value_models

        if len(task.objectives) < 2:
            raise MobenchError(f"mage needs at least 2 objectives; task {task.name!r} has {len(task.objectives)}")
        super().prepare(task, context)
        opts, names = self.options, task.objective_names
        if opts.k is not None and len(opts.k) != len(names):
            raise MobenchError(f"mage k has {len(opts.k)} factors for {len(names)} objectives")
        adapters: dict[str, str] = {}
        if opts.base == "bonesoup":
            rl = opts.backbones
            prompts = training_prompts(task, rl.n_prompts, context.seed, rl.max_prompt_chars)  # morlhf's prompts
            paths = train_backbones(task.policy, task.objectives, task.normalisation, opts.b, prompts, rl, context)
            adapters.update({f"bone{j}": str(p) for j, p in enumerate(paths)})
        if opts.uses_implicit:  # the same cached experts as rewarded-soups at the same DPO budget
            experts = load_experts(task.policy, task.pairs, opts.experts, context, objectives=names)
            adapters.update({f"dpo_{n}": str(experts[n]) for n in names})
        heads = None
        if opts.uses_explicit:
            prompts = training_prompts(task, opts.value.n_rollouts, context.seed)
            values = train_value_models(task.policy, task.objectives, task.normalisation, prompts, opts.value, context)
            adapters.update({f"value_{n}": str(values[n]) for n in names})
            loaded = [load_head(values[n]) for n in names]
            heads = (torch.cat([w for w, _ in loaded]), torch.cat([b for _, b in loaded]))
        device = resolve_device(context)
        model, tok = load_policy_with_adapters(task.policy, adapters, device) if adapters else _plain(task.policy, device)
        self.pieces = {"adapters": adapters}
        self.decoder = MageDecoder(
            model, tok, opts,
            backbones=[a for a in adapters if a.startswith("bone")],
            experts=[f"dpo_{n}" for n in names] if opts.uses_implicit else [],
            values=[f"value_{n}" for n in names] if opts.uses_explicit else [],
            heads=heads,
        )

    def generate(self, prompts: list[str], preferences: list[Preference]) -> list[list[str]]:
        """All (prompt, preference) rows guided in batches of the task's generation batch size."""
        task, context = self.prepared()
        return self.decoder.generate(prompts, preferences, task.generation, context.seed, context.progress)

    def provenance(self) -> dict[str, Any]:
        """The options, the formula (this module's docstring) and the adapters loaded."""
        return {**super().provenance(), "formula": __doc__, **self.pieces}


def _plain(policy: str, device: str):
    from mobench.models import load_causal_lm

    return load_causal_lm(policy, device=device)


VARIANTS = {
    "mage": ({}, "MAGE: Bone-Soup base + merged implicit and explicit value guidance on the top-k"),
    "mage-implicit": ({"guidance": "implicit"}, "MAGE ablation: implicit (DPO log-ratio) guidance only"),
    "mage-explicit": ({"guidance": "explicit"}, "MAGE ablation: explicit value-head guidance only"),
    "mage-ensemble": ({"proxy": "ensemble"}, "MAGE ablation: ensemble of per-objective value models, not one merged proxy"),
    "mage-refbase": ({"base": "reference"}, "MAGE ablation: guide the reference policy, not the Bone-Soup base"),
}


@hookimpl
def register_methods(register):
    for name, (fixed, description) in VARIANTS.items():
        register.method(name, Mage, description, **fixed)
