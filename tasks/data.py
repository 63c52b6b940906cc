"""The built-in tasks' prompts and preference pairs, assembled from the real sources in :mod:`mobench.tasks.sources`.

Evaluation prompts and training pairs never share a prompt: an HH dialogue belongs to the
evaluation pool when the sha256 of its opening turn falls in the pool's 10% bucket; helpful and
TL;DR evaluation prompts come from rows that no pair uses. Every list is in a fixed, seeded order.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache

from mobench.api import Chat, MobenchError
from mobench.tasks.chats import last_user_message, messages, parse_transcript
from mobench.tasks.sources import SOURCES

EVAL_POOL_PERCENT = 10
SUMMARY_INSTRUCTION = "Write a TL;DR summary of the post above in one or two sentences."


@dataclass(frozen=True)
class RawPair:
    """A preference pair before chat templating: the dialogue so far, and two assistant replies."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), ...) so that the pair is hashable
    chosen: str
    rejected: str
    source: str

    @property
    def chat(self) -> Chat:
        """The dialogue as chat messages."""
        return [{"role": r, "content": c} for r, c in self.messages]


def in_eval_pool(text: str) -> bool:
    """True for the ~10% of texts whose sha256 puts them in the evaluation pool (order-independent)."""
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % 100 < EVAL_POOL_PERCENT


def seeded_order(items: list, seed: int) -> list:
    """A copy of ``items`` in a fixed pseudo-random order (Python's Mersenne Twister, stable across versions)."""
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def _as_messages(chat: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((m["role"], m["content"]) for m in chat)


def _split_last_reply(transcript: str) -> tuple[list[dict[str, str]], str]:
    chat = parse_transcript(transcript)
    if not chat or chat[-1]["role"] != "assistant":
        return chat, ""
    return chat[:-1], chat[-1]["content"]


# --- hh ------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def hh_harmless_rows() -> tuple[tuple[tuple[tuple[str, str], ...], str, str], ...]:
    """HH-RLHF harmless-base test pairs as (dialogue, chosen reply, rejected reply), same dialogue only."""
    rows = []
    for row in SOURCES.load("hh-rlhf-harmless-test"):
        ctx_c, chosen = _split_last_reply(row["chosen"])
        ctx_r, rejected = _split_last_reply(row["rejected"])
        if ctx_c and ctx_c == ctx_r and chosen and rejected and chosen != rejected:
            rows.append((_as_messages(ctx_c), chosen, rejected))
    return tuple(rows)


def harmless_pairs() -> list[RawPair]:
    """Harmless pairs outside the evaluation pool, in file order."""
    return [
        RawPair(m, c, r, "hh-rlhf-harmless-test")
        for m, c, r in hh_harmless_rows()
        if not in_eval_pool(m[0][1])
    ]


def helpful_eval_instructions() -> list[str]:
    """Single-turn helpful instructions from dove's HH-helpful test file (no pair uses them)."""
    return [row["instruction"].strip() for row in SOURCES.load("dove-helpful-test") if row["instruction"].strip()]


def helpful_pairs() -> list[RawPair]:
    """HHH helpful pairs (written by Anthropic) plus dove's HH-helpful preference pairs."""
    held = set(helpful_eval_instructions())
    pairs = []
    for row in SOURCES.load("hhh-helpful"):
        scores = {k: v for k, v in row["target_scores"].items() if v is not None}
        good = [k for k, v in scores.items() if v == 1]
        bad = [k for k, v in scores.items() if v == 0]
        if len(good) == 1 and len(bad) == 1 and row["input"].strip() not in held:
            pairs.append(RawPair((("user", row["input"].strip()),), good[0].strip(), bad[0].strip(), "hhh-helpful"))
    for row in SOURCES.load("dove-helpful-pref"):
        prompt = row["i_chosen"].strip()
        if row["i_reject"].strip() != prompt or prompt in held or row["r_chosen"] == row["r_reject"]:
            continue
        pairs.append(RawPair((("user", prompt),), row["r_chosen"].strip(), row["r_reject"].strip(), "dove-helpful-pref"))
    return pairs


def hh_eval_dialogues(n_harmless: int, n_helpful: int, max_chars: int, seed: int) -> list[list[dict[str, str]]]:
    """Evaluation dialogues: ``n_harmless`` HH-RLHF red-team openings then ``n_helpful`` helpful requests.

    Only dialogues of at most ``max_chars`` characters qualify (generation cost on CPU); both lists
    are drawn in a seeded order, so two calls return the same dialogues.
    """
    pool = sorted({m for m, _, _ in hh_harmless_rows() if in_eval_pool(m[0][1])})
    pool = [m for m in pool if sum(len(c) for _, c in m) <= max_chars]
    helpful = sorted({i for i in helpful_eval_instructions() if len(i) <= max_chars})
    harmless = seeded_order(pool, seed)[:n_harmless]
    chosen_helpful = seeded_order(helpful, seed)[:n_helpful]
    if len(harmless) < n_harmless or len(chosen_helpful) < n_helpful:
        raise MobenchError(
            f"hh: only {len(harmless)} harmless and {len(chosen_helpful)} helpful prompts of <= {max_chars} characters"
        )
    dialogues = [[{"role": r, "content": c} for r, c in m] for m in harmless]
    return dialogues + [[{"role": "user", "content": i}] for i in chosen_helpful]


# --- summarize -------------------------------------------------------------------------------------


def post_block(query: str) -> str:
    """The SUBREDDIT/TITLE/POST block of a TL;DR query, without the trailing "TL;DR:"."""
    text = query.strip()
    if text.endswith("TL;DR:"):
        text = text[: -len("TL;DR:")].rstrip()
    return text


def summary_request(post: str) -> list[dict[str, str]]:
    """The chat message asking the policy to summarise ``post``."""
    return [{"role": "user", "content": f"{post}\n\n{SUMMARY_INSTRUCTION}"}]


def post_of(chat: Chat, default: str = "") -> str:
    """The post a summarisation chat asks about: its last user message without the instruction."""
    text = last_user_message(chat, default)
    return text[: -len(SUMMARY_INSTRUCTION)].rstrip() if text.endswith(SUMMARY_INSTRUCTION) else text


def post_from_prompt(prompt: str) -> str:
    """The post a templated summarisation prompt asks about (the context of the quality scorers)."""
    return post_of(messages(prompt), default=prompt)


@lru_cache(maxsize=1)
def tldr_rows() -> tuple[tuple[str, str, str, str | None], ...]:
    """TL;DR rows as (post, reference summary, 1.3B PPO summary, GPT-4 verdict or None)."""
    out = []
    for row in SOURCES.load("tldr-oai-judged"):
        verdict = row["preferred"] if row["preferred"] in ("ours", "reference") else None
        out.append((post_block(row["query"]), str(row["reference_responses"]).strip(),
                    str(row["postprocessed_response"]).strip(), verdict))
    return tuple(out)


def quality_pairs() -> list[RawPair]:
    """The 1,000 GPT-4-judged TL;DR pairs: the preferred of (human reference, PPO sample) is chosen."""
    pairs = []
    for post, ref, ppo, verdict in tldr_rows():
        if verdict is None or ref == ppo:
            continue
        chosen, rejected = (ref, ppo) if verdict == "reference" else (ppo, ref)
        pairs.append(RawPair(_as_messages(summary_request(post)), chosen, rejected, "tldr-oai-judged"))
    return pairs


def brevity_pairs(min_ratio: float = 1.25) -> list[RawPair]:
    """Judged-row summary pairs whose lengths differ by ``min_ratio`` or more: the shorter is chosen."""
    pairs = []
    for post, ref, ppo, verdict in tldr_rows():
        if verdict is None:
            continue
        short, long_ = sorted((ref, ppo), key=lambda s: len(s.split()))
        if len(long_.split()) >= min_ratio * max(1, len(short.split())):
            pairs.append(RawPair(_as_messages(summary_request(post)), short, long_, "tldr-oai-judged"))
    return pairs


def tldr_eval_posts(n: int, max_words: int, seed: int) -> list[str]:
    """``n`` posts of at most ``max_words`` words from the unjudged TL;DR rows, in a seeded order."""
    pool = sorted({post for post, _, _, verdict in tldr_rows() if verdict is None and len(post.split()) <= max_words})
    chosen = seeded_order(pool, seed)[:n]
    if len(chosen) < n:
        raise MobenchError(f"summarize: only {len(chosen)} unjudged posts of <= {max_words} words")
    return chosen
