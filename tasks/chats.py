"""Conversations of the built-in tasks: HH transcripts, and getting a templated prompt's chat back.

Objectives receive the prompt exactly as the policy saw it (chat template applied): the
:class:`~mobench.api.Objective` contract is ``score(prompts, responses)``, and MORLHF's reward functions
call it with templated prompts too. Scorers need the conversation instead (the last user turn, the
HH transcript, the post). So the tasks template through :func:`template`, which remembers each templated
prompt's chat in a process-wide table keyed by the exact prompt text, and :func:`messages` reads it back.

Why a table keyed by text: registered objectives are built by name (``context.objective(name, scale)``),
apart from any task instance, and receive only prompt strings, so the prompt text is the one key that
reaches them; being the exact text, it can only find the conversation that produced it. A prompt the
tasks did not template (a method's own prompt, a plain HH transcript) falls back to :func:`parse_prompt`,
which reads ChatML, Llama-3 and HH transcripts back into messages with a regex. For the built-in tasks'
templates both give the same messages (a test checks every evaluation and pair prompt), so scores are
the same either way; the table keeps scorers right for templates the regex cannot read.
"""

from __future__ import annotations

import re
from typing import Sequence

from mobench.api import Chat

# templated prompt -> the chat it was rendered from (filled by template())
_CHATS: dict[str, Chat] = {}

# --- HH-RLHF transcripts ("\n\nHuman: ...\n\nAssistant: ...") ---------------------------------------

_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_transcript(text: str) -> Chat:
    """Split an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") into chat messages."""
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip("\n")
    parts = _TURN.split(text)
    # parts = [prefix, role, content, role, content, ...]
    return [{"role": "user" if role == "Human" else "assistant", "content": content.strip()}
            for role, content in zip(parts[1::2], parts[2::2])]


def to_transcript(messages: Sequence[dict[str, str]], open_assistant: bool = True) -> str:
    """The HH-RLHF transcript form of chat messages, ending with an open "Assistant:" turn."""
    names = {"user": "Human", "assistant": "Assistant"}
    text = "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in messages if m["role"] in names)
    return text + ("\n\nAssistant:" if open_assistant else "")


# --- templated prompts and their chats -------------------------------------------------------------


def template(policy: str, chats: Sequence[Chat]) -> list[str]:
    """The chats templated for ``policy`` (:func:`mobench.toolkit.chat_prompts`); each prompt's chat is remembered."""
    from mobench.toolkit import chat_prompts

    prompts = chat_prompts(policy, chats)
    for prompt, chat in zip(prompts, chats):
        _CHATS[prompt] = [dict(m) for m in chat]
    return prompts


def conversation(chat: Sequence[dict[str, str]]) -> Chat:
    """The user/assistant messages of a chat, contents stripped (system messages dropped)."""
    return [{"role": m["role"], "content": m["content"].strip()} for m in chat if m["role"] in ("user", "assistant")]


# transformers can apply a chat template but has no inverse; these patterns cover ChatML (SmolLM2,
# Qwen), Llama-3 headers, and raw HH transcripts. Anything else is taken as one user message.
_CHATML = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|\Z)", re.S)
_LLAMA3 = re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)(?:<\|eot_id\|>|\Z)", re.S)


def parse_prompt(prompt: str) -> Chat:
    """The fallback: a templated prompt read back with a regex (system messages and the open turn dropped)."""
    for pattern in (_CHATML, _LLAMA3):
        found = pattern.findall(prompt)
        if found:
            messages = [{"role": r, "content": c} for r, c in found]
            break
    else:
        messages = parse_transcript(prompt) if "\n\nHuman:" in prompt else [{"role": "user", "content": prompt}]
    messages = conversation(messages)
    while messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def messages(prompt: str) -> Chat:
    """The conversation of a prompt: the chat :func:`template` rendered it from, else :func:`parse_prompt`."""
    chat = _CHATS.get(prompt)
    return conversation(chat) if chat is not None else parse_prompt(prompt)


# --- contexts the scorers compare a response against -----------------------------------------------


def last_user_message(chat: Sequence[dict[str, str]], default: str = "") -> str:
    """The content of the chat's last user message (``default`` when it has none)."""
    users = [m["content"] for m in conversation(chat) if m["role"] == "user"]
    return users[-1] if users else default


def last_user_turn(prompt: str) -> str:
    """The last user message of a templated prompt (the helpful and harmless heads' context)."""
    return last_user_message(messages(prompt), default=prompt)


def hh_transcript(prompt: str) -> str:
    """The prompt's conversation as an HH-RLHF transcript ending in "\\n\\nAssistant:" (the Ray2333 reward models' input)."""
    return to_transcript(messages(prompt))
