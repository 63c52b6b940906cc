"""The ``hh`` task: HH-RLHF dialogues and helpful requests, scored on helpfulness and harmlessness."""

from __future__ import annotations

from pathlib import Path

from mobench.tasks import data
from mobench.tasks.common import BuiltinTask, ScaleConfig, paper_scale, tiny_scale


def eval_chats(cfg: ScaleConfig):
    """Red-team dialogue openings, then helpful requests, of at most ``prompt_limit`` characters."""
    return data.hh_eval_dialogues(cfg.n_prompts["harmless"], cfg.n_prompts["helpful"], cfg.prompt_limit, cfg.seed)


def validation_chats(cfg: ScaleConfig):
    """Validation dialogues: the next ``n_validation`` of each pool after the evaluation ones (same seeded order)."""
    n, v = cfg.n_prompts, cfg.n_validation
    both = data.hh_eval_dialogues(n["harmless"] + v["harmless"], n["helpful"] + v["helpful"], cfg.prompt_limit, cfg.seed)
    split = n["harmless"] + v["harmless"]
    return both[n["harmless"] : split] + both[split + n["helpful"] :]


TASK = BuiltinTask(
    name="hh",
    description="HH-RLHF red-team dialogues + helpful requests; objectives helpful, harmless",
    calibration=Path(__file__).with_name("hh.json"),  # committed: mobench calibrate --task hh
    objectives=("helpful", "harmless"),
    sources=("hh-rlhf-harmless-test", "hhh-helpful", "dove-helpful-test", "dove-helpful-pref"),
    scales={
        # prompt_limit: characters of dialogue (keeps CPU generation short)
        "tiny": tiny_scale({"harmless": 16, "helpful": 16}, prompt_limit=600, max_new_tokens=64,
                           n_validation={"harmless": 8, "helpful": 8}),
        "paper": paper_scale({"harmless": 128, "helpful": 128}, prompt_limit=4000, max_new_tokens=128,
                             n_validation={"harmless": 64, "helpful": 64}),
    },
    chats=eval_chats,
    validation=validation_chats,
    pairs=lambda: {"helpful": data.helpful_pairs(), "harmless": data.harmless_pairs()},
)
load = TASK.load
register_tasks = TASK.register_tasks  # the plugin's hook implementation
