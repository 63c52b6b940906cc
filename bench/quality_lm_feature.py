"""Does the policy LM's own log-likelihood read TL;DR summary quality beyond length? (issue 11's last idea)

The summarize task's "quality" head (MiniLM features + log words, Bradley-Terry on the 1,000 GPT-4-judged TL;DR
pairs: human reference vs a 1.3B PPO summary) does not beat "longer wins" on held-out pairs. MiniLM features,
overlap features, length residualising and SummEval pairs were tried before (README, "Objectives"). This script
tries an LM feature: SmolLM2-135M-Instruct (the tiny policy, packaged offline) scores every summary

- conditionally, log p(summary | the task's own templated summary request for the post), and
- unconditionally, log p(summary | the same request with the post left out),

giving per summary: the mean conditional log-prob per token, the pointwise mutual information with the post per
token (conditional minus unconditional: how much the post explains the summary, a relevance/faithfulness
signal) and their sums. Each feature set is fitted exactly as the task's head is fitted
(:func:`mobench.scorers.fit_bradley_terry`: no intercept, L2 chosen by 5-fold CV on the training part) over the
same 5 seeded 80/20 splits, and compared with the length-only baseline on the same held-out pairs
(:func:`mobench.scorers.length_baseline`). JSON on stdout: per feature set, per-split held-out accuracy, mean and
mean minus the baseline's mean.

Cost: per pair, one forward of [request + summary] for each of its two summaries (post cut at --post-tokens
tokens) and one of [generic request + summary] each: ~170 GFLOP a pair at 192 post tokens; measured 2,014 s of
scoring (34:49 wall, 1.3 GB peak RSS) for the 1,000 pairs on the idle 2-core CPU, 2026-11-27 (beside another
2-thread job it runs ~10x slower: never run it beside other work). Seconds on a GPU. The log-probs are cached in
--cache (JSON), so a rerun only refits.

Result of that run (mean held-out accuracy over the 5 splits; "longer wins" 0.660): per-token conditional
log-prob and PMI 0.597, all four LM features 0.660, with log words 0.665, beside the task head's features 0.657.
The policy LM's likelihood reads no more TL;DR quality than length does.

    MOBENCH_DATA_DIR=../shared/data python bench/quality_lm_feature.py --cache /tmp/quality_lm.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SPLITS = (0, 1, 2, 3, 4)
GENERIC = "Write a one-sentence TL;DR summary of a Reddit post."


def summary_logprobs(model, tok, prompt: str, summaries: list[str], max_prompt_tokens: int) -> list[tuple[float, int]]:
    """(sum of log p(token), number of tokens) of each summary after the templated ``prompt`` (one row a summary).

    A prompt longer than ``max_prompt_tokens`` loses the end of its post: its first ``max_prompt_tokens - 16``
    tokens and its last 16 (the instruction and the assistant header) are kept, so every summary is scored as
    the answer to a summary request.
    """
    import torch

    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if len(p_ids) > max_prompt_tokens:
        p_ids = p_ids[: max_prompt_tokens - 16] + p_ids[-16:]
    s_ids = [tok(s, add_special_tokens=False)["input_ids"] for s in summaries]
    width = max(len(s) for s in s_ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    rows = torch.tensor([p_ids + s + [pad] * (width - len(s)) for s in s_ids])
    mask = torch.tensor([[1] * (len(p_ids) + len(s)) + [0] * (width - len(s)) for s in s_ids])
    with torch.no_grad():
        logits = model(input_ids=rows, attention_mask=mask).logits[:, len(p_ids) - 1 : -1, :].float()
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    for r, s in enumerate(s_ids):
        picked = logp[r, torch.arange(len(s)), torch.tensor(s)]
        out.append((float(picked.sum()), len(s)))
    return out


def lm_scores(pairs, post_tokens: int) -> dict[str, list[list[float]]]:
    """{"cond": [[sum, n] chosen, [sum, n] rejected] per pair, "uncond": likewise} with SmolLM2-135M-Instruct."""
    import torch

    from mobench.models import SMOLLM2_ALIAS, load_causal_lm
    from mobench.tasks import data

    model, tok = load_causal_lm(SMOLLM2_ALIAS, device="cpu", dtype=torch.float32)
    model.eval()
    generic = tok.apply_chat_template([{"role": "user", "content": GENERIC}], tokenize=False, add_generation_prompt=True)
    cond, uncond = [], []
    start = time.perf_counter()
    for i, (post, chosen, rejected) in enumerate(pairs):
        prompt = tok.apply_chat_template(data.summary_request(post), tokenize=False, add_generation_prompt=True)
        cond.append([list(x) for x in summary_logprobs(model, tok, prompt, [chosen, rejected], post_tokens)])
        uncond.append([list(x) for x in summary_logprobs(model, tok, generic, [chosen, rejected], post_tokens)])
        if (i + 1) % 100 == 0:
            print(f"{i + 1}/{len(pairs)} pairs scored, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return {"cond": cond, "uncond": uncond, "post_tokens": post_tokens, "seconds": round(time.perf_counter() - start, 1)}


def lm_features(scores: dict, which: int) -> np.ndarray:
    """Per pair, the LM features of its chosen (``which`` 0) or rejected (1) summary: [mean cond, mean PMI, sum cond, sum PMI]."""
    rows = []
    for c, u in zip(scores["cond"], scores["uncond"]):
        (cs, n), (us, _) = c[which], u[which]
        rows.append([cs / n, (cs - us) / n, cs, cs - us])
    return np.asarray(rows, dtype="float64")


def main() -> None:
    from mobench import scorers
    from mobench.tasks.objectives import head_pairs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--post-tokens", type=int, default=192, help="prompt tokens kept (post cut, instruction kept)")
    parser.add_argument("--cache", default=None, help="JSON file of the LM scores (written once, then read)")
    parser.add_argument("--limit", type=int, default=None, help="first N pairs only (a quick look; the splits need all)")
    args = parser.parse_args()

    pairs = head_pairs("quality")[: args.limit]
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.exists():
        scores = json.loads(cache.read_text())
    else:
        scores = lm_scores(pairs, args.post_tokens)
        if cache is not None:
            cache.write_text(json.dumps(scores))
    def standardised(x):  # per column, no centring: a shift of the differences would act as an intercept
        scale = x.std(axis=0)
        return x / np.where(scale > 0, scale, 1.0)

    lm = standardised(lm_features(scores, 0) - lm_features(scores, 1))
    words = np.log1p(np.array([[scorers.word_count(p[1]), scorers.word_count(p[2])] for p in pairs], dtype="float64"))
    loglen = standardised((words[:, 0] - words[:, 1])[:, None])
    head = scorers.pair_differences(pairs)  # the task's head features as it fits them (raw): MiniLM, cos, log words
    sets = {
        "log words (the head's length feature alone)": loglen,
        "task head (MiniLM + cos + log words)": head,
        "LM: mean cond log-prob, mean PMI": lm[:, :2],
        "LM: all four": lm,
        "LM all four + log words": np.hstack([lm, loglen]),
        "task head + LM all four": np.hstack([head, lm]),
    }
    base = [scorers.length_baseline(pairs, seed=s).heldout_accuracy for s in SPLITS]
    out = {"n_pairs": len(pairs), "post_tokens": scores["post_tokens"], "lm_seconds": scores["seconds"],
           "length_baseline": {"per_split": base, "mean": round(float(np.mean(base)), 4)}, "features": {}}
    for name, diff in sets.items():
        acc = [scorers.fit_bradley_terry(pairs, seed=s, diff=diff.astype("float32")).heldout_accuracy for s in SPLITS]
        out["features"][name] = {"per_split": [round(a, 4) for a in acc], "mean": round(float(np.mean(acc)), 4),
                                 "minus_length_baseline": round(float(np.mean(acc) - np.mean(base)), 4)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
