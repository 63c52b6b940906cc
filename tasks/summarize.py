"""The ``summarize`` task: Reddit TL;DR posts, scored on summary quality and brevity."""

from __future__ import annotations

from pathlib import Path

from mobench.tasks import data
from mobench.tasks.common import BuiltinTask, ScaleConfig, paper_scale, tiny_scale


def eval_chats(cfg: ScaleConfig):
    """Unjudged TL;DR posts of at most ``prompt_limit`` words, each with a one-line summary request."""
    return [data.summary_request(p) for p in data.tldr_eval_posts(cfg.n_prompts["posts"], cfg.prompt_limit, cfg.seed)]


def validation_chats(cfg: ScaleConfig):
    """Validation posts: the next ``n_validation`` unjudged posts after the evaluation ones (same seeded order)."""
    n, v = cfg.n_prompts["posts"], cfg.n_validation["posts"]
    return [data.summary_request(p) for p in data.tldr_eval_posts(n + v, cfg.prompt_limit, cfg.seed)[n:]]


TASK = BuiltinTask(
    name="summarize",
    description="Reddit TL;DR posts; objectives quality (judged pairs) and brevity (words, fewer better)",
    calibration=Path(__file__).with_name("summarize.json"),  # committed: mobench calibrate --task summarize
    objectives=("quality", "brevity"),
    sources=("tldr-oai-judged",),
    scales={
        # prompt_limit: words of post (keeps CPU prefill short)
        "tiny": tiny_scale({"posts": 32}, prompt_limit=200, max_new_tokens=48, n_validation={"posts": 16}),
        "paper": paper_scale({"posts": 256}, prompt_limit=512, max_new_tokens=64, n_validation={"posts": 128}),
    },
    chats=eval_chats,
    validation=validation_chats,
    pairs=lambda: {"quality": data.quality_pairs(), "brevity": data.brevity_pairs()},
)
load = TASK.load
register_tasks = TASK.register_tasks  # the plugin's hook implementation
