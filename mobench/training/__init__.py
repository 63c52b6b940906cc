"""Shared trainers over trl, the public API that methods (built-in plugins included) train with.

Trainers take what they need (a policy id, pairs or prompts, a typed budget, the run context), never a
whole task; each result is a saved LoRA adapter folder in the artifact cache, keyed by everything that
determines it, so a second method or run trains nothing. Importing this package imports no torch.

Budgets (:class:`mobench.options.Options` with tiny and paper presets)
    ``LoraBudget`` (the adapter), ``DpoBudget`` (LoRA DPO), ``RlBudget`` (LoRA RLOO on weighted rewards).

DPO experts (one per objective, trl's DPOTrainer, the policy with its adapter disabled as reference)
    ``train_dpo_expert(policy, objective, pairs, budget, context)`` -> adapter folder;
    ``load_experts(policy, pairs, budget, context, objectives)`` -> {objective: folder};
    ``load_expert_policy(...)`` -> (peft model with one adapter per objective, tokenizer, experts);
    ``ExpertsMethod`` (base class of a method on the experts: prepare loads them, provenance lists them);
    ``expert_key``, ``expert_pairs``, ``expert_record``, ``experts_provenance`` (folders and records, for a
    method's provenance); ``dpo_config`` and ``dpo_hyper`` (trl's DPOConfig
    and the key's hyper-parameters from a budget, for other DPO-style trainers); ``DPO_RECIPE``;
    ``preference_dataset`` (trl's preference columns plus each pair's padded width, which the length-grouped
    order of ``DpoBudget.group_by_length`` reads), ``pair_lengths`` (the rows' tokens as trl's collator builds
    them), ``expert_trainer`` (the expert's trl DPOTrainer, before training).

RL on a weighted sum of z-scored rewards (trl's RLOOTrainer)
    ``train_rl_policy(policy, objectives, normalisation, weights, prompts, budget, context)`` -> folder;
    ``training_prompts(task, n, seed, max_chars)`` (pair prompts, never evaluation prompts; ``rl_prompts`` refuses a
    shortfall);
    ``weighted_rewards``, ``scalarised_reward``, ``objective_reward``, ``rloo_config``.

Pieces for writing a trainer
    ``lora_config(budget)``, ``lora_key(budget)``, ``policy_fingerprint(policy)``, ``key_environment(policy,
    context)`` (base, seed, precision, library versions of a key), ``TRAINING_LIBRARIES``,
    ``load_for_training(policy, context)``, ``train_and_save(trainer, out, device, record)`` (runs a trl
    trainer, saves adapter and record ``TRAIN_INFO``), ``pairs_dataset``, ``data_hash``, ``truncate_prompts``,
    ``completion_positions_only``, ``checkpointing_kwarg``, ``silence_console``, ``quiet_datasets``,
    ``progress_callback``, ``context_seed``, ``weights_label``; ``PolicyPerPreference`` (base class of a
    method that trains one policy per preference and decodes with it: MORLHF, MODPO).

Loading
    ``load_policy_with_adapters(policy, {name: folder}, device, dtype)``, ``load_adapter``, ``resolve_device(context)``,
    ``context_dtype(context)`` (the run's ``--dtype`` as a torch dtype, None for the device's default).
"""

from mobench.training.common import (
    TRAIN_INFO,
    TRAINING_LIBRARIES,
    LoraBudget,
    PolicyPerPreference,
    checkpointing_kwarg,
    completion_positions_only,
    context_dtype,
    context_seed,
    data_hash,
    key_environment,
    load_adapter,
    load_for_training,
    load_policy_with_adapters,
    lora_config,
    lora_key,
    pairs_dataset,
    policy_fingerprint,
    progress_callback,
    quiet_datasets,
    resolve_device,
    silence_console,
    train_and_save,
    truncate_prompts,
    weights_label,
)
from mobench.training.dpo import (
    DPO_RECIPE,
    DpoBudget,
    ExpertsMethod,
    dpo_config,
    dpo_hyper,
    expert_key,
    expert_trainer,
    expert_pairs,
    expert_record,
    experts_provenance,
    load_expert_policy,
    load_experts,
    pair_lengths,
    preference_dataset,
    train_dpo_expert,
)
from mobench.training.rl import (
    RlBudget,
    objective_reward,
    rl_prompts,
    rloo_config,
    scalarised_reward,
    train_rl_policy,
    training_prompts,
    weighted_rewards,
)

__all__ = [
    "LoraBudget", "DpoBudget", "RlBudget",
    "ExpertsMethod", "train_dpo_expert", "load_experts", "load_expert_policy", "expert_key", "expert_pairs", "expert_record",
    "experts_provenance",
    "dpo_config", "dpo_hyper", "DPO_RECIPE", "preference_dataset", "pair_lengths", "expert_trainer",
    "train_rl_policy", "training_prompts", "rl_prompts", "weighted_rewards", "scalarised_reward", "objective_reward", "rloo_config",
    "lora_config", "lora_key", "policy_fingerprint", "key_environment", "TRAINING_LIBRARIES", "TRAIN_INFO",
    "load_for_training", "train_and_save", "pairs_dataset", "data_hash", "truncate_prompts",
    "completion_positions_only", "checkpointing_kwarg", "silence_console", "quiet_datasets", "progress_callback",
    "context_seed", "weights_label", "PolicyPerPreference",
    "load_policy_with_adapters", "load_adapter", "resolve_device", "context_dtype",
]
