"""MORLHF's trainer: on-policy RL with LoRA on the scalarised reward sum_i w_i z_i, through trl's RLOOTrainer.

Why RLOO stands in for the papers' PPO. The MORLHF baselines (Rewarded Soups, MODPO, RiC) ran trl's
PPOTrainer: samples from the policy, a reward r(x, y) - beta KL(pi || pi_ref) per sequence, and a
policy-gradient update. trl 1.x has no PPOTrainer; of the two on-policy trainers it keeps, RLOOTrainer is
the one that optimises that same KL-regularised sequence reward: it subtracts beta times the summed
log-ratio log pi/pi_ref from each sequence's reward, exactly as PPO-RLHF does (GRPO instead puts a
per-token KL term in the loss and normalises rewards per group). RLOO replaces PPO's learned value
baseline by the leave-one-out mean reward of the other samples of the same prompt (Ahmadian et al. 2024,
"Back to Basics"), which needs no value model, is reported to match or beat PPO on RLHF, and keeps
tiny-scale runs cheap. It takes several reward functions with ``reward_weights`` and a peft LoRA config;
with LoRA the reference policy is the base model with the adapter disabled.

Each objective's reward is its score normalised by the task's statistics (z = direction (s - mean) / std),
so that w_i weighs comparable quantities. Objectives with zero weight are not scored at all. The trainer
takes what it needs (policy, objectives, normalisation, weights, prompts, an :class:`RlBudget`), not a task.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from mobench.api import Generation, MobenchError, Normalisation, Objective, RunContext, TaskInstance, prompts_sha256
from mobench.options import option
from mobench.training.common import (
    LoraBudget,
    checkpointing_kwarg,
    key_environment,
    load_for_training,
    lora_config,
    lora_key,
    progress_callback,
    train_and_save,
    weights_label,
)


@dataclass(frozen=True)
class RlBudget(LoraBudget):
    """How a LoRA policy is trained by RLOO on a weighted sum of z-scored rewards (MORLHF, MAGE's backbones)."""

    steps: int = option(8, "optimiser steps")
    batch_size: int = option(8, "completions per step (batch_size / num_generations prompts)")
    num_generations: int = option(4, "completions sampled per prompt (the leave-one-out group)")
    max_new_tokens: int | None = option(
        None, "tokens sampled per completion (None: the task's evaluation length, so RL scores the text the evaluation does)")
    learning_rate: float = option(
        1e-3, "AdamW learning rate (1e-3 chosen on hh's validation prompts over 1e-3 / 3e-4 / 1e-4 by MORLHF's sweep: at 8 "
        "steps 1e-4 leaves the policy at the reference, README 'Tuning a method's knob')")
    beta_kl: float = option(0.05, "KL penalty to the reference policy, in the reward")
    temperature: float = option(1.0, "sampling temperature of the rollouts")
    n_prompts: int = option(64, "training prompts (pair prompts of the task, never its evaluation prompts)")
    max_prompt_chars: int | None = option(
        None, "longest training prompt in characters (None: the task's longest evaluation prompt, so RL trains on prompts "
        "like those it is evaluated on; longer ones are left out: every step generates from them)")
    gradient_checkpointing: bool = option(False, "activation checkpointing (saves memory, costs time)")

    PRESETS: ClassVar = {
        # An hh RLOO policy at 8 steps trains in 287-339 s on an idle 2-core CPU (64-token rollouts; summarize: 868-1,014 s at 16 steps).
        "tiny": {},
        "paper": {"steps": 500, "batch_size": 64, "max_new_tokens": 128, "learning_rate": 1.41e-5, "beta_kl": 0.2,
                  "lora_r": 64, "n_prompts": 10000},
    }

    def check(self) -> None:
        super().check()
        if self.num_generations < 2 or self.batch_size % self.num_generations:
            raise MobenchError(f"the rl budget needs num_generations >= 2 dividing batch_size; got {self.num_generations} and {self.batch_size}")
        self.require_at_least_one("RL", ("steps", "n_prompts"))
        if self.max_prompt_chars is not None and self.max_prompt_chars < 1:
            raise MobenchError(f"RL max_prompt_chars must be at least 1 (or None: the longest evaluation prompt), not {self.max_prompt_chars!r}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise MobenchError(f"RL max_new_tokens must be at least 1 (or None: the evaluation's), not {self.max_new_tokens!r}")

    def at_length(self, generation: Generation) -> "RlBudget":
        """This budget with ``max_new_tokens`` filled in from the task's generation settings when it is None."""
        if self.max_new_tokens is not None:
            return self
        return dataclasses.replace(self, max_new_tokens=int(Generation.of(generation).max_new_tokens))

    def at_task(self, task: TaskInstance) -> "RlBudget":
        """This budget with its task-dependent fields filled in where they are None: ``max_new_tokens`` (the evaluation's
        length) and ``max_prompt_chars`` (the task's longest evaluation prompt)."""
        budget = self.at_length(task.generation)
        if budget.max_prompt_chars is None:
            budget = dataclasses.replace(budget, max_prompt_chars=max(len(p) for p in task.prompts))
        return budget


def rl_prompts(task: TaskInstance, budget: RlBudget, seed: int) -> list[str]:
    """The ``n_prompts`` RL prompts of a budget resolved by :meth:`RlBudget.at_task`; one clear line when the task has fewer.

    A silent shortfall is what this guards against: with a fixed 800-character limit, summarize's RL trained on the
    2 of its 1,000 pair prompts that short (the Reddit posts' median is 1,621 characters).
    """
    if budget.max_prompt_chars is None:
        raise MobenchError("the RL budget's max_prompt_chars is None: resolve it with budget.at_task(task)")
    prompts = training_prompts(task, budget.n_prompts, seed, budget.max_prompt_chars)
    if len(prompts) < budget.n_prompts:
        raise MobenchError(
            f"RL asks for {budget.n_prompts} training prompts of at most {budget.max_prompt_chars} characters; task "
            f"{task.name!r} has {len(prompts)}: raise max_prompt_chars or lower n_prompts")
    return prompts


RL_KIND = "morlhf-policies"
# The budget fields in a policy's key (all but LoRA, which enters as lora_key, and activation checkpointing).
_HYPER = ("batch_size", "beta_kl", "learning_rate", "max_new_tokens", "max_prompt_chars", "n_prompts",
          "num_generations", "steps", "temperature")


def objective_reward(objective: Objective, norm: Normalisation) -> Callable[..., list[float]]:
    """A trl reward function: the objective's score of each completion, normalised to a z-score."""

    def reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
        scores = objective.score(list(prompts), list(completions))
        return [norm.apply(float(s), objective.direction) for s in scores]

    reward.__name__ = f"z_{objective.name}"  # trl logs each reward function under its name
    return reward


def weighted_rewards(
    objectives: Sequence[Objective], normalisation: dict[str, Normalisation], weights: Sequence[float]
) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """The reward functions and weights trl gets: one z-scored reward per objective with positive weight."""
    if len(weights) != len(objectives):
        raise MobenchError(f"{len(weights)} weights for {len(objectives)} objectives")
    funcs, ws = [], []
    for objective, w in zip(objectives, weights):
        if w <= 0:
            continue  # a zero weight contributes nothing: skip the scorer
        if objective.name not in normalisation:
            raise MobenchError(f"the task has no normalisation statistics for objective {objective.name!r}")
        funcs.append(objective_reward(objective, normalisation[objective.name]))
        ws.append(float(w))
    if not funcs:
        raise MobenchError(f"preference {list(weights)} gives every objective zero weight")
    return funcs, ws


def scalarised_reward(
    objectives: Sequence[Objective], normalisation: dict[str, Normalisation], weights: Sequence[float]
) -> Callable[[Sequence[str], Sequence[str]], list[float]]:
    """sum_i w_i z_i(x, y) as a plain function, built from the very reward functions and weights trl receives."""
    funcs, ws = weighted_rewards(objectives, normalisation, weights)

    def reward(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        columns = [f(prompts, completions) for f in funcs]
        return [sum(w * col[j] for w, col in zip(ws, columns)) for j in range(len(completions))]

    return reward


def training_prompts(task: TaskInstance, n: int, seed: int, max_chars: int | None = None) -> list[str]:
    """RL prompts: distinct pair prompts of the task (never its evaluation prompts) up to max_chars, seeded sample."""
    import random

    seen: dict[str, None] = {}
    for name in task.objective_names:
        for pair in task.pairs.get(name, []):
            seen.setdefault(pair.prompt)
    evaluation = set(task.prompts)
    prompts = [p for p in seen if p not in evaluation and (not max_chars or len(p) <= max_chars)]
    if not prompts:
        raise MobenchError(f"task {task.name!r} has no preference-pair prompts (of at most {max_chars} characters) to run RL on")
    random.Random(seed).shuffle(prompts)
    return prompts[: int(n)]


def rloo_config(budget: RlBudget, output_dir: str, seed: int, device: str):
    """trl's RLOOConfig from a budget: batch_size completions (num_generations per prompt) per optimiser step."""
    from trl import RLOOConfig

    on_cuda = str(device).startswith("cuda")
    return RLOOConfig(
        output_dir=output_dir,
        max_steps=int(budget.steps),
        per_device_train_batch_size=int(budget.batch_size),
        num_generations=int(budget.num_generations),
        max_completion_length=int(budget.max_new_tokens),
        temperature=float(budget.temperature),
        learning_rate=float(budget.learning_rate),
        beta=float(budget.beta_kl),
        seed=int(seed),
        data_seed=int(seed),
        bf16=on_cuda,
        use_cpu=not on_cuda,
        **checkpointing_kwarg(RLOOConfig, budget.gradient_checkpointing),
        disable_dropout=True,
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, int(budget.steps) // 4),
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def policy_key(policy: str, objectives: Sequence[Objective], normalisation: dict[str, Normalisation],
               weights: Sequence[float], prompts: Sequence[str], budget: RlBudget,
               context: RunContext | None = None) -> dict[str, Any]:
    """Everything that determines the RL policy at ``weights``: base, rewards, prompts, budget, seed, precision, versions."""
    weighted_rewards(objectives, normalisation, weights)  # the same checks as training, before any key is made
    return {
        "trainer": "trl-rloo-lora",
        "weights": [round(float(w), 6) for w in weights],
        "rewards": {
            o.name: {
                "direction": o.direction,
                "normalisation": [normalisation[o.name].mean, normalisation[o.name].std],
                "provenance": o.provenance(),
            }
            for o, w in zip(objectives, weights)
            if w > 0
        },
        "prompts": {"sha256": prompts_sha256(prompts), "n": len(prompts)},
        "hyper": {k: getattr(budget, k) for k in _HYPER} | {"lora": lora_key(budget)},
        **key_environment(policy, context),
    }


def _train(policy: str, objectives: Sequence[Objective], normalisation: dict[str, Normalisation], weights: Sequence[float],
           prompts: Sequence[str], budget: RlBudget, context: RunContext | None, out) -> None:
    import tempfile

    from datasets import Dataset
    from trl import RLOOTrainer

    model, tok, device, seed = load_for_training(policy, context)
    funcs, ws = weighted_rewards(objectives, normalisation, weights)
    with tempfile.TemporaryDirectory(prefix="mobench-rl-") as scratch:
        config = rloo_config(budget, scratch, seed, device)
        config.reward_weights = ws
        trainer = RLOOTrainer(
            model=model,
            reward_funcs=funcs,
            args=config,
            train_dataset=Dataset.from_dict({"prompt": list(prompts)}),
            processing_class=tok,
            peft_config=lora_config(budget),
            callbacks=[progress_callback(context, f"RL policy {weights_label(weights)}")],
        )
        record = {"weights": list(weights), "rewards": [f.__name__ for f in funcs], "reward_weights": ws}
        train_and_save(trainer, out, device, record, log_keys=("reward", "loss", "kl"))


def train_rl_policy(policy: str, objectives: Sequence[Objective], normalisation: dict[str, Normalisation],
                    weights: Sequence[float], prompts: Sequence[str], budget: RlBudget,
                    context: RunContext | None = None) -> Path:
    """The folder of the LoRA RLOO policy on sum_i w_i z_i over ``prompts``, trained only if not cached yet.

    ``prompts`` are the training prompts (see :func:`training_prompts`); objectives with zero weight are
    not scored; ``normalisation`` must hold every objective with a positive weight.
    """
    from mobench.artifacts import get_or_build

    if not prompts:
        raise MobenchError("no prompts to run RL on")
    if budget.max_new_tokens is None:
        raise MobenchError("the RL budget's max_new_tokens is None: resolve it with budget.at_length(task.generation)")
    key = policy_key(policy, objectives, normalisation, weights, prompts, budget, context)
    return Path(get_or_build(RL_KIND, key, lambda out: _train(policy, objectives, normalisation, weights, prompts, budget, context, out)))
