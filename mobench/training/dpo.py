"""Per-objective experts: LoRA DPO with trl's DPOTrainer against the task policy, through the artifact cache."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, ClassVar

from mobench.api import MobenchError, RunContext, TaskInstance
from mobench.options import option
from mobench.training.common import (
    LoraBudget,
    TRAINING_LIBRARIES,
    completion_positions_only,
    checkpointing_kwarg,
    data_hash,
    lora_config,
    lora_key,
    pairs_dataset,
    progress_callback,
    quiet_datasets,
    silence_console,
    resolve_device,
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

    PRESETS: ClassVar = {
        # Measured on an idle 2-core CPU (2026-11-23): one hh expert (r=16, batch 8, 32 steps, max_length 256)
        # trains in 1,034 s (~32 s a step).
        "tiny": {},
        # LoRA DPO as in MODPO / Rewarded Soups (beta 0.1, r 64); n_pairs is capped by the data available.
        "paper": {"steps": 1000, "batch_size": 32, "max_length": 1024, "lora_r": 64, "n_pairs": 20000},
    }

    def check(self) -> None:
        super().check()
        for name in ("steps", "batch_size", "max_length", "n_pairs", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise MobenchError(f"DPO {name} must be at least 1, not {getattr(self, name)!r}")
        if not self.beta > 0 or not self.learning_rate > 0:
            raise MobenchError("DPO beta and learning_rate must be positive")


EXPERT_KIND = "dpo-experts"
DPO_DEFAULTS: dict[str, Any] = {
    "steps": 32,
    "batch_size": 8,
    "learning_rate": 5e-4,
    "beta": 0.1,
    "max_length": 256,
    "lora_r": 16,
    "n_pairs": 256,
}
TRAIN_INFO = "mobench-train.json"
# Bumped when mobench's own data handling around trl changes (prompt truncation rule), so old experts are not reused.
RECIPE = 2


def dpo_budget(task: TaskInstance) -> dict[str, Any]:
    """The task's DPO budget with defaults filled in for absent keys."""
    given = task.budgets.get("dpo") or {}
    return {**DPO_DEFAULTS, **{k: v for k, v in given.items() if v is not None}}


def with_dpo_budget(task: TaskInstance, overrides: dict[str, Any]) -> TaskInstance:
    """A copy of ``task`` whose DPO budget has ``overrides`` (method options such as -o steps=8); unknown keys: MobenchError."""
    import dataclasses

    unknown = sorted(set(overrides) - set(DPO_DEFAULTS))
    if unknown:
        raise MobenchError(f"unknown DPO budget key(s) {', '.join(unknown)}; known: {', '.join(sorted(DPO_DEFAULTS))}")
    if not overrides:
        return task
    budgets = {**task.budgets, "dpo": {**(task.budgets.get("dpo") or {}), **overrides}}
    return dataclasses.replace(task, budgets=budgets)


def policy_fingerprint(policy: str) -> dict[str, Any]:
    """What identifies the base model in a key: the alias or hub id, or a local folder's file contents."""
    if not os.path.isdir(policy):
        return {"policy": policy}
    # A local folder (tests, user checkpoints) is identified by its content, not by where it lies.
    h = hashlib.sha256()
    for path in sorted(Path(policy).iterdir()):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin", ".model", ".txt"):
            h.update(path.name.encode())
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
    return {"policy": "local-folder", "content_sha256": h.hexdigest()}


def _expert_pairs(task: TaskInstance, objective: str, n_pairs: int):
    pairs = task.pairs.get(objective)
    if not pairs:
        have = ", ".join(sorted(k for k, v in task.pairs.items() if v)) or "none"
        raise MobenchError(f"task {task.name!r} has no preference pairs for objective {objective!r} (pairs for: {have})")
    return list(pairs)[: int(n_pairs)]


def expert_key(task: TaskInstance, objective: str, context: RunContext | None = None) -> dict[str, Any]:
    """Everything that determines the expert: base, objective, data, hyper-parameters, seed, precision, versions."""
    from mobench.artifacts import library_versions
    from mobench.models import default_dtype

    budget = dpo_budget(task)
    pairs = _expert_pairs(task, objective, budget["n_pairs"])
    device = resolve_device(context)
    return {
        "trainer": "trl-dpo-lora",
        "recipe": RECIPE,
        "base": policy_fingerprint(task.policy),
        "objective": objective,
        "data": {"sha256": data_hash(pairs), "n_pairs": len(pairs)},
        "hyper": {
            "steps": int(budget["steps"]),
            "batch_size": int(budget["batch_size"]),
            "learning_rate": float(budget["learning_rate"]),
            "beta": float(budget["beta"]),
            "max_length": int(budget["max_length"]),
            "lora": lora_key(budget),
        },
        "seed": int(context.seed if context is not None else 0),
        "precision": str(default_dtype(device)).replace("torch.", ""),
        "versions": library_versions(*TRAINING_LIBRARIES),
    }


# Shared with other trl trainers (MODPO); kept under the old private names for their imports.
_truncate_prompts = truncate_prompts
_completion_positions_only = completion_positions_only


def _train(task: TaskInstance, objective: str, context: RunContext | None, out: Path) -> None:
    """Train one LoRA DPO expert and save the adapter (and a training record) into ``out``."""
    import torch
    from trl import DPOConfig, DPOTrainer

    from mobench.models import load_causal_lm

    budget = dpo_budget(task)
    device = resolve_device(context)
    seed = int(context.seed if context is not None else 0)
    torch.manual_seed(seed)
    model, tok = load_causal_lm(task.policy, device=device)
    pairs = truncate_prompts(_expert_pairs(task, objective, budget["n_pairs"]), tok, int(budget["max_length"]))
    on_cuda = str(device).startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="mobench-dpo-") as scratch, quiet_datasets():
        args = DPOConfig(
            output_dir=scratch,
            max_steps=int(budget["steps"]),
            per_device_train_batch_size=int(budget["batch_size"]),
            learning_rate=float(budget["learning_rate"]),
            beta=float(budget["beta"]),
            max_length=int(budget["max_length"]),
            seed=seed,
            data_seed=seed,
            **checkpointing_kwarg(DPOConfig, False),
            bf16=on_cuda,
            use_cpu=not on_cuda,
            report_to="none",
            save_strategy="no",
            logging_steps=max(1, int(budget["steps"]) // 4),
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = DPOTrainer(
            model=model,
            ref_model=None,  # with a peft adapter trl scores the reference with the adapter disabled
            args=args,
            train_dataset=pairs_dataset(pairs),
            processing_class=tok,
            peft_config=lora_config(budget),
            callbacks=[progress_callback(context, f"DPO expert {task.name}/{objective}")],
        )
        silence_console(trainer)
        start = time.perf_counter()
        with completion_positions_only():
            result = trainer.train()
        seconds = time.perf_counter() - start
    trainer.model.save_pretrained(str(out))
    logs = [h for h in trainer.state.log_history if "loss" in h]
    record = {
        "objective": objective,
        "train_seconds": round(seconds, 2),
        "device": str(device),
        "steps": int(trainer.state.global_step),
        "train_loss": float(result.training_loss),
        "log": logs,
    }
    (out / TRAIN_INFO).write_text(json.dumps(record, indent=2, default=str))


def train_dpo_expert(task: TaskInstance, objective: str, context: RunContext | None = None) -> Path:
    """The folder of objective's LoRA DPO expert adapter for ``task``, trained only if not cached yet."""
    from mobench.artifacts import get_or_build

    key = expert_key(task, objective, context)
    return get_or_build(EXPERT_KIND, key, lambda out: _train(task, objective, context, out))


def load_experts(task: TaskInstance, context: RunContext | None = None, objectives: list[str] | None = None) -> dict[str, Path]:
    """Expert adapter folders for each objective of the task (in objective order), training missing ones."""
    names = objectives or task.objective_names
    return {name: train_dpo_expert(task, name, context) for name in names}


def expert_record(path: Path) -> dict[str, Any]:
    """The training record saved with an expert (seconds, loss log), for provenance."""
    info = Path(path) / TRAIN_INFO
    return json.loads(info.read_text()) if info.exists() else {}


def load_expert_policy(task: TaskInstance, context: RunContext | None = None, objectives: list[str] | None = None):
    """Train or reuse each objective's expert and load them as named adapters on one copy of the policy.

    Returns ``(peft_model, tokenizer, experts)`` with ``experts`` mapping objective name -> adapter folder
    (adapter names are the objective names, in the task's objective order).
    """
    from mobench.training.common import load_policy_with_adapters

    experts = load_experts(task, context, objectives)
    model, tok = load_policy_with_adapters(task.policy, experts, resolve_device(context))
    return model, tok, experts
