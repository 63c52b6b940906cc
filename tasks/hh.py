"""The ``hh`` task: HH-RLHF dialogues and helpful requests, scored on helpfulness and harmlessness."""

from __future__ import annotations

from mobench import hookimpl
from mobench.api import RunContext, TaskInstance
from mobench.tasks import _data
from mobench.tasks._common import PAPER_BUDGETS, TINY_BUDGETS, ScaleConfig, build_instance, scale_config

NAME = "hh"
OBJECTIVES = ("helpful", "harmless")
SOURCES = ["hh-rlhf-harmless-test", "hhh-helpful", "dove-helpful-test", "dove-helpful-pref"]

SCALES = {
    "tiny": ScaleConfig(
        policy="smollm2-135m-instruct",
        n_prompts={"harmless": 16, "helpful": 16},
        prompt_limit=600,  # characters of dialogue: keeps CPU generation short
        grid_points=3,
        generation={"max_new_tokens": 64, "do_sample": False, "temperature": 1.0, "batch_size": 8},
        budgets=TINY_BUDGETS,
    ),
    "paper": ScaleConfig(
        policy="Qwen/Qwen2.5-7B-Instruct",
        n_prompts={"harmless": 128, "helpful": 128},
        prompt_limit=4000,
        grid_points=11,
        generation={"max_new_tokens": 128, "do_sample": False, "temperature": 1.0, "batch_size": 32},
        budgets=PAPER_BUDGETS,
    ),
}


def load(scale: str = "tiny", context: RunContext | None = None) -> TaskInstance:
    """The hh task at ``scale``: red-team dialogue openings and helpful requests, chat-templated."""
    cfg = scale_config(NAME, SCALES, scale)
    chats = _data.hh_eval_dialogues(cfg.n_prompts["harmless"], cfg.n_prompts["helpful"], cfg.prompt_limit, cfg.seed)
    pairs = {"helpful": _data.helpful_pairs(), "harmless": _data.harmless_pairs()}
    return build_instance(NAME, scale, cfg, OBJECTIVES, chats, pairs, context, SOURCES)


@hookimpl
def register_tasks(register):
    register.task(NAME, load, objectives=OBJECTIVES,
                  description="HH-RLHF red-team dialogues + helpful requests; objectives helpful, harmless")
