"""Margin-DPO (MODPO, Zhou et al. 2024) as a thin subclass of trl's DPOTrainer.

MODPO's loss on the pairs of one objective k, with margins from the other objectives, is
``-log sigmoid((1/w_k) [beta h_w - beta h_l - m])`` where ``h = log pi/pi_ref`` and
``m = w_{-k} . (r_{-k}(x, y_w) - r_{-k}(x, y_l))``. trl's sigmoid DPO loss is
``-log sigmoid(beta' [(log pi - log ref)(y_w) - (log pi - log ref)(y_l)])``; with ``beta' = beta / w_k`` and
the chosen reference log-prob raised by ``m / beta`` it *is* MODPO's loss, exactly. So the subclass only
shifts trl's precomputed reference log-probs by the per-pair margin and divides beta by w_k; trl keeps
the tokenisation, the reference pass (LoRA adapter disabled), the loss and the optimiser.

Which k: the papers train on the pairs of one objective and need w_k > 0 (the loss divides by it).
We take as k the objective with the largest weight among those that have pairs (ties: the first), so at
a corner w = e_j MODPO is plain DPO on objective j's pairs with no margin, and 1/w_k never exceeds m.
"""

from __future__ import annotations

from typing import Any, Sequence

from mobench.api import MobenchError, Normalisation, Objective, PreferencePair, RunContext, TaskInstance
from mobench.training import DpoBudget

MODPO_KIND = "modpo-policies"
MARGIN_SOURCES = ("scores", "implicit")


def choose_k(weights: Sequence[float], names: Sequence[str], pairs: dict[str, list]) -> int:
    """The index of the objective whose pairs MODPO trains on: the largest weight among those with pairs."""
    candidates = [i for i, n in enumerate(names) if pairs.get(n) and weights[i] > 0]
    if not candidates:
        raise MobenchError(f"modpo needs preference pairs for an objective with positive weight; weights {list(weights)}, pairs for {sorted(k for k, v in pairs.items() if v)}")
    return max(candidates, key=lambda i: (weights[i], -i))


def score_differences(
    objective: Objective, norm: Normalisation, pairs: Sequence[PreferencePair]
) -> list[float]:
    """Per pair, z(x, y_w) - z(x, y_l) for one objective, z normalised by the task's statistics (higher is better)."""
    prompts = [p.prompt for p in pairs]
    chosen = objective.score(prompts, [p.chosen for p in pairs])
    rejected = objective.score(prompts, [p.rejected for p in pairs])
    return [norm.apply(c, objective.direction) - norm.apply(r, objective.direction) for c, r in zip(chosen, rejected)]


def weighted_margins(differences: dict[int, Sequence[float]], weights: Sequence[float], k: int, n_pairs: int) -> list[float]:
    """m = sum_{j != k} w_j d_j per pair, from per-objective differences d_j (indices j != k); zeros when none."""
    margins = [0.0] * n_pairs
    for j, d in differences.items():
        if j == k:
            raise MobenchError("the trained objective k cannot also give a margin")
        if len(d) != n_pairs:
            raise MobenchError(f"{len(d)} margin differences for {n_pairs} pairs")
        margins = [m + weights[j] * float(x) for m, x in zip(margins, d)]
    return margins


def _trainer_class():
    # trl is imported here so that importing this module (and the plugin) stays light.
    from trl import DPOTrainer

    class ModpoTrainer(DPOTrainer):
        """DPOTrainer whose loss is MODPO's: beta / w_k and reference log-probs shifted by the margin / beta."""

        def __init__(self, *args, w_k: float, reference_cache: dict | None = None, **kwargs):
            config = kwargs["args"]
            if not 0 < w_k <= 1:
                raise MobenchError(f"modpo needs 0 < w_k <= 1, got {w_k}")
            if list(config.loss_type) != ["sigmoid"] or config.f_divergence_type != "reverse_kl" or config.ld_alpha is not None or config.use_weighting:
                raise MobenchError("modpo builds on trl's plain sigmoid DPO loss (loss_type=sigmoid, reverse KL, no ld_alpha, no weighting)")
            self.modpo_beta = float(config.beta)
            self.w_k = float(w_k)
            self.reference_cache = reference_cache
            # The margin enters through the precomputed reference log-probs; it must be precomputed.
            config.precompute_ref_log_probs = True
            config.beta = self.modpo_beta / self.w_k
            super().__init__(*args, **kwargs)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            from datasets import concatenate_datasets

            columns = ["ref_chosen_logps", "ref_rejected_logps"]
            cached = (self.reference_cache or {}).get(name)
            if cached is not None and len(cached) == len(dataset):
                # Same pairs, same frozen reference: the log-probs of an earlier grid point are valid here.
                dataset = concatenate_datasets([dataset, cached], axis=1)
            else:
                dataset = super()._precompute_ref_logps(dataset, name, batch_size)
                if self.reference_cache is not None:
                    self.reference_cache[name] = dataset.select_columns(columns).flatten_indices()
            if "margin" not in dataset.column_names:
                raise MobenchError(f"the {name} dataset of modpo has no 'margin' column")
            beta = self.modpo_beta
            # (beta/w_k) * ((lp - ref - m/beta)(y_w) - (lp - ref)(y_l)) = (1/w_k) * (beta*delta - m)
            return dataset.map(
                lambda ex: {"ref_chosen_logps": ex["ref_chosen_logps"] + ex["margin"] / beta},
                remove_columns=["margin"],
            )

    return ModpoTrainer


def modpo_trainer(model, tokenizer, pairs: Sequence[PreferencePair], margins: Sequence[float], w_k: float, config, **kwargs):
    """A ready MODPO trainer over trl's DPOTrainer: ``config`` is a trl DPOConfig, kwargs go to the trainer."""
    from mobench.training import preference_dataset

    if len(margins) != len(pairs):
        raise MobenchError(f"{len(margins)} margins for {len(pairs)} pairs")
    # The length column serves the budget's length-grouped order (DpoBudget.group_by_length), as for the experts.
    dataset = preference_dataset(pairs, tokenizer, int(config.max_length)).add_column("margin", [float(m) for m in margins])
    return _trainer_class()(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, w_k=w_k, **kwargs)


def completion_logps(model, tokenizer, pairs: Sequence[PreferencePair], max_length: int, batch_size: int = 4):
    """Summed log-probs of each pair's chosen and rejected completion given its prompt (EOS appended, as trl does).

    trl computes these only inside its trainers; MODPO's implicit margins need them under other adapters.
    Only completion tokens are scored: the model's ``logits_to_keep`` limits the LM head to the positions from
    the batch's first completion on, and the log-softmax runs on completion positions alone (on a Reddit post of
    a few hundred tokens with a 40-token summary the LM head and its 49k-way softmax over the prompt are most of
    the pass's non-body work). The sums equal the full-logits sums: the kept logits are the same numbers.
    """
    import torch

    def encode(prompt: str, completion: str):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        ids = (p + c)[:max_length]
        return ids, [0] * len(p) + [1] * (len(ids) - len(p))

    rows = [encode(p.prompt, p.chosen) for p in pairs] + [encode(p.prompt, p.rejected) for p in pairs]
    out = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in chunk], device=model.device)
            attn = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in chunk], device=model.device)
            mask = torch.tensor([m + [0] * (width - len(m)) for _, m in chunk], device=model.device)
            # the logits at position t score token t + 1: keep those from the first completion token's predecessor on
            first = int(mask.argmax(dim=1)[mask.any(dim=1)].min()) if bool(mask.any()) else width - 1
            keep = width - max(first - 1, 0)
            logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits[:, :-1]
            targets, scored = ids[:, width - keep + 1 :], mask[:, width - keep + 1 :].bool()
            token_logps = torch.log_softmax(logits[scored].float(), dim=-1).gather(-1, targets[scored][:, None]).squeeze(-1)
            rows_of = scored.nonzero()[:, 0]
            out.append(torch.zeros(len(chunk), dtype=token_logps.dtype, device=token_logps.device).index_add_(0, rows_of, token_logps).cpu())
    logps = torch.cat(out)
    return logps[: len(pairs)], logps[len(pairs) :]


def implicit_differences(
    policy: str, pairs_by_objective: dict[str, list[PreferencePair]], experts_budget: DpoBudget, context: RunContext | None,
    objectives: Sequence[str], pairs: Sequence[PreferencePair], reference: tuple | None = None,
) -> tuple[dict[str, list[float]], tuple]:
    """Per objective j, beta_j [(log pi_j/pi_ref)(y_w) - (log pi_j/pi_ref)(y_l)] of j's DPO expert on ``pairs``.

    Returns (those differences, the reference's (chosen, rejected) log-probs). ``reference``: those log-probs when
    already known (trl's reference pass of an earlier grid point on the same pairs), which skips the reference pass.
    """
    import torch

    from mobench.training import load_experts, load_policy_with_adapters, resolve_device

    experts = load_experts(policy, pairs_by_objective, experts_budget, context, list(objectives))
    model, tok = load_policy_with_adapters(policy, {n: str(p) for n, p in experts.items()}, resolve_device(context))
    length = int(experts_budget.max_length)
    if reference is None:
        with model.disable_adapter():
            ref_w, ref_l = completion_logps(model, tok, pairs, length)
    else:
        ref_w, ref_l = (torch.as_tensor(r, dtype=torch.float32) for r in reference)
        if len(ref_w) != len(pairs) or len(ref_l) != len(pairs):
            raise MobenchError(f"{len(ref_w)} reference log-probs for {len(pairs)} pairs")
    out = {}
    for name in objectives:
        model.set_adapter(name)
        exp_w, exp_l = completion_logps(model, tok, pairs, length)
        diff = float(experts_budget.beta) * ((exp_w - ref_w) - (exp_l - ref_l))
        out[name] = [float(x) for x in diff]
    return out, (ref_w, ref_l)


class MarginSource:
    """Per-objective margin differences on the pairs of objective k, computed once per (k, j) and remembered.

    It also keeps the reference log-probs of each k's pairs (:meth:`reference_cache`), shared by every grid point
    with that k and by the implicit margins: one reference pass per pair set, whichever needs it first (trl's
    reference pass at a corner, or the margins' pass at the first interior point).
    ``experts`` is the DPO budget of the experts that give implicit margins.
    """

    COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")

    def __init__(self, task: TaskInstance, context: RunContext | None, source: str, experts: DpoBudget):
        if source not in MARGIN_SOURCES:
            raise MobenchError(f"modpo margin must be one of {', '.join(MARGIN_SOURCES)}, not {source!r}")
        self.task, self.context, self.source, self.experts = task, context, source, experts
        self._cache: dict[tuple[str, str], list[float]] = {}
        self.reference: dict[tuple, dict] = {}

    def reference_cache(self, k: str, pairs: Sequence[PreferencePair], max_length: int) -> dict:
        """The dict ModpoTrainer reads and fills with the reference log-probs of k's ``pairs`` (by dataset name)."""
        from mobench.training import data_hash

        return self.reference.setdefault((k, data_hash(pairs), int(max_length)), {})

    def differences(self, k: str, others: Sequence[str], pairs: Sequence[PreferencePair],
                    max_length: int | None = None) -> dict[str, list[float]]:
        """d_j per pair for each j in ``others``, as z-scores ("scores") or expert implicit rewards ("implicit").

        ``max_length``: MODPO's sequence budget on ``pairs``; when it equals the experts' the reference log-probs
        are shared with trl's reference pass through :meth:`reference_cache` (the same rows, cut the same way).
        """
        missing = [j for j in others if (k, j) not in self._cache]
        if missing and self.source == "scores":
            by_name = {o.name: o for o in self.task.objectives}
            for j in missing:
                self._cache[(k, j)] = score_differences(by_name[j], self.task.normalisation[j], pairs)
        elif missing:
            from datasets import Dataset, Features, Value

            task = self.task
            shared = max_length is not None and int(max_length) == int(self.experts.max_length)
            cache = self.reference_cache(k, pairs, int(max_length)) if shared else {}
            known = cache.get("train")
            known = (list(known[self.COLUMNS[0]]), list(known[self.COLUMNS[1]])) if known is not None and len(known) == len(pairs) else None
            diffs, reference = implicit_differences(task.policy, task.pairs, self.experts, self.context, missing, pairs,
                                                    reference=known)
            if shared and known is None:
                # trl's cache format (float32 columns, dataset order); ModpoTrainer joins it to its tokenised dataset
                cache["train"] = Dataset.from_dict(
                    {c: [float(x) for x in r] for c, r in zip(self.COLUMNS, reference)},
                    features=Features({c: Value("float32") for c in self.COLUMNS}),
                )
            for j, d in diffs.items():
                self._cache[(k, j)] = d
        return {j: self._cache[(k, j)] for j in others}

    def key(self, others: Sequence[str]) -> dict[str, Any]:
        """What determines the margins, for the policy's artifact key."""
        if self.source == "scores":
            objs = {o.name: o for o in self.task.objectives}
            return {
                "source": "scores",
                "objectives": {
                    j: {
                        "direction": objs[j].direction,
                        "normalisation": [self.task.normalisation[j].mean, self.task.normalisation[j].std],
                        "provenance": objs[j].provenance(),
                    }
                    for j in others
                },
            }
        from mobench.training import expert_key

        task = self.task
        # pass 2: completion positions only, the reference pass shared with trl's (one per pair set)
        return {"source": "implicit", "pass": 2, "experts": {j: expert_key(task.policy, j, task.pairs.get(j, []), self.experts, self.context) for j in others}}


def modpo_plan(task: TaskInstance, weights: Sequence[float]) -> tuple[int, list[int]]:
    """(k, the objectives j != k with positive weight that give margins) for a preference."""
    names = task.objective_names
    k = choose_k(weights, names, task.pairs)
    return k, [j for j in range(len(names)) if j != k and weights[j] > 0]


def _pairs(task: TaskInstance, objective: str, budget: DpoBudget) -> list[PreferencePair]:
    return list(task.pairs[objective])[: int(budget.n_pairs)]


def policy_key(task: TaskInstance, weights: Sequence[float], margins: MarginSource, budget: DpoBudget,
               context: RunContext | None) -> dict[str, Any]:
    """Everything that determines the MODPO policy at ``weights``."""
    from mobench.training import DPO_RECIPE, data_hash, dpo_hyper, key_environment

    k, others = modpo_plan(task, weights)
    names = task.objective_names
    pairs = _pairs(task, names[k], budget)
    return {
        "trainer": "trl-dpo-lora-modpo",
        "recipe": {"dpo": DPO_RECIPE, "modpo": 2},  # 2: pairs sorted by width for the reference pass
        "task": task.name,
        "scale": task.scale,
        "weights": [round(float(w), 6) for w in weights],
        "k": names[k],
        "pairs": {"sha256": data_hash(pairs), "n_pairs": len(pairs)},
        "margin": margins.key([names[j] for j in others]),
        "hyper": dpo_hyper(budget),
        **key_environment(task.policy, context),
    }


def _train(task: TaskInstance, weights: Sequence[float], margins: MarginSource, budget: DpoBudget,
           context: RunContext | None, out) -> None:
    import tempfile

    from mobench.training import (
        completion_positions_only, dpo_config, load_for_training, lora_config, pair_lengths, progress_callback,
        train_and_save, truncate_prompts, weights_label,
    )

    names = task.objective_names
    k, others = modpo_plan(task, weights)
    model, tok, device, seed = load_for_training(task.policy, context)
    # The same prompt truncation as the DPO experts, so implicit margins see the pairs the experts saw.
    pairs = truncate_prompts(_pairs(task, names[k], budget), tok, int(budget.max_length))
    # trl's reference pass (once per k, shared by the grid points) runs in dataset order: with the pairs sorted by
    # padded width its batches pad little. Training draws its order over indices (random or length-grouped), so
    # the sort changes no batch's distribution; the same sort at every point keeps the shared log-probs aligned.
    widths = [max(rows) for rows in pair_lengths(pairs, tok, int(budget.max_length))]
    pairs = [pair for _, pair in sorted(zip(widths, pairs), key=lambda item: item[0])]
    diffs = margins.differences(names[k], [names[j] for j in others], pairs, int(budget.max_length))
    margin = weighted_margins({j: diffs[names[j]] for j in others}, weights, k, len(pairs))
    # The DPO experts' CPU speed-up (score completion tokens only) also covers the reference precompute.
    with tempfile.TemporaryDirectory(prefix="mobench-modpo-") as scratch, completion_positions_only():
        trainer = modpo_trainer(
            model,
            tok,
            pairs,
            margin,
            float(weights[k]),
            dpo_config(budget, scratch, seed, device, precompute_ref_log_probs=True),
            peft_config=lora_config(budget),
            callbacks=[progress_callback(context, f"MODPO {task.name} {weights_label(weights)}")],
            reference_cache=margins.reference_cache(names[k], pairs, int(budget.max_length)),
        )
        record = {
            "weights": list(weights),
            "k": names[k],
            "w_k": float(weights[k]),
            "margin_objectives": [names[j] for j in others],
            "margin_mean": sum(margin) / len(margin) if margin else 0.0,
        }
        train_and_save(trainer, out, device, record)


def train_modpo_policy(task: TaskInstance, weights: Sequence[float], margins: MarginSource, budget: DpoBudget,
                       context: RunContext | None = None):
    """The folder of the MODPO LoRA policy for ``weights`` under ``budget``, trained only if not cached yet."""
    from mobench.artifacts import get_or_build

    key = policy_key(task, weights, margins, budget, context)
    return get_or_build(MODPO_KIND, key, lambda out: _train(task, weights, margins, budget, context, out))
