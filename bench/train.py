"""Training bench: LoRA DPO tokens/s and achieved FLOP/s as a share of this machine's measured matmul peak.

Prints one JSON object. In one run it measures
- the peak: the best of several fp32 (or --dtype) square matmuls of --matmul-size on the same threads;
- a DPO expert's training through mobench's own trainer (``mobench.training.train_dpo_expert``, trl's
  DPOTrainer, the tiny budget unless overridden) on the task's real preference pairs, in a fresh cache:
  seconds per optimiser step (trl's ``train()`` over all steps, warm-up included, so a slight
  underestimate of the steady rate), tokens (prompt + completion of chosen and rejected, unpadded, and
  padded per batch in data order: an estimate, since trl shuffles), and the FLOPs of those tokens.

FLOPs per step, counted on the padded tokens T of a step: the policy's forward (2 N T) and backward through
the frozen base to the LoRA adapters (the input gradients, 2 N T; LoRA's own weight gradients are
negligible), plus the reference forward with the adapter disabled (2 N T): 6 N T, N the model's parameters
(the tied LM head counted once per use: N includes it). Attention's T^2 terms are left out (sequences of at
most a few hundred tokens at this model size add under 10%), so the share is a slight underestimate.

    python bench/train.py --task hh --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time


def matmul_peak(size: int, dtype_name: str, repeats: int = 8) -> float:
    """Best achieved FLOP/s of a size x size matmul (2 size^3 FLOPs) over ``repeats`` tries."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="hh")
    parser.add_argument("--objective", default=None, help="default: the task's first objective")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps trained (the first is warm-up)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the tiny preset's")
    parser.add_argument("--max-length", type=int, default=None, help="default: the tiny preset's")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    import torch

    from mobench.api import RunContext
    from mobench.models import load_causal_lm, load_tokenizer
    from mobench.plugins import get_plugin_manager
    from mobench.training import DpoBudget, train_dpo_expert
    from mobench.training.common import truncate_prompts
    from mobench.training.dpo import TRAIN_INFO, expert_pairs

    peak_before = matmul_peak(args.matmul_size, args.dtype)
    registry = get_plugin_manager().registry
    context = RunContext(seed=0, device="cpu", registry=registry)
    task = registry.task(args.task).load("tiny", context)
    objective = args.objective or task.objective_names[0]
    values = {"steps": args.steps}
    if args.batch_size:
        values["batch_size"] = args.batch_size
    if args.max_length:
        values["max_length"] = args.max_length
    budget = DpoBudget.preset("tiny").replace(values)

    # The tokens trl sees: prompt + completion of both answers, each row cut to max_length, padded per batch.
    tok = load_tokenizer(task.policy)
    used = truncate_prompts(expert_pairs(objective, task.pairs[objective], budget), tok, int(budget.max_length))
    rows = []
    for p in used[: budget.steps * budget.batch_size]:
        prompt = len(tok(p.prompt, add_special_tokens=False)["input_ids"])
        for c in (p.chosen, p.rejected):
            rows.append(min(int(budget.max_length), prompt + len(tok(c, add_special_tokens=False)["input_ids"]) + 1))
    model, _ = load_causal_lm(task.policy, device="cpu")
    n_params = sum(p.numel() for p in model.parameters())
    del model

    with tempfile.TemporaryDirectory(prefix="mobench-bench-train-") as cache:
        os.environ["MOBENCH_CACHE"] = cache
        folder = train_dpo_expert(task.policy, objective, task.pairs[objective], budget, context)
        record = json.loads((folder / TRAIN_INFO).read_text())
    peak_after = matmul_peak(args.matmul_size, args.dtype)
    peak = max(peak_before, peak_after)

    seconds = float(record["train_seconds"])
    steps = int(record["steps"])
    # Unpadded tokens of all steps, and an estimate of the padded ones (trl pads each micro-batch's chosen and
    # rejected rows to the longest of the batch; data order is trl's shuffle, so take the mean batch maximum).
    unpadded = sum(rows)
    per_batch = [rows[i : i + 2 * budget.batch_size] for i in range(0, len(rows), 2 * budget.batch_size)]
    padded = sum(max(b) * len(b) for b in per_batch)
    flops = 6 * n_params * padded
    print(json.dumps({
        "bench": "train",
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
        "task": args.task, "objective": objective,
        "budget": {"steps": steps, "batch_size": budget.batch_size, "max_length": budget.max_length,
                   "lora_r": budget.lora_r, "gradient_checkpointing": budget.gradient_checkpointing},
        "params": n_params,
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "matmul_peak_gflops_before_after": [round(peak_before / 1e9, 1), round(peak_after / 1e9, 1)],
        "train_seconds": seconds,
        "seconds_per_step": round(seconds / steps, 2),
        "tokens_padded": padded, "tokens_unpadded": unpadded,
        "padding_overhead": round(padded / unpadded, 3),
        "tokens_per_second_padded": round(padded / seconds, 1),
        "achieved_gflops": round(flops / seconds / 1e9, 1),
        "share_of_matmul_peak": round(flops / seconds / peak, 3),
        "note": "train_seconds includes trl's per-run set-up inside train(); FLOPs 6 N T on padded tokens, attention T^2 left out",
    }, indent=2))


if __name__ == "__main__":
    main()
