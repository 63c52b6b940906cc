"""MAGE (Merge And GuidE, Xie et al. 2025): a Bone-Soup base guided by one preference-merged value model.

Stage 1, base: m backbones trained by MORLHF (RLOO, LoRA) on the rows of B = b I + (1-b)/(m-1) (J - I);
row r's base is the exact LoRA merge theta_base(mu) = theta_ref + sum_j c_j delta_j, c = (B^T)^-1 diag(k) mu
(Bone Soups' rescaling: weight 1 - k_i on the reference; by default k = 1, no rescaling; k_rule=search chooses
k_i = 1/(1 - a) per objective on the task's validation prompts as the reference does, bonesoup.py).
Stage 2, proxy: per-objective DPO experts pi_i (implicit) and value models V_i = LoRA_i + head_i regressed on
the z-scores of scored rollouts of the reference policy (explicit), merged by mu in weight space:
pi_mu = theta_ref + sum_i mu_i delta_dpo_i, V_mu = (theta_ref + sum_i mu_i delta_value_i, sum_i mu_i head_i).
Decoding: at each step, with T the candidates (the base's top-k next tokens plus EOS by default; the rules are
in guidance.py), the next token maximises (greedy) or is sampled from softmax(s / temperature) over T of

    s(v) = log pi_base(mu)(v | x, y<t) + alpha * g(v),
    g(v) = w_imp * beta * [log pi_mu(v | x, y<t) - log pi_ref(v | x, y<t)] + w_exp * V_mu(x, y<t v),

beta the DPO experts' beta, w_imp = 1/beta by default (the implicit term is then the log-ratio itself), w_exp = 1
(V in z-units), alpha = 0.5 (chosen on validation prompts). guidance=implicit sets w_exp = 0, explicit sets w_imp = 0; proxy=ensemble replaces
the merged proxy by sum_i mu_i [beta (log pi_i - log pi_ref)] and sum_i mu_i V_i(x, y<t v) (one model each);
base=reference decodes from pi_ref (then log pi_ref is the base itself). Constants are MageOptions' fields
(``mobench options mage``): b, k, k_rule, alpha, candidates, top_k, top_p, implicit_weight, explicit_weight, experts.beta.

The package: bonesoup.py (mixing matrix, merge coefficients, backbones), value.py (explicit value models and
their budget), rowmerge.py (per-row exact LoRA merges), guidance.py (scorers and the combiner for the shared
decoding loop), decoder.py (MageDecoder, which assembles them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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
    k: tuple[float, ...] | None = option(
        None, "Bone-Soup rescaling k_i per objective, c = (B^T)^-1 diag(k) mu (None: chosen by k_rule)")
    k_rule: Literal["none", "search"] = option(
        "none", "k when the option k is unset: none (every k_i = 1, no rescaling; on validation prompts the search "
        "scored lower on both tasks, separably on summarize: README 'Tuning'), or search (the reference's rule: each "
        "k_i = 1/(1-a), a in 0.1..0.5, the best mean z_i of the base at e_i on the task's validation prompts)")
    k_prompts: int = option(8, "validation prompts the k search decodes (evenly spaced over the task's validation prompts)")
    alpha: float = option(
        0.5, "guidance strength: s = log pi_base + alpha g (0.5: the smallest worst-task shortfall of 0.25, 0.5, 1, 2 "
        "on both tasks' validation prompts, README 'Tuning'; 1 before 2026-11-28)")
    candidates: Literal["top-k", "top-p", "vocabulary"] = option(
        "top-k", "candidates per step, EOS always added: the base's top_k tokens; those of them inside the base's "
        "top_p nucleus; or the whole vocabulary (implicit guidance only)")
    top_k: int = option(8, "candidates per step: the base's top-k next tokens (plus EOS), re-scored by the guidance")
    top_p: float = option(0.9, "nucleus mass of the top-p candidate rule (within the top_k tokens)")
    chunk_merge: bool = option(
        True, "when a decoding chunk's rows share one preference, fold each scorer's LoRA merge into a copy of its "
        "weights once per chunk (one plain matmul a layer; equal to the per-row merge up to float rounding); "
        "false: per-row adapter scaling always (rowmerge.py)")
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
        if not 0 < self.top_p <= 1:
            raise MobenchError(f"mage top_p must lie in (0, 1], got {self.top_p:g}")
        if self.k_prompts < 1:
            raise MobenchError(f"mage k_prompts must be >= 1, got {self.k_prompts}")
        if self.k is not None and any(not float(x) > 0 for x in self.k):
            raise MobenchError(f"mage k factors must be positive, got {list(self.k)}")
        if self.candidates == "vocabulary" and self.uses_explicit:
            raise MobenchError("mage candidates=vocabulary needs guidance=implicit: the value heads score one "
                               "forward position per candidate, not the whole vocabulary")

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
        self._loaded: dict[str, Any] = {}

    def prepare(self, task: TaskInstance, context: RunContext) -> None:
        """Train or load the backbones, DPO experts and value models the options need; build the decoder."""
        import torch

        from mobench.training import (context_dtype, load_experts, load_policy_with_adapters, resolve_device, rl_prompts,
                                      training_prompts)

        from .bonesoup import train_backbones
        from .value import fit_record, for_task, load_head, train_value_models

        if len(task.objectives) < 2:
            raise MobenchError(f"mage needs at least 2 objectives; task {task.name!r} has {len(task.objectives)}")
        super().prepare(task, context)
        opts, names = self.options, task.objective_names
        if opts.k is not None and len(opts.k) != len(names):
            raise MobenchError(f"mage k has {len(opts.k)} factors for {len(names)} objectives")
        adapters: dict[str, str] = {}
        if opts.base == "bonesoup":
            rl = opts.backbones.at_task(task)  # RL samples as long as the evaluation's, from prompts no longer than its
            prompts = rl_prompts(task, rl, context.seed)  # morlhf's prompts
            paths = train_backbones(task.policy, task.objectives, task.normalisation, opts.b, prompts, rl, context)
            adapters.update({f"bone{j}": str(p) for j, p in enumerate(paths)})
        if opts.uses_implicit:  # the same cached experts as rewarded-soups at the same DPO budget
            experts = load_experts(task.policy, task.pairs, opts.experts, context, objectives=names)
            adapters.update({f"dpo_{n}": str(experts[n]) for n in names})
        heads, fits = None, {}
        if opts.uses_explicit:  # rollouts at the evaluation's length, EOS kept; the last n_heldout for the fit
            value = for_task(opts.value, task.generation.max_new_tokens)
            prompts = training_prompts(task, value.n_rollouts + value.n_heldout, context.seed, value.max_prompt_chars)
            values = train_value_models(task.policy, task.objectives, task.normalisation, prompts, value, context)
            adapters.update({f"value_{n}": str(values[n]) for n in names})
            loaded = [load_head(values[n]) for n in names]
            heads = (torch.cat([w for w, _ in loaded]), torch.cat([b for _, b in loaded]))
            fits = {n: fit_record(values[n]) for n in names}
        device = resolve_device(context)
        dtype = context_dtype(context)
        model, tok = (load_policy_with_adapters(task.policy, adapters, device, dtype=dtype) if adapters
                      else _plain(task.policy, device, dtype))
        backbones = [a for a in adapters if a.startswith("bone")]
        k = self.bone_soup_k(task, context, model, tok, [adapters[b] for b in backbones]) if backbones else None
        self.pieces = {"adapters": adapters, "value_fit": fits, "bone_soup_k": k}
        self._loaded = {
            "model": model, "tokenizer": tok, "backbones": backbones, "heads": heads, "k": k["k"] if k else None,
            "experts": [f"dpo_{n}" for n in names] if opts.uses_implicit else [],
            "values": [f"value_{n}" for n in names] if opts.uses_explicit else [],
        }
        self.decoder = self.decoder_for(opts)

    def decoder_for(self, options: MageOptions):
        """A MageDecoder over the prepared pieces with other decoding constants (alpha, candidates, top_k, top_p,
        implicit_weight, explicit_weight): what a decoding-only sweep varies. Anything else needs a new prepare."""
        from .decoder import MageDecoder

        decoding = {"alpha", "candidates", "top_k", "top_p", "implicit_weight", "explicit_weight"}
        new, old = options.to_dict(), self.options.to_dict()
        changed = {f for f in new if new[f] != old[f]} - decoding
        if changed:
            raise MobenchError(f"mage decoder_for changes only decoding constants, not {', '.join(sorted(changed))}")
        p = self._loaded
        return MageDecoder(p["model"], p["tokenizer"], options, backbones=p["backbones"], experts=p["experts"],
                           values=p["values"], heads=p["heads"], k=p["k"])

    def bone_soup_k(self, task: TaskInstance, context: RunContext, model, tokenizer, folders: list[str]) -> dict[str, Any]:
        """The Bone-Soup rescaling: the option k if set, else k_rule: all 1 (none) or the reference's search on the
        task's validation prompts (search).

        ``model`` holds the backbones as adapters bone0..bone{m-1} (``folders``: their cached artifacts). The
        choice is cached (kind bonesoup-k), keyed by the backbones, b, the prompts, the objectives and decoding.
        """
        from mobench.api import prompts_sha256

        from .bonesoup import choose_k, spread

        opts, m = self.options, len(task.objectives)
        if opts.k is not None:
            return {"k": [float(x) for x in opts.k], "rule": "the option k"}
        if opts.k_rule == "none":
            return {"k": [1.0] * m, "rule": "k_rule=none: k = 1 (no rescaling)"}
        if not task.validation_prompts:
            return {"k": [1.0] * m, "rule": "the task has no validation prompts: k = 1 (no rescaling)"}
        prompts = spread(task.validation_prompts, opts.k_prompts)
        key = {
            "rule": "bone-soups-reference: per objective, argmax over k = 1/(1-a) of mean z_i at mu = e_i",
            "backbones": [Path(f).name for f in folders], "b": float(opts.b),  # artifact names hash their keys
            "prompts": {"sha256": prompts_sha256(prompts), "n": len(prompts)},
            "objectives": [{"name": o.name, "direction": o.direction, "provenance": o.provenance()} for o in task.objectives],
            "normalisation": {n: [v.mean, v.std] for n, v in sorted(task.normalisation.items())},
            "generation": task.generation.to_dict(), "seed": context.seed,
        }
        found = choose_k(model, tokenizer, [f"bone{j}" for j in range(m)], task.objectives, task.normalisation, prompts,
                         opts.b, task.generation, context.seed, key=key)
        return {**found, "rule": "validation prompts: per objective, the k = 1/(1-a), a in 0.1..0.5, of best mean z at e_i"}

    def generate(self, prompts: list[str], preferences: list[Preference]) -> list[list[str]]:
        """All (prompt, preference) rows guided in batches of the task's generation batch size."""
        task, context = self.prepared()
        return self.decoder.generate(prompts, preferences, task.generation, context.seed, context.progress)

    def provenance(self) -> dict[str, Any]:
        """The options, the formula (this module's docstring), the adapters loaded, the value models' held-out
        fit (value_fit), the Bone-Soup k with how it was chosen (bone_soup_k), and the trained policies among the
        adapters (the Bone-Soup backbones and the DPO experts, not the value models) for ``mobench kl``."""
        adapters = self.pieces.get("adapters", {})
        policies = {(f"backbone {name[4:]}" if name.startswith("bone") else f"expert {name[4:]}"): path
                    for name, path in adapters.items() if name.startswith(("bone", "dpo_"))}
        return {**super().provenance(), "formula": __doc__, **self.pieces, "trained_policies": policies}


def _plain(policy: str, device: str, dtype=None):
    from mobench.models import load_causal_lm

    return load_causal_lm(policy, device=device, dtype=dtype)


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
