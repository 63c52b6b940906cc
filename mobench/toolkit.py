"""A task author's toolkit: templating chats for the policy, objectives by name, policy names, seeding.

Everything a task plugin needs besides :mod:`mobench.api`, public and documented::

    from mobench.toolkit import chat_prompts

    def load(scale, context):
        chats = [[{"role": "user", "content": post}] for post in posts]
        return TaskInstance(name="mytask", scale=scale, policy="smollm2-135m-instruct",
                            objectives=[context.objective("brevity", scale)],
                            prompts=chat_prompts("smollm2-135m-instruct", chats), chats=chats)

Objectives come from the registry (``context.objective(name, scale)``), never built by hand, so an
objective's name and direction are declared once. Normalisation and reference point come from the task's
calibration file, written by ``mobench calibrate --task NAME`` and attached by the core.
"""

from __future__ import annotations

import random
from typing import Sequence

from mobench.api import Chat, MobenchError


def chat_prompts(policy: str, chats: Sequence[Chat]) -> list[str]:
    """Each chat rendered with the policy's chat template, ending where the assistant's reply begins.

    ``policy`` is anything :func:`mobench.models.load_tokenizer` takes (see :func:`policy_aliases`).
    """
    from mobench.models import load_tokenizer

    tok = load_tokenizer(policy)
    if not getattr(tok, "chat_template", None):
        raise MobenchError(f"policy {policy!r} has no chat template; tasks need a chat model")
    return [tok.apply_chat_template(list(chat), tokenize=False, add_generation_prompt=True) for chat in chats]


def policy_aliases() -> dict[str, str]:
    """Alias -> hub id of the models a task may name by alias (a local folder or hub id works too)."""
    from mobench.models import policy_aliases as aliases

    return aliases()


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch (CPU and CUDA) with ``seed``; the runner does this from ``--seed``
    before a method's ``prepare`` and again before each ``generate`` call."""
    import sys

    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    if "torch" in sys.modules or _torch_installed():
        import torch

        torch.manual_seed(seed)


def _torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None
