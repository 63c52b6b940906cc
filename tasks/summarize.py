"""The ``summarize`` task: Reddit TL;DR posts, scored on summary quality and brevity."""

from __future__ import annotations

from mobench import hookimpl
from mobench.api import RunContext, TaskInstance
from mobench.tasks import _data
from mobench.tasks._common import PAPER_BUDGETS, TINY_BUDGETS, ScaleConfig, build_instance, scale_config

NAME = "summarize"
OBJECTIVES = ("quality", "brevity")
SOURCES = ["tldr-oai-judged"]

SCALES = {
    "tiny": ScaleConfig(
        policy="smollm2-135m-instruct",
        n_prompts={"posts": 32},
        prompt_limit=200,  # words of post: keeps CPU prefill short
        grid_points=3,
        generation={"max_new_tokens": 48, "do_sample": False, "temperature": 1.0, "batch_size": 8},
        budgets=TINY_BUDGETS,
    ),
    "paper": ScaleConfig(
        policy="Qwen/Qwen2.5-7B-Instruct",
        n_prompts={"posts": 256},
        prompt_limit=512,
        grid_points=11,
        generation={"max_new_tokens": 64, "do_sample": False, "temperature": 1.0, "batch_size": 32},
        budgets=PAPER_BUDGETS,
    ),
}


def load(scale: str = "tiny", context: RunContext | None = None) -> TaskInstance:
    """The summarize task at ``scale``: unjudged TL;DR posts with a one-line summary request."""
    cfg = scale_config(NAME, SCALES, scale)
    chats = [_data.summary_request(p) for p in _data.tldr_eval_posts(cfg.n_prompts["posts"], cfg.prompt_limit, cfg.seed)]
    pairs = {"quality": _data.quality_pairs(), "brevity": _data.brevity_pairs()}
    return build_instance(NAME, scale, cfg, OBJECTIVES, chats, pairs, context, SOURCES)


@hookimpl
def register_tasks(register):
    register.task(NAME, load, objectives=OBJECTIVES,
                  description="Reddit TL;DR posts; objectives quality (judged pairs) and brevity (words, fewer better)")
