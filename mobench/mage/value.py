"""MAGE's explicit value models: a LoRA on the task policy plus a scalar head, regressed on scored rollouts.

Each value model V_i(x, y_<=t) predicts objective i's z-score z_i = direction (s_i - mean_i)/std_i of the
finished response from every prefix (the prompt's last token and each response token), by mean squared
error. The rollouts are samples of the task policy (the reference: the base MAGE decodes from depends on
the preference) and are shared by all objectives. Why a hand-written loop: trl's RewardTrainer fits a
pairwise Bradley-Terry loss on whole sequences; this is a token-level regression (a few lines of torch).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any

from mobench.api import MobenchError, RunContext, TaskInstance

ROLLOUT_KIND = "value-rollouts"
VALUE_KIND = "value-models"
HEAD_FILE = "value_head.safetensors"
TRAIN_INFO = "mobench-train.json"
VALUE_DEFAULTS: dict[str, Any] = {
    "n_rollouts": 32,
    "max_new_tokens": 32,
    "temperature": 1.0,
    "steps": 16,
    "batch_size": 8,
    "learning_rate": 5e-4,
    "lora_r": 8,
}


def value_budget(task: TaskInstance) -> dict[str, Any]:
    """The task's "value_head" budget with defaults filled in for absent keys."""
    given = task.budgets.get("value_head") or {}
    return {**VALUE_DEFAULTS, **{k: v for k, v in given.items() if v is not None}}


def rollout_key(task: TaskInstance, context: RunContext | None) -> dict[str, Any]:
    """What determines the rollouts: policy, training prompts, sampling settings, seed, versions."""
    from mobench.artifacts import library_versions
    from mobench.training.common import TRAINING_LIBRARIES
    from mobench.training.dpo import policy_fingerprint
    from mobench.training.rl import training_prompts

    budget = value_budget(task)
    seed = int(context.seed if context is not None else 0)
    prompts = training_prompts(task, budget["n_rollouts"], seed)
    return {
        "sampler": "hf-generate-sample",
        "base": policy_fingerprint(task.policy),
        "prompts": {"sha256": hashlib.sha256("\x1e".join(prompts).encode()).hexdigest(), "n": len(prompts)},
        "max_new_tokens": int(budget["max_new_tokens"]),
        "temperature": float(budget["temperature"]),
        "seed": seed,
        "versions": library_versions(*TRAINING_LIBRARIES),
    }


def rollouts(task: TaskInstance, context: RunContext | None = None) -> list[dict[str, str]]:
    """Sampled responses of the task policy on the RL training prompts (cached): [{prompt, response}]."""
    from mobench.artifacts import get_or_build

    def build(out: Path) -> None:
        from mobench.decoding.generate import generate_responses
        from mobench.models import load_causal_lm
        from mobench.training.common import resolve_device
        from mobench.training.rl import training_prompts

        budget = value_budget(task)
        seed = int(context.seed if context is not None else 0)
        prompts = training_prompts(task, budget["n_rollouts"], seed)
        model, tok = load_causal_lm(task.policy, device=resolve_device(context))
        responses = generate_responses(
            model, tok, prompts, max_new_tokens=int(budget["max_new_tokens"]), do_sample=True,
            temperature=float(budget["temperature"]), batch_size=8, seed=seed,
            progress=context.progress if context else None, description="MAGE value rollouts",
        )
        rows = [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]
        (out / "rollouts.json").write_text(json.dumps(rows, ensure_ascii=False))

    path = get_or_build(ROLLOUT_KIND, rollout_key(task, context), build)
    return json.loads((path / "rollouts.json").read_text())


def value_key(task: TaskInstance, objective: str, context: RunContext | None) -> dict[str, Any]:
    """What determines objective's value model: the rollouts, the scorer, its normalisation, hyper-parameters."""
    from mobench.training.common import lora_key

    budget = value_budget(task)
    obj = _objective(task, objective)
    norm = task.normalisation[objective]
    return {
        "trainer": "mobench-value-regression-lora",
        "rollouts": rollout_key(task, context),
        "objective": {"name": objective, "direction": obj.direction, "provenance": obj.provenance()},
        "normalisation": [norm.mean, norm.std],
        "hyper": {k: budget[k] for k in ("steps", "batch_size", "learning_rate")} | {"lora": lora_key(budget)},
    }


def _objective(task: TaskInstance, name: str):
    for o in task.objectives:
        if o.name == name:
            return o
    raise MobenchError(f"task {task.name!r} has no objective {name!r}")


def hidden_states(model, input_ids, attention_mask, **kwargs):
    """The inner transformer's output (last_hidden_state [rows, len, H], cache) of a causal LM or PeftModel, no LM head."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = inner.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return out


def _train(task: TaskInstance, objective: str, context: RunContext | None, out: Path) -> None:
    import torch
    from peft import get_peft_model
    from safetensors.torch import save_file

    from mobench.models import load_causal_lm
    from mobench.training.common import lora_config, resolve_device

    budget = value_budget(task)
    device = resolve_device(context)
    seed = int(context.seed if context is not None else 0)
    rows = rollouts(task, context)
    obj, norm = _objective(task, objective), task.normalisation[objective]
    scores = obj.score([r["prompt"] for r in rows], [r["response"] for r in rows])
    targets = [norm.apply(float(s), obj.direction) for s in scores]
    torch.manual_seed(seed)
    model, tok = load_causal_lm(task.policy, device=device)
    model = get_peft_model(model, lora_config(budget))
    head = torch.nn.Linear(model.config.hidden_size, 1).to(device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimiser = torch.optim.AdamW(params, lr=float(budget["learning_rate"]))
    # Each example: prompt ids + response ids; the regression covers the prompt's last token onwards.
    examples = []
    for r, z in zip(rows, targets):
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        y = tok(r["response"], add_special_tokens=False)["input_ids"]
        examples.append((p + y, len(p) - 1, z))
    order = random.Random(seed)
    model.train()
    losses, start = [], time.perf_counter()
    for step in range(int(budget["steps"])):
        batch = order.sample(examples, min(int(budget["batch_size"]), len(examples)))
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
        "objective": objective,
        "n_rollouts": len(rows),
        "target_mean": sum(targets) / len(targets),
        "train_seconds": round(time.perf_counter() - start, 2),
        "losses": losses,
    }
    (out / TRAIN_INFO).write_text(json.dumps(record, indent=2))


def train_value_model(task: TaskInstance, objective: str, context: RunContext | None = None) -> Path:
    """The folder of objective's value model (LoRA adapter + value_head.safetensors), trained if not cached."""
    from mobench.artifacts import get_or_build

    return get_or_build(VALUE_KIND, value_key(task, objective, context), lambda out: _train(task, objective, context, out))


def load_head(path: Path):
    """(weight [1, H], bias [1]) of a saved value head."""
    from safetensors.torch import load_file

    file = Path(path) / HEAD_FILE
    if not file.exists():
        raise MobenchError(f"{path} holds no value head ({HEAD_FILE} missing)")
    t = load_file(str(file))
    return t["weight"], t["bias"]
