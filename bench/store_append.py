"""Cost of one grid point's append to the store at row 10 vs row 10,000, in one run; prints JSON.

Each append is what the runner does per grid point: under the run's lock, check the done keys, append
the point's generations (``--prompts`` lines) and its row, fsync both. The store keeps an index of done
keys and reads only the bytes appended since its last look, so the cost should not grow with the rows.
For contrast the bench also times the old check, a full re-read of rows.jsonl (``legacy_reread``), at
the same two sizes. Times are medians over ``--window`` appends around each size.

    python bench/store_append.py                    # 10,000 rows, 4 generations each
    python bench/store_append.py --rows 2000 --prompts 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobench.store import Store  # noqa: E402


def point(i: int, prompts: int) -> tuple[dict, list[dict]]:
    key = f"{i / 1e6:.6f},{1 - i / 1e6:.6f}"
    row = {"preference_key": key, "weights": [i / 1e6, 1 - i / 1e6], "objectives": ["a", "b"],
           "mean": {"a": 1.0, "b": 2.0}, "stderr": {"a": 0.1, "b": 0.1}, "normalised": {"a": 0.5, "b": 0.5},
           "n": prompts, "wall_seconds": 0.01, "attempt": "bench"}
    gens = [{"preference_key": key, "attempt": "bench", "prompt_index": j, "prompt": f"prompt {j}",
             "response": "a" * 40, "scores": {"a": 1.0, "b": 2.0}} for j in range(prompts)]
    return row, gens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--prompts", type=int, default=4, help="generations per grid point")
    ap.add_argument("--window", type=int, default=21, help="appends timed around each size")
    ap.add_argument("--dir", default=None, help="where to make the store (default: a temporary folder)")
    args = ap.parse_args()
    early = 10
    late = args.rows
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = Store(Path(tmp) / "store")
        store.ensure()
        run = store.run("bench", "m", "r")
        per_append: dict[int, float] = {}
        legacy: dict[str, list[float]] = {"early": [], "late": []}
        started = time.perf_counter()
        for i in range(late + args.window):
            row, gens = point(i, args.prompts)
            t0 = time.perf_counter()
            assert run.append_point(row, gens)
            per_append[i] = time.perf_counter() - t0
            where = "early" if early <= i < early + args.window else "late" if late <= i < late + args.window else None
            if where:
                t1 = time.perf_counter()
                {r["preference_key"] for r in run.rows()}  # the old check: re-read every row
                legacy[where].append(time.perf_counter() - t1)
        total = time.perf_counter() - started
        early_s = statistics.median(per_append[i] for i in range(early, early + args.window))
        late_s = statistics.median(per_append[i] for i in range(late, late + args.window))
        legacy_early, legacy_late = statistics.median(legacy["early"]), statistics.median(legacy["late"])
        print(json.dumps({
            "bench": "store_append",
            "rows": late + args.window,
            "generations_per_row": args.prompts,
            "append_ms_at_row_10": round(1e3 * early_s, 4),
            f"append_ms_at_row_{late}": round(1e3 * late_s, 4),
            "ratio_late_over_early": round(late_s / early_s, 3),
            "legacy_reread_ms_at_row_10": round(1e3 * legacy_early, 4),
            f"legacy_reread_ms_at_row_{late}": round(1e3 * legacy_late, 4),
            "legacy_ratio_late_over_early": round(legacy_late / legacy_early, 1),
            "total_seconds": round(total, 1),
            "rows_bytes": os.path.getsize(run.rows_path),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        }, indent=2))


if __name__ == "__main__":
    main()
