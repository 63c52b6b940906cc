"""The built-in objectives: one declaration each (direction, description, scorer per scale), registered here.

Tasks get them from the registry (``context.objective(name, scale)``); :data:`OBJECTIVES` is the one
place that says an objective's direction. tiny: Bradley-Terry heads on all-MiniLM-L6-v2 embeddings
trained by mobench on real pairs, plus cheap scorers. paper: the hub reward models the multi-objective
alignment papers used. Heavy libraries load only when an objective is built or scores.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from mobench import hookimpl
from mobench.api import SCALES, Chat, MobenchError, RunContext
from mobench.scorers import (
    BradleyTerryScorer,
    ScoredObjective,
    SequenceClassifierScorer,
    heldout_responses,
    length_baseline,
    length_scores,
    sentiment_scores,
    toxicity_scores,
    train_head,
)
from mobench.tasks import data
from mobench.tasks.chats import hh_transcript, last_user_message, messages, to_transcript
from mobench.tasks.sources import SOURCES


@dataclass(frozen=True)
class Declared:
    """An objective's registration: +1 when higher is better, -1 when lower is; what it measures."""

    direction: int
    description: str


OBJECTIVES: dict[str, Declared] = {
    "helpful": Declared(1, "helpfulness: BT head on HHH + dove helpful pairs (tiny) / Ray2333 GPT-2 large helpful RM (paper)"),
    "harmless": Declared(1, "harmlessness: BT head on HH-RLHF harmless-base pairs (tiny) / Ray2333 GPT-2 large harmless RM (paper)"),
    "quality": Declared(1, "summary quality: BT head on GPT-4-judged TL;DR pairs (tiny) / Tristan/gpt2_reward_summarization (paper)"),
    "faithful": Declared(1, "summary faithfulness: CogComp/bart-faithful-summary-detector (paper only)"),
    "brevity": Declared(-1, "summary length in words, lower is better"),  # a word count: fewer words is better
    "toxicity": Declared(-1, "probability of offensive language (alt-profanity-check), lower is better"),
    "sentiment": Declared(1, "VADER compound sentiment in [-1, 1]"),
    "length": Declared(1, "response length in words, higher is better"),  # the verbosity objective (more detail)
}

HEAD_SEED = 0
# The harmless head uses every pair outside the evaluation pool (2,070; 80% train / 20% held out).
# Measured over three held-out splits: 400 pairs 0.55-0.60, 1,500 pairs 0.61-0.65, 2,070 pairs
# 0.60-0.64 (the split used, seed 0: 0.630 on 414 pairs); all pairs give the largest held-out set.
HARMLESS_MAX_PAIRS = None


@dataclass(frozen=True)
class HeadSpec:
    """A trained head: where its pairs come from and what context of the chat the features compare against.

    ``context(chat, default)``: the text taken from the conversation (``default`` when the chat has none).
    """

    pairs: Callable[[], list[data.RawPair]]
    context: Callable[[Chat, str], str]
    sources: tuple[str, ...]
    max_pairs: int | None = None

    def prompt_context(self, prompt: str) -> str:
        """The context of a templated prompt, from its chat (:func:`mobench.tasks.chats.messages`)."""
        return self.context(messages(prompt), prompt)


# XSTest compliance pairs (113 safe prompts: full compliance > full refusal) were measured as extra
# helpful training pairs: held-out accuracy on HHH + dove pairs 0.721 with them vs 0.724 without
# (mean of 5 splits), so they are not used.
HEADS: dict[str, HeadSpec] = {
    "helpful": HeadSpec(data.helpful_pairs, last_user_message, ("hhh-helpful", "dove-helpful-pref")),
    "harmless": HeadSpec(data.harmless_pairs, last_user_message, ("hh-rlhf-harmless-test",), HARMLESS_MAX_PAIRS),
    "quality": HeadSpec(data.quality_pairs, data.post_of, ("tldr-oai-judged",)),
}

# name -> (model id, context taken from the prompt, input format, logit index), as the papers feed them.
HUB_MODELS: dict[str, tuple[str, Callable[[str], str], str, int]] = {
    # Rewarded Soups, Rewards-in-Context and MOD score HH with these two GPT-2 large reward models.
    "helpful": ("Ray2333/gpt2-large-helpful-reward_model", hh_transcript, "text_pair", 0),
    "harmless": ("Ray2333/gpt2-large-harmless-reward_model", hh_transcript, "text_pair", 0),
    # Rewards-in-Context's summary reward ("summary <bos> post") and faithfulness detector (label 1).
    "quality": ("Tristan/gpt2_reward_summarization", data.post_from_prompt, "summary_bos_post", 0),
    "faithful": ("CogComp/bart-faithful-summary-detector", data.post_from_prompt, "summary_post_pair", 1),
}

CHEAP: dict[str, Callable] = {
    "brevity": length_scores,
    "length": length_scores,
    "toxicity": toxicity_scores,
    "sentiment": sentiment_scores,
}


def head_pairs(name: str) -> list[tuple[str, str, str]]:
    """The (context, chosen, rejected) pairs a head trains on, capped and in a fixed order."""
    spec = HEADS[name]
    pairs = data.seeded_order(spec.pairs(), HEAD_SEED)
    if spec.max_pairs is not None:
        pairs = pairs[: spec.max_pairs]
    # The context is read back from the dialogue's HH transcript, as the committed heads were trained (the
    # cache key is these pairs). Reading it from p.chat instead differs for 9 helpful pairs whose prompt
    # contains "\n\nAssistant:" (the transcript splits it into turns): a retrained head, not a refactor.
    return [(spec.prompt_context(to_transcript(p.chat)), p.chosen, p.rejected) for p in pairs]


def head_folder(name: str):
    """Train the head once (artifact cache keyed by the pairs' content) and return its folder."""
    pairs = head_pairs(name)
    digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()
    return train_head(name, {"pairs_sha256": digest, "n_pairs": len(pairs), "sources": list(HEADS[name].sources)},
                      lambda: pairs, seed=HEAD_SEED)


def _head_objective(name: str) -> ScoredObjective:
    folder = head_folder(name)
    scorer = BradleyTerryScorer(folder, HEADS[name].prompt_context)
    pairs = head_pairs(name)
    baseline = length_baseline(pairs, seed=HEAD_SEED)
    trained_on, _ = heldout_responses(pairs, seed=HEAD_SEED)
    info: dict[str, Any] = {
        "scorer": "bradley-terry head on all-MiniLM-L6-v2",
        "features": scorer.meta["features"],
        "heldout_accuracy": scorer.meta["heldout_accuracy"],
        "n_train": scorer.meta["n_train"],
        "n_heldout": scorer.meta["n_heldout"],
        # The same held-out pairs judged by length alone ("longer wins" or "shorter wins", whichever was
        # right more often on the training pairs; a tie counts half): how much of the head is length.
        "length_baseline_accuracy": baseline.heldout_accuracy,
        "length_baseline_rule": baseline.rule,
        "l2_C": scorer.meta["C"],
        # An empty reply scores at most the head's 5th percentile of its training responses (no pair holds an
        # empty reply: the head's own score for one is an extrapolation; hh's harmless head put it at z ~ +1.5).
        "empty_reply_floor": scorer.meta["empty_floor"],
        "data": [SOURCES.provenance(s) for s in HEADS[name].sources],
        "artifact": str(folder),
    }
    return ScoredObjective(name, OBJECTIVES[name].direction, scorer, info, trained_on=trained_on,
                           empty_floor=scorer.meta["empty_floor"])


def _hub_objective(name: str, run: RunContext | None = None) -> ScoredObjective:
    model_id, context, fmt, label = HUB_MODELS[name]
    # The run's --device and --dtype: where and at which precision the reward model runs.
    scorer = SequenceClassifierScorer(model_id, context, input_format=fmt, label_index=label,
                                      device=run.device if run else None, dtype=run.dtype if run else None)
    return ScoredObjective(name, OBJECTIVES[name].direction, scorer,
                           {"scorer": "hub reward model", "model": model_id, "input_format": fmt, "logit": label})


def build_objective(name: str, scale: str = "tiny", context: RunContext | None = None) -> ScoredObjective:
    """The objective called ``name`` at ``scale``; a MobenchError when it has no scorer there.

    ``context`` (the run's): its device and dtype reach the hub reward models. The tiny heads' MiniLM
    encoder stays on the CPU in float32 whatever the run asks, so that a head scores with exactly the
    features it was fitted on (it is small: ~55 texts/s on 2 cores).
    """
    if scale not in SCALES:
        raise MobenchError(f"unknown scale {scale!r} (known: {', '.join(SCALES)})")
    if name in CHEAP:
        fn = CHEAP[name]
        return ScoredObjective(name, OBJECTIVES[name].direction, fn, {"scorer": fn.__doc__.strip().splitlines()[0]})
    if scale == "paper" and name in HUB_MODELS:
        return _hub_objective(name, context)
    if scale == "tiny" and name in HEADS:
        return _head_objective(name)
    if name in OBJECTIVES:
        raise MobenchError(f"objective {name!r} has no scorer at scale {scale!r}")
    raise MobenchError(f"unknown objective {name!r} (known: {', '.join(sorted(OBJECTIVES))})")


@hookimpl
def register_objectives(register):
    for name, declared in OBJECTIVES.items():
        register.objective(name, partial(build_objective, name), direction=declared.direction,
                           description=declared.description)
