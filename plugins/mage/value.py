"""MAGE's explicit value models: a LoRA on the task policy plus a scalar head, regressed on scored rollouts.

Each value model V_i(x, y_<=t) predicts objective i's z-score z_i = direction (s_i - mean_i)/std_i of the
finished response from every prefix (the prompt's last token and each response token), by mean squared
error. The rollouts are samples of the task policy (the reference: the base MAGE decodes from depends on
the preference) at the evaluation's length, kept as token ids with their EOS, so V is trained on the
prefix that ends in EOS (the value of stopping, which MAGE's candidates always include); they are shared by
all objectives. The last ``n_heldout`` rollouts are not trained on: the training record reports V's held-out
fit, the Spearman correlation of V at every prefix (and at the full response) with the rollout's final z.
Why a hand-written loop: trl's RewardTrainer fits a pairwise Bradley-Terry loss on whole sequences; this is
a token-level regression (a few lines of torch).
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
    n_heldout: int = option(16, "further rollouts, not trained on, for V's held-out fit (Spearman of V at prefixes vs z)")
    max_new_tokens: int | None = option(None, "tokens sampled per rollout (None: the task's evaluation length)")
    max_prompt_chars: int = option(1200, "rollout prompts of at most this many characters (training cost is mostly the prompt)")
    temperature: float = option(1.0, "sampling temperature of the rollouts")
    steps: int = option(40, "optimiser steps of the regression")
    batch_size: int = option(8, "rollouts per optimiser step")
    learning_rate: float = option(1e-3, "AdamW learning rate (LoRA and head)")
    lora_r: int = option(8, "LoRA rank of each value model")

    PRESETS: ClassVar = {
        "tiny": {},
        "paper": {"n_rollouts": 10000, "n_heldout": 500, "max_prompt_chars": 4000, "steps": 2000, "learning_rate": 1e-4,
                  "lora_r": 64},
    }

    def check(self) -> None:
        super().check()
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise MobenchError(f"value max_new_tokens must be at least 1, not {self.max_new_tokens!r}")
        if self.n_heldout < 2:
            raise MobenchError(f"value n_heldout must be at least 2 (a rank correlation), not {self.n_heldout!r}")
        for name in ("n_rollouts", "steps", "batch_size", "max_prompt_chars"):
            if getattr(self, name) < 1:
                raise MobenchError(f"value {name} must be at least 1, not {getattr(self, name)!r}")
        if not self.temperature > 0 or not self.learning_rate > 0:
            raise MobenchError("value temperature and learning_rate must be positive")


def for_task(budget: ValueBudget, max_new_tokens: int) -> ValueBudget:
    """``budget`` with its rollout length resolved: the task's evaluation length when the budget leaves it None."""
    return budget if budget.max_new_tokens is not None else budget.replace({"max_new_tokens": int(max_new_tokens)})


def _length(budget: ValueBudget) -> int:
    if budget.max_new_tokens is None:
        raise MobenchError("the value budget's max_new_tokens is unresolved: value.for_task(budget, task length) first")
    return int(budget.max_new_tokens)


def rollout_key(policy: str, prompts: Sequence[str], budget: ValueBudget, context: RunContext | None = None) -> dict[str, Any]:
    """What determines the rollouts: policy, prompts, sampling settings, seed, precision, versions."""
    from mobench.training import key_environment

    return {
        "sampler": "mobench-decode-sample-ids-with-eos",
        "prompts": {"sha256": prompts_sha256(prompts), "n": len(prompts)},
        "max_new_tokens": _length(budget),
        "temperature": float(budget.temperature),
        **key_environment(policy, context),
    }


def rollouts(policy: str, prompts: Sequence[str], budget: ValueBudget, context: RunContext | None = None) -> list[dict[str, Any]]:
    """Sampled responses of ``policy`` on ``prompts`` (cached): [{prompt, response, response_ids}].

    ``response_ids`` are the sampled token ids, the EOS included when one was sampled (then nothing after it);
    ``response`` is their text without special tokens (what the objectives score).
    """
    from mobench.artifacts import get_or_build

    def build(out: Path) -> None:
        from mobench.decoding import DecodeSettings, ModelScorer, decode_tokens
        from mobench.models import load_causal_lm
        from mobench.training import context_dtype, resolve_device

        model, tok = load_causal_lm(policy, device=resolve_device(context), dtype=context_dtype(context))
        settings = DecodeSettings(_length(budget), True, float(budget.temperature), ROLLOUT_BATCH, context_seed(context))
        ids = decode_tokens([ModelScorer(model)], lambda lps, w: lps[0], tok, list(prompts), [[1.0]] * len(prompts),
                            settings, progress=context.progress if context else None, description="MAGE value rollouts")
        texts = tok.batch_decode(ids, skip_special_tokens=True)
        rows = [{"prompt": p, "response": r, "response_ids": y} for p, r, y in zip(prompts, texts, ids)]
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
        "hyper": {"steps": budget.steps, "batch_size": budget.batch_size, "learning_rate": budget.learning_rate,
                  "n_rollouts": budget.n_rollouts, "n_heldout": budget.n_heldout}
        | {"lora": lora_key(budget)},
    }


def hidden_states(model, input_ids, attention_mask, **kwargs):
    """The inner transformer's output (last_hidden_state [rows, len, H], cache) of a causal LM or PeftModel, no LM head."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = inner.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return out


def _examples(tok, rows: Sequence[dict[str, Any]], targets: Sequence[float]) -> list[tuple[list[int], int, float]]:
    """(prompt ids + response ids, index of the prompt's last token, z) per rollout: the positions V regresses on."""
    out = []
    for r, z in zip(rows, targets):
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        y = list(r["response_ids"]) if "response_ids" in r else tok(r["response"], add_special_tokens=False)["input_ids"]
        out.append((p + y, len(p) - 1, float(z)))
    return out


def _batch(examples, pad_id: int):
    """Right-padded ids, mask, per-position weights (1 from the prompt's last token to the end) and targets."""
    import torch

    width = max(len(ids) for ids, _, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    weight = torch.zeros(len(examples), width)
    target = torch.zeros(len(examples), width)
    for i, (seq, first, z) in enumerate(examples):  # right padding: positions are plain aranges
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        weight[i, first : len(seq)] = 1.0
        target[i, :] = z
    return ids, mask, weight, target


def heldout_fit(model, head, examples, pad_id: int, device) -> dict[str, Any]:
    """V's fit on held-out rollouts: Spearman of V at every regressed prefix vs the final z, and of V at the end."""
    import torch
    from scipy.stats import spearmanr

    values, finals, zs, final_z = [], [], [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), 8):
            chunk = examples[start : start + 8]
            ids, mask, weight, _ = _batch(chunk, pad_id)
            v = head(hidden_states(model, ids.to(device), mask.to(device)).last_hidden_state.float()).squeeze(-1).cpu()
            for i, (seq, first, z) in enumerate(chunk):
                values += v[i, first : len(seq)].tolist()
                zs += [z] * (len(seq) - first)
                finals.append(float(v[i, len(seq) - 1]))
                final_z.append(z)
    model.train()

    def rho(a, b) -> float | None:
        r = spearmanr(a, b).statistic if len(set(b)) > 1 and len(set(a)) > 1 else float("nan")
        return None if r != r else round(float(r), 4)

    return {"n": len(examples), "positions": len(values), "spearman_prefixes": rho(values, zs),
            "spearman_final": rho(finals, final_z)}


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
    # Each example: prompt ids + response ids (EOS kept); the regression covers the prompt's last token onwards.
    # The last n_heldout rollouts (when there are more than that) are held out for the fit, never trained on.
    examples = _examples(tok, rows, targets)
    cut = len(examples) - int(budget.n_heldout) if len(examples) > int(budget.n_heldout) else len(examples)
    train, held = examples[:cut], examples[cut:]
    order = random.Random(seed)
    model.train()
    losses, start = [], time.perf_counter()
    for step in range(int(budget.steps)):
        batch = order.sample(train, min(int(budget.batch_size), len(train)))
        ids, mask, weight, target = _batch(batch, tok.pad_token_id)
        h = hidden_states(model, ids.to(device), mask.to(device)).last_hidden_state
        pred = head(h.float()).squeeze(-1)  # the head trains in fp32 whatever the base dtype (bf16 on CUDA)
        loss = ((pred - target.to(device)) ** 2 * weight.to(device)).sum() / weight.sum().to(device)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    train_seconds = round(time.perf_counter() - start, 2)
    fit = heldout_fit(model, head, held, tok.pad_token_id, device) if held else None
    model.save_pretrained(str(out))
    save_file({"weight": head.weight.detach().cpu().contiguous(), "bias": head.bias.detach().cpu().contiguous()}, str(out / HEAD_FILE))
    eos = set(tok.all_special_ids)
    record = {
        "objective": objective.name,
        "n_rollouts": len(train),
        "n_heldout": len(held),
        "rollouts_ending_in_eos": sum(1 for r in rows if r.get("response_ids") and r["response_ids"][-1] in eos),
        "target_mean": sum(z for _, _, z in train) / len(train),
        "train_seconds": train_seconds,
        "heldout_fit": fit,
        "losses": losses,
    }
    (out / TRAIN_INFO).write_text(json.dumps(record, indent=2))


def fit_record(path: Path) -> dict[str, Any]:
    """A trained value model's held-out fit and EOS count from its training record (for provenance)."""
    record = json.loads((Path(path) / TRAIN_INFO).read_text())
    return {k: record.get(k) for k in ("heldout_fit", "n_rollouts", "n_heldout", "rollouts_ending_in_eos", "train_seconds")}


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
