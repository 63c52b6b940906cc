"""What the built-in tasks share: the per-scale declaration and the assembly of a TaskInstance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mobench.api import SCALES, MobenchError, PreferencePair, RunContext, TaskInstance
from mobench.tasks import _calibration
from mobench.tasks._data import RawPair, seeded_order

# Set in RunContext.options by `mobench calibrate`: build the instance without reading a calibration.
CALIBRATING = "calibrating"

TINY_BUDGETS = {
    # Measured on an idle 2-core CPU (2026-11-23): one hh DPO expert (r=16, batch 8, 32 steps, max_length 256)
    # trains in 1,034 s (~32 s a step); an hh RLOO policy (8 steps) in ~150 s.
    "dpo": {"steps": 32, "batch_size": 8, "learning_rate": 5e-4, "beta": 0.1, "max_length": 256, "lora_r": 16, "n_pairs": 256},
    "rl": {"steps": 8, "batch_size": 8, "num_generations": 4, "max_new_tokens": 32, "learning_rate": 1e-4,
           "beta_kl": 0.05, "lora_r": 16, "n_prompts": 64},
    "value_head": {"n_rollouts": 64, "steps": 50, "learning_rate": 1e-3, "lora_r": 8},
}
PAPER_BUDGETS = {
    # LoRA DPO as in MODPO / Rewarded Soups (beta 0.1, r 64); n_pairs is capped by the data available.
    "dpo": {"steps": 1000, "batch_size": 32, "learning_rate": 5e-4, "beta": 0.1, "max_length": 1024, "lora_r": 64, "n_pairs": 20000},
    "rl": {"steps": 500, "batch_size": 64, "num_generations": 4, "max_new_tokens": 128, "learning_rate": 1.41e-5,
           "beta_kl": 0.2, "lora_r": 64, "n_prompts": 10000},
    "value_head": {"n_rollouts": 10000, "steps": 2000, "learning_rate": 1e-4, "lora_r": 64},
}


@dataclass(frozen=True)
class ScaleConfig:
    """One scale of a task: policy, prompt counts and limits, grid size, decoding and training budgets."""

    policy: str
    n_prompts: dict[str, int]
    prompt_limit: int
    grid_points: int
    generation: dict[str, Any]
    budgets: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


def scale_config(task: str, scales: dict[str, ScaleConfig], scale: str) -> ScaleConfig:
    """The declared scale, or a MobenchError naming the known ones."""
    if scale not in scales:
        raise MobenchError(f"task {task!r} has no scale {scale!r} (known: {', '.join(s for s in SCALES if s in scales)})")
    return scales[scale]


def build_instance(task: str, scale: str, cfg: ScaleConfig, objective_names: tuple[str, ...],
                   chats: list[list[dict[str, str]]], pairs: dict[str, list[RawPair]], context: RunContext | None,
                   sources: list[str]) -> TaskInstance:
    """Template the prompts and pairs for the policy, build the objectives, attach the calibration."""
    from mobench import data
    from mobench.models import load_tokenizer
    from mobench.tasks._objectives import build_objective

    tok = load_tokenizer(cfg.policy)
    if not getattr(tok, "chat_template", None):
        raise MobenchError(f"policy {cfg.policy!r} has no chat template; tasks need a chat model")

    def template(chat: list[dict[str, str]]) -> str:
        return tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    prompts = [template(c) for c in chats]
    objectives = [build_objective(name, scale) for name in objective_names]
    # A seeded order so that the first n pairs a trainer takes are a fair sample of all of them.
    templated = {
        name: [PreferencePair(template(p.chat), p.chosen, p.rejected) for p in seeded_order(raw, cfg.seed)]
        for name, raw in pairs.items()
    }
    leaked = set(prompts) & {p.prompt for ps in templated.values() for p in ps}
    if leaked:  # guarded by construction in _data; kept as a check because it would bias every method
        raise MobenchError(f"task {task!r}: {len(leaked)} evaluation prompts also appear in training pairs")

    options = (context.options if context is not None else {}) or {}
    if options.get(CALIBRATING):
        normalisation, reference_point, calibration = {}, (), {}
    else:
        normalisation, reference_point, calibration = _calibration.read(task, scale, prompts, objective_names)
    provenance = {
        "task": task,
        "scale": scale,
        "seed": cfg.seed,
        "n_prompts": len(prompts),
        "prompts_sha256": _calibration.digest(prompts),
        "pairs": {name: len(ps) for name, ps in templated.items()},
        "data": [data.provenance(s) for s in sources],
        "calibration_file": str(_calibration.calibration_path(task)),
        "calibration_created": calibration.get("created"),
        "calibration_rule": _calibration.RULE,
    }
    return TaskInstance(
        name=task,
        scale=scale,
        policy=cfg.policy,
        objectives=objectives,
        prompts=prompts,
        normalisation=normalisation,
        reference_point=reference_point,
        pairs=templated,
        grid_points=cfg.grid_points,
        generation=dict(cfg.generation),
        budgets={k: dict(v) for k, v in cfg.budgets.items()},
        provenance=provenance,
    )
