"""The whole tiny leaderboard, cold, one run after another, and where its time goes.

Runs ``mobench run --method M --task T`` for every method (ablations included) on every task, in order, in
a fresh artifact cache (``--cache``, default a new temporary folder: cold), then prints one JSON object:
- ``total_seconds``: the wall time of all runs together; ``runs``: each run's wall seconds, exit code and,
  from its manifest, offline (prepare + training inside generate) and decoding seconds;
- ``pieces``: every artifact the runs built, by kind (DPO experts, RL policies, value models, heads...),
  with the seconds its training record gives, so the cost of each shared piece is seen once, where it was
  first built, whichever run built it.

    python bench/leaderboard_time.py --results /tmp/lb/results          # all built-in methods, hh and summarize
    python bench/leaderboard_time.py --tasks hh --methods rewarded-soups,logit-ensemble

Run it on an idle machine: it is the measurement behind "the whole tiny leaderboard in N minutes".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Cheap methods first, so pieces they build (DPO experts) are timed once and reused by the rest.
DEFAULT_METHODS = ("rewarded-soups", "logit-ensemble", "react", "map", "merge-lite", "morlhf", "modpo",
                   "mage", "mage-implicit", "mage-explicit", "mage-ensemble", "mage-refbase")


def registered_methods() -> list[str]:
    from mobench.plugins import get_plugin_manager

    names = set(get_plugin_manager().registry.methods)
    ordered = [m for m in DEFAULT_METHODS if m in names]
    return ordered + sorted(names - set(ordered))


def pieces(cache: Path) -> list[dict]:
    """Every built artifact with a training record: kind, folder, seconds."""
    out = []
    for record in sorted(cache.glob("*/*/mobench-train.json")):
        try:
            info = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        seconds = info.get("train_seconds", info.get("seconds"))
        out.append({"kind": record.parent.parent.name, "folder": record.parent.name,
                    "seconds": seconds, "steps": info.get("steps")})
    return out


def manifest_times(results: Path, task: str, method: str) -> dict:
    """Offline and decoding seconds of the newest run of ``method`` on ``task`` in the store."""
    from mobench.store import Store

    if not results.is_dir():
        return {}
    runs = [r for r in Store(results).runs(task) if r.path.parent.name == method]
    if not runs:
        return {}
    run = max(runs, key=lambda r: r.manifest_path.stat().st_mtime)
    manifest, rows = run.read_manifest(), run.rows()
    offline = float(manifest.get("prepare_seconds") or 0) + sum(float(r.get("offline_seconds") or 0) for r in rows)
    decode = sum(float(r.get("wall_seconds") or 0) - float(r.get("offline_seconds") or 0) for r in rows)
    return {"run_id": manifest.get("run_id"), "status": manifest.get("status"),
            "offline_seconds": round(offline, 1), "decode_seconds": round(decode, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="hh,summarize")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    parser.add_argument("--results", required=True)
    parser.add_argument("--cache", default=None, help="artifact cache (default: a fresh temporary folder, cold)")
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--limit", type=int, default=None, help="first N prompts only (a smoke test, not a result)")
    args = parser.parse_args()

    methods = args.methods.split(",") if args.methods else registered_methods()
    results = Path(args.results)
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="mobench-cold-"))
    env = {**os.environ, "MOBENCH_CACHE": str(cache)}
    runs, started = [], time.perf_counter()
    for task in args.tasks.split(","):
        for method in methods:
            t0 = time.perf_counter()
            log = results.parent / f"run-{task}-{method}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as fh:
                rc = subprocess.call([sys.executable, "-c", "from mobench.cli import entry; entry()", "run", "--method", method, "--task", task,
                                      "--scale", args.scale, "--results", str(results),
                                      *(["--limit", str(args.limit)] if args.limit else [])], stdout=fh, stderr=fh, env=env)
            runs.append({"task": task, "method": method, "rc": rc, "wall_seconds": round(time.perf_counter() - t0, 1),
                         "log": str(log), **manifest_times(results, task, method)})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    built = pieces(cache)
    by_kind: dict[str, float] = {}
    for p in built:
        by_kind[p["kind"]] = round(by_kind.get(p["kind"], 0.0) + float(p["seconds"] or 0), 1)
    print(json.dumps({"bench": "leaderboard_time", "scale": args.scale, "cache": str(cache),
                      "total_seconds": round(time.perf_counter() - started, 1), "runs": runs,
                      "pieces_seconds_by_kind": by_kind, "pieces": built}, indent=2))


if __name__ == "__main__":
    main()
