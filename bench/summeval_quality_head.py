"""Can a MiniLM Bradley-Terry head read summary quality beyond length? A head on SummEval's expert ratings.

Issue 11 asks every trained objective to beat its length-only baseline on held-out pairs. The summarize task's
"quality" head (GPT-4-judged TL;DR pairs: human reference vs a 1.3B PPO summary) does not (0.657 against 0.660
for "longer wins" over 5 splits). This script trains the same head (mobench.scorers.head_features: MiniLM of
the summary, its cosine to the source text, log words) on SummEval instead: 100 CNN/DM articles with 16 system
summaries each, rated 1-5 by 3 experts on coherence, consistency, fluency and relevance. A pair is two summaries
of one article whose rating differs by at least GAP; 20 articles are held out (a pair never straddles the split).
It prints, per target rating and gap, the head's held-out accuracy, the length-only baseline's on the same pairs
(direction chosen on the training pairs; ties count half) and the head's accuracy on the 1,000 GPT-4-judged
TL;DR pairs (transfer to the task's own data). JSON on stdout; about 2 minutes on a 2-core CPU.

    MOBENCH_DATA_DIR=../shared/data python bench/summeval_quality_head.py
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from mobench import scorers
from mobench.tasks.objectives import head_pairs

DIMS = ("coherence", "consistency", "fluency", "relevance")
_EMBEDDED: dict[str, np.ndarray] = {}
_embed = scorers.embed


def embed_once(texts):
    """scorers.embed with a per-process memo: the same articles and summaries recur in every setting."""
    missing = [t for t in dict.fromkeys(texts) if t not in _EMBEDDED]
    if missing:
        _EMBEDDED.update(zip(missing, _embed(missing)))
    return np.stack([_EMBEDDED[t] for t in texts]) if len(texts) else _embed(texts)


scorers.embed = embed_once  # head_features looks embed up in its module


def differences(pairs):
    contexts = [p[0] for p in pairs]
    ctx = embed_once(contexts)
    return (scorers.head_features(contexts, [p[1] for p in pairs], ctx)
            - scorers.head_features(contexts, [p[2] for p in pairs], ctx))


def length_accuracy(pairs, sign):
    d = [sign * (scorers.word_count(c) - scorers.word_count(r)) for _, c, r in pairs]
    return float(np.mean([1.0 if x > 0 else 0.5 if x == 0 else 0.0 for x in d]))


def main() -> None:
    from sklearn.linear_model import LogisticRegressionCV

    rows = [json.loads(line) for line in (Path(os.environ["MOBENCH_DATA_DIR"]) / "summeval" / "summeval.jsonl").open()]
    articles: dict[str, list[dict]] = {}
    for row in rows:
        articles.setdefault(row["article_id"], []).append(row)
    order = sorted(articles)
    rng = np.random.default_rng(0)
    rng.shuffle(order)
    held_articles = set(order[:20])
    tldr = head_pairs("quality")
    tldr_diff = differences(tldr)
    out = {"n_articles": len(articles), "n_held_articles": len(held_articles), "settings": {}}
    for target in ("mean", "relevance", "consistency", "coherence"):
        def rating(row):
            return float(np.mean([row[d] for d in DIMS])) if target == "mean" else float(row[target])

        for gap in (0.5, 1.0):
            train, held = [], []
            for a in sorted(articles):
                for x, y in itertools.combinations(articles[a], 2):
                    if abs(rating(x) - rating(y)) < gap:
                        continue
                    good, bad = (x, y) if rating(x) > rating(y) else (y, x)
                    (held if a in held_articles else train).append((good["article"], good["summary"], bad["summary"]))
            d_train, d_held = differences(train), differences(held)
            flip = np.where(rng.random(len(train)) < 0.5, 1.0, -1.0)
            clf = LogisticRegressionCV(Cs=[0.01, 0.03, 0.1, 0.3, 1.0], cv=5, fit_intercept=False, max_iter=5000,
                                       scoring="neg_log_loss")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                clf.fit(d_train * flip[:, None], (flip > 0).astype(int))
            w = clf.coef_[0]
            sign = 1 if length_accuracy(train, 1) >= length_accuracy(train, -1) else -1
            out["settings"][f"{target}/gap{gap}"] = {
                "pairs_train": len(train), "pairs_held": len(held),
                "heldout_accuracy": float(((d_held @ w) > 0).mean()),
                "length_baseline": length_accuracy(held, sign), "length_rule": "longer wins" if sign > 0 else "shorter wins",
                "tldr_gpt4_pairs_accuracy": float(((tldr_diff @ w) > 0).mean()), "C": float(np.ravel(clf.C_)[0]),
            }
            print(target, gap, out["settings"][f"{target}/gap{gap}"], file=sys.stderr, flush=True)
    out["command"] = "python bench/summeval_quality_head.py"
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
