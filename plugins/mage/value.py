"""MAGE's explicit value models: a LoRA on the task policy plus a scalar head, regressed on scored rollouts.

Each value model V_i(x, y_<=t) predicts objective i's z-score z_i = direction (s_i - mean_i)/std_i of the
finished response from every prefix (the prompt's last token and each response token), by mean squared
error. The rollouts are samples of the task policy (the reference: the base MAGE decodes from depends on
the preference) and are shared by all objectives. Why a hand-written loop: trl's RewardTrainer fits a
pairwise Bradley-Terry loss on whole sequences; this is a token-level regression (a few lines of torch).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from mobench.api import MobenchError, Normalisation, Objective, RunContext, prompts_sha256
from mobench.options import option
from mobench.training import TRAIN_INFO, LoraBudget, context_seed

ROLLOUT_KIND = "value-rollouts"
VALUE_KIND = "value-models"
HEAD_FILE = "value_head.safetensors"
ROLLOUT_BATCH = 8  # rows sampled together (fixed: the rollouts, hence the value models, depend on it)


@dataclass(frozen=True)
class ValueBudget(LoraBudget):
    """How MAGE's explicit value models are trained: rollouts of the policy, then a LoRA + head regression."""

    n_rollouts: int = option(64, "sampled responses of the policy on training prompts (shared by all objectives)")
    max_new_tokens: int = option(32, "tokens sampled per rollout")
    temperature: float = option(1.0, "sampling temperature of the rollouts")
    steps: int = option(50, "optimiser steps of the regression")
    batch_size: int = option(8, "rollouts per optimiser step")
    learning_rate: float = option(1e-3, "AdamW learning rate (LoRA and head)")
    lora_r: int = option(8, "LoRA rank of each value model")

    PRESETS: ClassVar = {
        "tiny": {},
        "paper": {"n_rollouts": 10000, "steps": 2000, "learning_rate": 1e-4, "lora_r": 64},
    }

    def check(self) -> None:
        super().check()
        for name in ("n_rollouts", "max_new_tokens", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise MobenchError(f"value {name} must be at least 1, not {getattr(self, name)!r}")
        if not self.temperature > 0 or not self.learning_rate > 0:
            raise MobenchError("value temperature and learning_rate must be positive")


def rollout_key(policy: str, prompts: Sequence[str], budget: ValueBudget, context: RunContext | None = None) -> dict[str, Any]:
    """What determines the rollouts: policy, prompts, sampling settings, seed, precision, versions."""
    from mobench.training import key_environment

    return {
        "sampler": "hf-generate-sample",
        "prompts": {"sha256": prompts_sha256(prompts), "n": len(prompts)},
        "max_new_tokens": int(budget.max_new_tokens),
        "temperature": float(budget.temperature),
        **key_environment(policy, context),
    }


def rollouts(policy: str, prompts: Sequence[str], budget: ValueBudget, context: RunContext | None = None) -> list[dict[str, str]]:
    """Sampled responses of ``policy`` on ``prompts`` (cached): [{prompt, response}]."""
    from mobench.artifacts import get_or_build

    def build(out: Path) -> None:
        from mobench.decoding import generate_responses
        from mobench.models import load_causal_lm
        from mobench.training import resolve_device

        model, tok = load_causal_lm(policy, device=resolve_device(context))
        responses = generate_responses(
            model, tok, list(prompts), max_new_tokens=int(budget.max_new_tokens), do_sample=True,
            temperature=float(budget.temperature), batch_size=ROLLOUT_BATCH, seed=context_seed(context),
            progress=context.progress if context else None, description="MAGE value rollouts",
        )
        rows = [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]
        (out / "rollouts.json").write_text(json.dumps(rows, ensure_ascii=False))

    path = get_or_build(ROLLOUT_KIND, rollout_key(policy, prompts, budget, context), build)
    return json.loads((path / "rollouts.json").read_text())


def value_key(policy: str, objective: Objective, normalisation: Normalisation, prompts: Sequence[str],
              budget: ValueBudget, context: RunContext | None = None) -> dict[str, Any]:
    """What determines objective's value model: the rollouts, the scorer, its normalisation, hyper-parameters."""
    from mobench.training import lora_key

    return {
        "trainer": "mobench-value-regression-lora",
        "rollouts": rollout_key(policy, prompts, budget, context),
        "objective": {"name": objective.name, "direction": objective.direction, "provenance": objective.provenance()},
        "normalisation": [normalisation.mean, normalisation.std],
        "hyper": {"steps": budget.steps, "batch_size": budget.batch_size, "learning_rate": budget.learning_rate}
        | {"lora": lora_key(budget)},
    }


def hidden_states(model, input_ids, attention_mask, **kwargs):
    """The inner transformer's output (last_hidden_state [rows, len, H], cache) of a causal LM or PeftModel, no LM head."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = inner.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return out


def _train(policy: str, objective: Objective, normalisation: Normalisation, prompts: Sequence[str], budget: ValueBudget,
           context: RunContext | None, out: Path) -> None:
    import torch
    from peft import get_peft_model
    from safetensors.torch import save_file

    from mobench.training import load_for_training, lora_config

    rows = rollouts(policy, prompts, budget, context)
    scores = objective.score([r["prompt"] for r in rows], [r["response"] for r in rows])
    targets = [normalisation.apply(float(s), objective.direction) for s in scores]
    model, tok, device, seed = load_for_training(policy, context)  # seeds torch from the run, then loads
    model = get_peft_model(model, lora_config(budget))
    head = torch.nn.Linear(model.config.hidden_size, 1).to(device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimiser = torch.optim.AdamW(params, lr=float(budget.learning_rate))
    # Each example: prompt ids + response ids; the regression covers the prompt's last token onwards.
    examples = []
    for r, z in zip(rows, targets):
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        y = tok(r["response"], add_special_tokens=False)["input_ids"]
        examples.append((p + y, len(p) - 1, z))
    order = random.Random(seed)
    model.train()
    losses, start = [], time.perf_counter()
    for step in range(int(budget.steps)):
        batch = order.sample(examples, min(int(budget.batch_size), len(examples)))
        width = max(len(ids) for ids, _, _ in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        weight = torch.zeros(len(batch), width)
        target = torch.zeros(len(batch), width)
        for i, (seq, first, z) in enumerate(batch):  # right padding: positions are plain aranges
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            weight[i, first : len(seq)] = 1.0
            target[i, :] = z
        h = hidden_states(model, ids.to(device), mask.to(device)).last_hidden_state
        pred = head(h.float()).squeeze(-1)  # the head trains in fp32 whatever the base dtype (bf16 on CUDA)
        loss = ((pred - target.to(device)) ** 2 * weight.to(device)).sum() / weight.sum().to(device)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    model.save_pretrained(str(out))
    save_file({"weight": head.weight.detach().cpu().contiguous(), "bias": head.bias.detach().cpu().contiguous()}, str(out / HEAD_FILE))
    record = {
        "objective": objective.name,
        "n_rollouts": len(rows),
        "target_mean": sum(targets) / len(targets),
        "train_seconds": round(time.perf_counter() - start, 2),
        "losses": losses,
    }
    (out / TRAIN_INFO).write_text(json.dumps(record, indent=2))


def train_value_model(policy: str, objective: Objective, normalisation: Normalisation, prompts: Sequence[str],
                      budget: ValueBudget, context: RunContext | None = None) -> Path:
    """The folder of objective's value model (LoRA adapter + value_head.safetensors), trained if not cached.

    ``prompts``: the rollout prompts (training prompts of the task, never its evaluation prompts);
    ``normalisation``: the objective's statistics, so that the regression target is its z-score.
    """
    from mobench.artifacts import get_or_build

    key = value_key(policy, objective, normalisation, prompts, budget, context)
    return get_or_build(VALUE_KIND, key, lambda out: _train(policy, objective, normalisation, prompts, budget, context, out))


def train_value_models(policy: str, objectives: Sequence[Objective], normalisation: dict[str, Normalisation],
                       prompts: Sequence[str], budget: ValueBudget, context: RunContext | None = None) -> dict[str, Path]:
    """One value model per objective (by name, in order), all on the same cached rollouts."""
    missing = [o.name for o in objectives if o.name not in normalisation]
    if missing:
        raise MobenchError(f"value models need normalisation statistics for {', '.join(missing)}")
    return {o.name: train_value_model(policy, o, normalisation[o.name], prompts, budget, context) for o in objectives}


def load_head(path: Path):
    """(weight [1, H], bias [1]) of a saved value head."""
    from safetensors.torch import load_file

    file = Path(path) / HEAD_FILE
    if not file.exists():
        raise MobenchError(f"{path} holds no value head ({HEAD_FILE} missing)")
    t = load_file(str(file))
    return t["weight"], t["bias"]
