"""Per-objective experts: LoRA DPO with trl's DPOTrainer against the policy, through the artifact cache.

A trainer takes what it needs (the policy id, an objective's pairs, a :class:`DpoBudget`, the run
context), never a whole task. ``dpo_config`` and ``dpo_hyper`` are shared with other DPO-style
trainers (MODPO's margin-DPO), so they build trl's config and key the same way.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from mobench.api import Method, MobenchError, Preference, PreferencePair, RunContext, TaskInstance
from mobench.options import option
from mobench.training.common import (
    TRAIN_INFO,
    LoraBudget,
    checkpointing_kwarg,
    completion_positions_only,
    context_dtype,
    data_hash,
    key_environment,
    load_for_training,
    load_policy_with_adapters,
    lora_config,
    lora_key,
    pairs_dataset,
    progress_callback,
    quiet_datasets,
    resolve_device,
    train_and_save,
    truncate_prompts,
)


@dataclass(frozen=True)
class DpoBudget(LoraBudget):
    """How a LoRA DPO policy is trained (per-objective experts; MODPO trains with the same fields)."""

    steps: int = option(32, "optimiser steps")
    batch_size: int = option(8, "preference pairs per step")
    learning_rate: float = option(5e-4, "AdamW learning rate")
    beta: float = option(0.1, "DPO beta (KL strength to the reference policy)")
    max_length: int = option(256, "tokens of prompt + completion (longer prompts keep their end)")
    n_pairs: int = option(256, "first pairs of the objective's seeded order that are trained on")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimiser step")
    warmup_steps: int = option(0, "linear warm-up steps")
    lr_scheduler_type: str = option("linear", "transformers learning-rate schedule")
    gradient_checkpointing: bool = option(False, "activation checkpointing (saves memory, costs time)")
    group_by_length: bool = option(
        False,
        "batches of pairs of similar token length (transformers' LengthGroupedSampler) instead of a random order: "
        "the same pairs and steps, less padding (1.56x cheaper on hh, 1.0x on summarize). Off by default: on "
        "summarize's validation prompts random order's HV is separably higher (+4.93 [3.26, 5.74]); README "
        "'Tuning a method's knob'",
    )

    PRESETS: ClassVar = {
        # Measured on an idle 2-core CPU (2026-11-23): one hh expert (r=16, batch 8, 32 steps, max_length 256)
        # trains in 1,034 s (~32 s a step).
        "tiny": {},
        # LoRA DPO as in MODPO / Rewarded Soups (beta 0.1, r 64); n_pairs is capped by the data available.
        "paper": {"steps": 1000, "batch_size": 32, "max_length": 1024, "lora_r": 64, "n_pairs": 20000},
    }

    def check(self) -> None:
        super().check()
        self.require_at_least_one("DPO", ("steps", "batch_size", "max_length", "n_pairs", "gradient_accumulation_steps"))
        if not self.beta > 0 or not self.learning_rate > 0:
            raise MobenchError("DPO beta and learning_rate must be positive")


EXPERT_KIND = "dpo-experts"
# Bumped when mobench's own data handling around trl changes (2: prompt truncation rule; 3: the length column and
# length-grouped batches), so old experts are not reused.
DPO_RECIPE = 3
# The dataset column of each pair's padded width that transformers' length-grouped sampler reads.
LENGTH_COLUMN = "length"
# Schedule fields that enter a key only when they differ from these defaults (keys stay as they were).
_SCHEDULE_DEFAULTS = {"gradient_accumulation_steps": 1, "warmup_steps": 0, "lr_scheduler_type": "linear"}


def dpo_hyper(budget: DpoBudget) -> dict[str, Any]:
    """A DPO budget's hyper-parameters as they enter an artifact key (schedule fields only when not default)."""
    hyper: dict[str, Any] = {
        "steps": int(budget.steps),
        "batch_size": int(budget.batch_size),
        "learning_rate": float(budget.learning_rate),
        "beta": float(budget.beta),
        "max_length": int(budget.max_length),
        "group_by_length": bool(budget.group_by_length),
        "lora": lora_key(budget),
    }
    for name, default in _SCHEDULE_DEFAULTS.items():
        if getattr(budget, name) != default:
            hyper[name] = getattr(budget, name)
    return hyper


def dpo_config(budget: DpoBudget, output_dir: str, seed: int, device: str, precompute_ref_log_probs: bool = False):
    """trl's DPOConfig for a LoRA DPO (or margin-DPO) run from a budget, on ``device``.

    With ``budget.group_by_length`` the training order is transformers' ``LengthGroupedSampler`` over the
    dataset's ``length`` column (:func:`preference_dataset` writes it): the pairs in a random order (torch's
    generator, seeded by the trainer), cut into mega-batches (a quarter of the pairs, at most 50 batches) that
    are each sorted by length, longest first; the longest pair's batch goes first. trl 1.16's DPOTrainer keeps only its tokenised
    columns for the dataloader and transformers builds the sampler after that removal, so the sampler would
    find neither a length column nor ``input_ids``; ``remove_unused_columns=False`` keeps the column (trl's
    collator reads only the columns it needs).
    """
    from trl import DPOConfig

    on_cuda = str(device).startswith("cuda")
    return DPOConfig(
        output_dir=output_dir,
        max_steps=int(budget.steps),
        per_device_train_batch_size=int(budget.batch_size),
        gradient_accumulation_steps=int(budget.gradient_accumulation_steps),
        learning_rate=float(budget.learning_rate),
        lr_scheduler_type=budget.lr_scheduler_type,
        warmup_steps=int(budget.warmup_steps),
        beta=float(budget.beta),
        max_length=int(budget.max_length),
        precompute_ref_log_probs=bool(precompute_ref_log_probs),
        train_sampling_strategy="group_by_length" if budget.group_by_length else "random",
        length_column_name=LENGTH_COLUMN,
        remove_unused_columns=not budget.group_by_length,
        seed=int(seed),
        data_seed=int(seed),
        bf16=on_cuda,
        use_cpu=not on_cuda,
        **checkpointing_kwarg(DPOConfig, budget.gradient_checkpointing),
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, int(budget.steps) // 4),
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def pair_lengths(pairs: Sequence[PreferencePair], tokenizer, max_length: int) -> list[tuple[int, int]]:
    """Per pair, the tokens of its chosen and its rejected row as trl's DPO collator builds them.

    trl appends EOS to each completion, tokenises prompt + completion as one text and cuts each row at
    ``max_length``; a batch is padded to its longest row (chosen and rejected rows together).
    """
    eos = tokenizer.eos_token
    texts = [p.prompt + (c if c.endswith(eos) else c + eos) for p in pairs for c in (p.chosen, p.rejected)]
    sizes = [min(len(ids), int(max_length)) for ids in tokenizer(texts)["input_ids"]]
    return list(zip(sizes[0::2], sizes[1::2]))


def preference_dataset(pairs: Sequence[PreferencePair], tokenizer, max_length: int):
    """trl's preference dataset of ``pairs`` plus a ``length`` column (each pair's padded width) for length grouping."""
    widths = [max(chosen, rejected) for chosen, rejected in pair_lengths(pairs, tokenizer, max_length)]
    return pairs_dataset(pairs).add_column(LENGTH_COLUMN, widths)


def expert_pairs(objective: str, pairs: Sequence[PreferencePair], budget: DpoBudget) -> list[PreferencePair]:
    """The pairs an expert trains on: the first ``budget.n_pairs`` of the objective's seeded list."""
    if not pairs:
        raise MobenchError(f"no preference pairs for objective {objective!r}")
    return list(pairs)[: int(budget.n_pairs)]


def expert_key(policy: str, objective: str, pairs: Sequence[PreferencePair], budget: DpoBudget,
               context: RunContext | None = None) -> dict[str, Any]:
    """Everything that determines the expert: base, objective, data, hyper-parameters, seed, precision, versions."""
    used = expert_pairs(objective, pairs, budget)
    return {
        "trainer": "trl-dpo-lora",
        "recipe": DPO_RECIPE,
        "objective": objective,
        "data": {"sha256": data_hash(used), "n_pairs": len(used)},
        "hyper": dpo_hyper(budget),
        **key_environment(policy, context),
    }


def _train(policy: str, objective: str, pairs: Sequence[PreferencePair], budget: DpoBudget,
           context: RunContext | None, out: Path) -> None:
    """Train one LoRA DPO expert and save the adapter (and a training record) into ``out``."""
    model, tok, device, seed = load_for_training(policy, context)
    used = truncate_prompts(expert_pairs(objective, pairs, budget), tok, int(budget.max_length))
    with tempfile.TemporaryDirectory(prefix="mobench-dpo-") as scratch, quiet_datasets():
        trainer = expert_trainer(model, tok, used, budget, scratch, seed, device,
                                 callbacks=[progress_callback(context, f"DPO expert {objective}")])
        with completion_positions_only():
            train_and_save(trainer, out, device, {"objective": objective})


def expert_trainer(model, tokenizer, pairs: Sequence[PreferencePair], budget: DpoBudget, output_dir: str, seed: int,
                   device: str, callbacks: Sequence[Any] = ()):
    """trl's DPOTrainer for one LoRA DPO expert on ``pairs`` (already cut to fit), the reference being the policy
    with its adapter disabled."""
    from trl import DPOTrainer

    return DPOTrainer(
        model=model,
        ref_model=None,  # with a peft adapter trl scores the reference with the adapter disabled
        args=dpo_config(budget, output_dir, seed, device),
        train_dataset=preference_dataset(pairs, tokenizer, int(budget.max_length)),
        processing_class=tokenizer,
        peft_config=lora_config(budget),
        callbacks=list(callbacks),
    )


def train_dpo_expert(policy: str, objective: str, pairs: Sequence[PreferencePair], budget: DpoBudget,
                     context: RunContext | None = None) -> Path:
    """The folder of ``objective``'s LoRA DPO expert on ``policy``, trained only if not cached yet.

    ``pairs`` is the objective's full seeded pair list; the expert trains on the first ``budget.n_pairs``.
    """
    from mobench.artifacts import get_or_build

    key = expert_key(policy, objective, pairs, budget, context)
    return get_or_build(EXPERT_KIND, key, lambda out: _train(policy, objective, pairs, budget, context, out))


def load_experts(policy: str, pairs: dict[str, list[PreferencePair]], budget: DpoBudget, context: RunContext | None = None,
                 objectives: Sequence[str] | None = None) -> dict[str, Path]:
    """Expert adapter folders per objective (``objectives``, default every key of ``pairs``, in order), training missing ones."""
    names = list(objectives) if objectives is not None else list(pairs)
    for name in names:
        if not pairs.get(name):
            have = ", ".join(sorted(k for k, v in pairs.items() if v)) or "none"
            raise MobenchError(f"no preference pairs for objective {name!r} (pairs for: {have})")
    return {name: train_dpo_expert(policy, name, pairs[name], budget, context) for name in names}


def expert_record(path: Path) -> dict[str, Any]:
    """The training record saved with an expert (seconds, loss log), for provenance."""
    info = Path(path) / TRAIN_INFO
    return json.loads(info.read_text()) if info.exists() else {}


def experts_provenance(experts: dict[str, Path]) -> dict[str, Any]:
    """Per objective, the expert's folder and training record: what a method's provenance says about its experts."""
    return {k: {"path": str(v), "train": expert_record(v)} for k, v in experts.items()}


def load_expert_policy(policy: str, pairs: dict[str, list[PreferencePair]], budget: DpoBudget,
                       context: RunContext | None = None, objectives: Sequence[str] | None = None):
    """Train or reuse each objective's expert and load them as named adapters on one copy of the policy.

    Returns ``(peft_model, tokenizer, experts)`` with ``experts`` mapping objective name -> adapter folder
    (adapter names are the objective names, in order).
    """
    experts = load_experts(policy, pairs, budget, context, objectives)
    model, tok = load_policy_with_adapters(policy, experts, resolve_device(context), dtype=context_dtype(context))
    return model, tok, experts


class ExpertsMethod(Method):
    """Base class of a method built on the per-objective DPO experts, loaded as adapters on one policy.

    Its options must have ``experts`` (a :class:`DpoBudget`). ``prepare`` trains or reuses one expert per
    objective of the task (in objective order) and sets ``model`` (a PeftModel, adapter names = objective
    names), ``tokenizer`` and ``experts`` (objective -> adapter folder); ``check_preferences`` refuses a
    preference without one weight per expert; ``provenance`` adds each expert's folder and training record.
    """

    experts: dict[str, Path]

    def prepare(self, task: TaskInstance, context: RunContext) -> None:
        """Keep task and context, then load (training what is missing) the experts on one copy of the policy."""
        super().prepare(task, context)
        self.model, self.tokenizer, self.experts = load_expert_policy(
            task.policy, task.pairs, self.options.experts, context, task.objective_names
        )

    def check_preferences(self, preferences: Sequence[Preference]) -> None:
        """A MobenchError unless every preference has one weight per expert."""
        for p in preferences:
            if len(p) != len(self.experts):
                raise MobenchError(f"preference {p.key} has {len(p)} weights for {len(self.experts)} experts")

    def provenance(self) -> dict[str, Any]:
        """The base provenance (method, options) plus the experts' folders and training records."""
        return {**super().provenance(), "experts": experts_provenance(getattr(self, "experts", {}))}
