"""Padding bench: the tokens LoRA DPO batches hold against the real tokens, per pair set, in both training orders.

Deterministic, tokenizer only (nothing is trained). Prints one JSON object. For each pair set of the tasks (the
pairs an expert or a MODPO policy trains on: the first ``n_pairs`` of the objective's seeded order, prompts cut
as mobench cuts them) it counts, over the budget's optimiser steps:

- real tokens: each pair's chosen and rejected row (prompt + completion + EOS, cut at ``max_length``), as
  ``mobench.training.pair_lengths`` counts them (a test checks them against trl's own tokenisation);
- padded tokens: each micro-batch's 2 x B rows padded to its longest row, as trl's DPO collator pads;

in three orders: ``random``, the order trl trained in before (accelerate's ``SeedableRandomSampler`` seeded
with the run's seed, epoch by epoch, exactly as the Trainer builds it); ``grouped``, transformers'
``LengthGroupedSampler`` over the same widths (``DpoBudget.group_by_length``, an option since 2026-11-27, off by default; in training its
generator is torch's global one seeded by the trainer, here one seeded per seed: the same distribution);
``sorted``, all pairs sorted by width, the floor for this batch size (context only). ``random`` and
``grouped`` are given for ``--seed`` and as the mean, min and max over ``--seeds`` seeds from it.
``reduction`` is random padded / grouped padded (mean over seeds), i.e. how many times fewer tokens the
forward and backward passes process. ``reference_pass`` is MODPO's reference pass (trl's precompute: one pass in
dataset order, batches of ``batch_size``), before (the seeded pair order) and after (pairs sorted by width).

    python bench/dpo_padding.py --tasks hh summarize --seeds 10
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics


def padded_and_real(order: list[int], rows: list[tuple[int, int]], batch_size: int) -> tuple[int, int]:
    """(padded, real) tokens of the micro-batches of ``order``: each batch's rows padded to its longest row."""
    padded = real = 0
    for start in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[start : start + batch_size]]
        padded += 2 * len(batch) * max(max(r) for r in batch)
        real += sum(c + r for c, r in batch)
    return padded, real


def training_order(sampler_for_epoch, n_rows: int, needed: int) -> list[int]:
    """The first ``needed`` indices the trainer draws, epoch after epoch (a new sampler pass per epoch)."""
    order: list[int] = []
    epoch = 0
    while len(order) < needed:
        order += list(sampler_for_epoch(epoch))[: needed - len(order)]
        epoch += 1
    return order


def summary(values: list[tuple[int, int]]) -> dict:
    """Mean, min and max padded tokens and padding ratio over seeds, with the seeds' real tokens (all equal here)."""
    ratios = [p / r for p, r in values]
    return {
        "padded_mean": round(statistics.fmean(p for p, _ in values), 1),
        "ratio_mean": round(statistics.fmean(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
    }


def measure(rows: list[tuple[int, int]], batch_size: int, accumulation: int, micro_batches: int, seed: int, seeds: int) -> dict:
    """Padded and real tokens of one pair set in trl's random order, the length-grouped order and fully sorted."""
    import torch
    from accelerate.data_loader import SeedableRandomSampler
    from transformers.trainer_pt_utils import LengthGroupedSampler

    widths = [max(r) for r in rows]
    needed = micro_batches * batch_size

    def random_order(s: int) -> list[int]:
        sampler = SeedableRandomSampler(range(len(rows)), data_seed=s)

        def epoch_pass(epoch):
            sampler.set_epoch(epoch)
            return iter(sampler)

        return training_order(epoch_pass, len(rows), needed)

    def grouped_order(s: int) -> list[int]:
        # Like the Trainer: groups of one optimiser step (micro-batch x accumulation).
        sampler = LengthGroupedSampler(batch_size * accumulation, lengths=widths, generator=torch.Generator().manual_seed(s))
        return training_order(lambda epoch: iter(sampler), len(rows), needed)

    by_order = {}
    for name, make in (("random", random_order), ("grouped", grouped_order)):
        per_seed = [padded_and_real(make(s), rows, batch_size) for s in range(seed, seed + seeds)]
        padded, real = per_seed[0]
        by_order[name] = {"padded": padded, "real": real, "ratio": round(padded / real, 3), "over_seeds": summary(per_seed)}
    ranked = sorted(range(len(rows)), key=lambda i: widths[i])
    padded, real = padded_and_real(training_order(lambda epoch: ranked, len(rows), needed), rows, batch_size)
    by_order["sorted"] = {"padded": padded, "real": real, "ratio": round(padded / real, 3)}
    by_order["reduction"] = round(by_order["random"]["over_seeds"]["padded_mean"] / by_order["grouped"]["over_seeds"]["padded_mean"], 3)
    by_order["reduction_at_seed"] = round(by_order["random"]["padded"] / by_order["grouped"]["padded"], 3)
    # MODPO's reference pass: trl's precompute, one pass in dataset order; before, the seeded pair order, now the
    # pairs sorted by width (plugins/modpo/trainer.py), i.e. the "sorted" batches above.
    before, real = padded_and_real(list(range(len(rows))), rows, batch_size)
    after, _ = padded_and_real(ranked, rows, batch_size)
    by_order["reference_pass"] = {"padded_before": before, "padded_after": after, "real": real,
                                  "ratio_before": round(before / real, 3), "ratio_after": round(after / real, 3),
                                  "reduction": round(before / after, 3)}
    return by_order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["hh", "summarize"], help="built-in tasks (mobench.tasks.NAME)")
    parser.add_argument("--scale", default="tiny", help="the task scale and the DpoBudget preset")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (trl's data_seed)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds from --seed for the mean, min and max")
    args = parser.parse_args()

    from mobench.models import load_tokenizer
    from mobench.training import DpoBudget, expert_pairs, pair_lengths, truncate_prompts

    budget = DpoBudget.preset(args.scale)
    accumulation = int(budget.gradient_accumulation_steps)
    micro_batches = int(budget.steps) * accumulation
    batch_size = int(budget.batch_size)
    sets, totals = [], {"random": [0, 0], "grouped": [0, 0]}
    for name in args.tasks:
        task = importlib.import_module(f"mobench.tasks.{name}").TASK
        tok = load_tokenizer(task.config(args.scale).policy)
        for objective, pairs in task.training_pairs(args.scale).items():
            used = truncate_prompts(expert_pairs(objective, pairs, budget), tok, int(budget.max_length))
            rows = pair_lengths(used, tok, int(budget.max_length))
            widths = sorted(max(r) for r in rows)
            result = measure(rows, batch_size, accumulation, micro_batches, args.seed, args.seeds)
            for order in totals:
                totals[order][0] += result[order]["padded"]
                totals[order][1] += result[order]["real"]
            sets.append({"task": name, "objective": objective, "pairs": len(used),
                         "median_width": statistics.median(widths), "max_width": widths[-1], **result})
    print(json.dumps({
        "bench": "dpo_padding",
        "scale": args.scale,
        "budget": {"steps": budget.steps, "batch_size": budget.batch_size, "max_length": budget.max_length,
                   "n_pairs": budget.n_pairs, "gradient_accumulation_steps": budget.gradient_accumulation_steps},
        "seed": args.seed, "seeds": args.seeds,
        "pair_sets": sets,
        "total_at_seed": {order: {"padded": p, "real": r, "ratio": round(p / r, 3)} for order, (p, r) in totals.items()},
        "total_reduction_at_seed": round(totals["random"][0] / totals["grouped"][0], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
