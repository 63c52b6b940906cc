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

from mobench.api import MobenchError, Normalisation, Objective, PreferencePair

MODPO_DEFAULTS: dict[str, Any] = {
    "steps": 16,
    "batch_size": 8,
    "learning_rate": 5e-4,
    "beta": 0.1,
    "n_pairs": 128,
    "max_length": 192,
    "lora_r": 16,
}


def modpo_budget(budgets: dict[str, Any]) -> dict[str, Any]:
    """The MODPO budget: the task's "modpo" budget, else its "dpo" budget, over MODPO_DEFAULTS."""
    declared = budgets.get("modpo") or budgets.get("dpo") or {}
    return {**MODPO_DEFAULTS, **declared}


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


def weighted_margins(differences: dict[int, Sequence[float]], weights: Sequence[float], k: int) -> list[float]:
    """m = sum_{j != k} w_j d_j per pair, from per-objective differences d_j (indices j != k)."""
    n = len(next(iter(differences.values()))) if differences else 0
    margins = [0.0] * n
    for j, d in differences.items():
        if j == k:
            raise MobenchError("the trained objective k cannot also give a margin")
        margins = [m + weights[j] * float(x) for m, x in zip(margins, d)]
    return margins


def _trainer_class():
    # trl is imported here so that importing this module (and the plugin) stays light.
    from trl import DPOTrainer

    class ModpoTrainer(DPOTrainer):
        """DPOTrainer whose loss is MODPO's: beta / w_k and reference log-probs shifted by the margin / beta."""

        def __init__(self, *args, w_k: float, **kwargs):
            config = kwargs["args"]
            if not 0 < w_k <= 1:
                raise MobenchError(f"modpo needs 0 < w_k <= 1, got {w_k}")
            if list(config.loss_type) != ["sigmoid"] or config.f_divergence_type != "reverse_kl" or config.ld_alpha is not None or config.use_weighting:
                raise MobenchError("modpo builds on trl's plain sigmoid DPO loss (loss_type=sigmoid, reverse KL, no ld_alpha, no weighting)")
            self.modpo_beta = float(config.beta)
            self.w_k = float(w_k)
            # The margin enters through the precomputed reference log-probs; it must be precomputed.
            config.precompute_ref_log_probs = True
            config.beta = self.modpo_beta / self.w_k
            super().__init__(*args, **kwargs)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            dataset = super()._precompute_ref_logps(dataset, name, batch_size)
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
    from mobench.training.common import pairs_dataset

    if len(margins) != len(pairs):
        raise MobenchError(f"{len(margins)} margins for {len(pairs)} pairs")
    dataset = pairs_dataset(pairs).add_column("margin", [float(m) for m in margins])
    return _trainer_class()(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, w_k=w_k, **kwargs)


def dpo_config(budget: dict[str, Any], output_dir: str, seed: int, device: str):
    """trl's DPOConfig for a MODPO (or DPO) run from a budget dict, on ``device``."""
    from trl import DPOConfig

    on_cuda = str(device).startswith("cuda")
    return DPOConfig(
        output_dir=output_dir,
        max_steps=int(budget["steps"]),
        per_device_train_batch_size=int(budget["batch_size"]),
        gradient_accumulation_steps=int(budget.get("gradient_accumulation_steps", 1)),
        learning_rate=float(budget["learning_rate"]),
        lr_scheduler_type=budget.get("lr_scheduler_type", "linear"),
        warmup_steps=int(budget.get("warmup_steps", 0)),
        beta=float(budget["beta"]),
        max_length=int(budget["max_length"]) if budget.get("max_length") else None,
        precompute_ref_log_probs=True,
        seed=int(seed),
        data_seed=int(seed),
        bf16=on_cuda,
        use_cpu=not on_cuda,
        # Small models on CPU: recomputing activations costs time and saves memory we do not need.
        gradient_checkpointing=bool(budget.get("gradient_checkpointing", False)),
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, int(budget["steps"]) // 4),
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )
