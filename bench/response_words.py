"""Mean words a response per grid point (± standard error over prompts), for each run of a task in a results store.

Reads only the stored responses (``generations.jsonl``): words are the response split on whitespace, so the figure
is model-free and comparable across methods whatever their tokenizer. It is how the README's tables of response
length per grid point were made (e.g. MAGE's brevity corner against its ablations on summarize). Prints one JSON
object: ``{method: {"run": run_id, "points": {preference_key: {"n", "mean", "se"}}}}``; ``--markdown`` prints a
table instead, grid points sorted by key. A method with several runs in the store is read from its newest (the README's
stores hold one run a method). Example:
    python bench/response_words.py --task summarize --results /work/runs/results --methods mage,mage-implicit --markdown
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence


def words_per_point(generations: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per preference key: n responses, their mean word count and its standard error (sample sd / sqrt n; 0 at n = 1)."""
    counts: dict[str, list[int]] = {}
    for g in generations:
        counts.setdefault(str(g["preference_key"]), []).append(len(str(g.get("response", "")).split()))
    out = {}
    for key in sorted(counts):
        v = counts[key]
        n = len(v)
        mean = sum(v) / n
        se = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1) / n) if n > 1 else 0.0
        out[key] = {"n": n, "mean": mean, "se": se}
    return out


def collect(results: str | Path, task: str, methods: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Each method's newest run (by its manifest's start stamp) with stored responses, and its words per point."""
    from mobench.store import Store

    best: dict[str, tuple[str, Any]] = {}
    for run in Store(results).runs(task):
        method = run.path.parent.name
        if methods and method not in methods:
            continue
        if not run.generations_path.exists():
            continue
        stamp = str(run.read_manifest().get("started_at") or "")
        if method not in best or stamp > best[method][0]:
            best[method] = (stamp, run)
    order = list(methods) if methods else sorted(best)
    return {m: {"run": best[m][1].run_id, "points": words_per_point(best[m][1].generations())} for m in order if m in best}


def markdown(table: dict[str, dict[str, Any]]) -> str:
    keys = sorted({k for v in table.values() for k in v["points"]})
    lines = ["| method | run | " + " | ".join(f"w = {k}" for k in keys) + " |", "|---|---|" + "---:|" * len(keys)]
    for method, v in table.items():
        cells = [f"{v['points'][k]['mean']:.1f} ± {v['points'][k]['se']:.1f}" if k in v["points"] else "" for k in keys]
        lines.append(f"| {method} | {v['run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True)
    p.add_argument("--results", required=True, help="the results store")
    p.add_argument("--methods", default=None, help="comma-separated (default: every method with stored responses)")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    table = collect(args.results, args.task, methods)
    if not table:
        print(f"no run of task {args.task!r} with stored responses under {args.results}", file=sys.stderr)
        return 2
    print(markdown(table) if args.markdown else json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
