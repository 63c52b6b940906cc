"""The whole tiny leaderboard, cold, one run after another, and where its time goes.

Runs ``mobench run --method M --task T`` for every method (ablations included) on every task, in order, in
one artifact cache (``--cache``, default a new temporary folder: cold), then prints one JSON object:
- ``total_seconds``: the cold wall time of all runs together; ``runs``: each run's wall seconds, exit code and,
  from its manifest, offline (prepare + training inside generate) and decoding seconds;
- ``pieces``: every artifact the runs built (the cache's build log): kind, seconds and the run that built it,
  so the cost of each shared piece is seen once, where it was first built, whichever run built it.

The measurement can span sessions. Every run is logged as it starts and as it ends (``--log``, one JSON line
each, default ``leaderboard-time.jsonl`` beside the results store); ``--resume`` skips the runs the log already
has finished with exit code 0 on this cache. A run killed mid-way (a session ending) leaves a start line with
no end: its finished pieces stay in the cache and the rerun reuses them, so the total counts, for that run, the
time from its start to its last finished piece (the work the rerun did not redo) and the rerun's wall. The
total is then still the cold cost, less the killed runs' unfinished work, which a cold run would not have done
twice either; ``interrupted`` lists those runs.

    python bench/leaderboard_time.py --results /tmp/lb/results          # all built-in methods, hh and summarize
    python bench/leaderboard_time.py --tasks hh --methods rewarded-soups,logit-ensemble
    python bench/leaderboard_time.py --cache ~/.cache/lb-cold --results /tmp/lb/results --resume   # next session

Run it on an idle machine: it is the measurement behind "the whole tiny leaderboard in N minutes". A cache
that held pieces before the first run is not cold: the report's ``cold`` is false when the build log has
builds older than the log's first run. Whether the machine was idle is measured too (Linux): each end line has
the run's own CPU seconds and the CPU seconds the rest of the machine used meanwhile (``/proc/stat``'s busy time
less the run's), as a share of the machine's capacity over the run; the report lists the runs where others took
more than ``BUSY_SHARE`` of it (``not_idle``: their walls are not idle-machine figures; drop them and rerun).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Cheap methods first, so pieces they build (DPO experts) are timed once and reused by the rest.
DEFAULT_METHODS = ("rewarded-soups", "logit-ensemble", "react", "map", "merge-lite", "morlhf", "modpo",
                   "mage", "mage-implicit", "mage-explicit", "mage-ensemble", "mage-refbase")


#: Others' share of the machine's CPU capacity over a run above which the run is listed as not idle.
BUSY_SHARE = 0.1


def busy_cpu_seconds() -> float | None:
    """CPU seconds this machine has spent busy since boot, all cores together (``/proc/stat``); None off Linux."""
    try:
        with open("/proc/stat") as fh:
            fields = [float(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait is busy
    busy = sum(fields[:3]) + sum(fields[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished (waited-for) children and their descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def idle_check(busy_before: float | None, busy_after: float | None, own_cpu: float, wall: float) -> dict:
    """The run's CPU seconds and what the rest of the machine used while it ran (None where not measurable)."""
    out = {"cpu_seconds": round(own_cpu, 1)}
    if busy_before is None or busy_after is None or wall <= 0:
        return {**out, "other_cpu_seconds": None, "other_cpu_share": None}
    other = max(0.0, busy_after - busy_before - own_cpu)
    return {**out, "other_cpu_seconds": round(other, 1), "other_cpu_share": round(other / (wall * (os.cpu_count() or 1)), 3)}


def registered_methods() -> list[str]:
    from mobench.plugins import get_plugin_manager

    names = set(get_plugin_manager().registry.methods)
    ordered = [m for m in DEFAULT_METHODS if m in names]
    return ordered + sorted(names - set(ordered))


def pieces(cache: Path) -> list[dict]:
    """Every artifact built in ``cache``, from its build log: kind, folder, seconds, when it finished, the pid."""
    return [{"kind": b.get("kind"), "folder": b.get("artifact"), "seconds": b.get("seconds"),
             "finished_at": b.get("finished_at"), "pid": b.get("pid")} for b in jsonl(cache / "builds.jsonl")]


def jsonl(path: Path) -> list[dict]:
    """The JSON lines of ``path`` (none if it is missing; a torn last line is skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def read_log(path: Path, cache: Path) -> list[dict]:
    """The log's lines for this cache, in order."""
    return [rec for rec in jsonl(path) if rec.get("cache") == str(cache)]


def summarise(log: list[dict], built: list[dict]) -> dict:
    """Runs, killed runs and the cold total from the log's start/end lines and the cache's build log.

    A run that finished with exit code 0 counts its wall; a run with a start line and no end line (killed) or a
    failed one, the time from its start to the last piece its process finished (0 without one): that work is
    cached and the rerun skips it. Failed runs are listed with the killed ones (``interrupted``, with their rc).
    """
    ends = {rec["pid"]: rec for rec in log if rec.get("event") == "end"}
    runs, interrupted = [], []
    for rec in log:
        if rec.get("event") != "start":
            continue
        end = ends.get(rec["pid"])
        if end is not None and end.get("rc") == 0:
            runs.append({k: v for k, v in end.items() if k not in ("event", "cache")})
            continue
        mine = [b["finished_at"] for b in built if b.get("pid") == rec["pid"] and b.get("finished_at")]
        kept = round(max(mine) - rec["started_at"], 1) if mine else 0.0
        interrupted.append({"task": rec["task"], "method": rec["method"], "pid": rec["pid"],
                            "rc": end.get("rc") if end else None, "started_at": rec["started_at"],
                            "kept_seconds": max(kept, 0.0), "pieces_kept": sum(1 for b in built if b.get("pid") == rec["pid"])})
    by_pid = {r["pid"]: f"{r['task']}/{r['method']}" for r in runs + interrupted}
    pieces_out = [{**{k: v for k, v in b.items() if k != "pid"}, "built_by": by_pid.get(b.get("pid"))} for b in built]
    by_kind: dict[str, float] = {}
    for b in built:
        by_kind[b["kind"]] = round(by_kind.get(b["kind"], 0.0) + float(b["seconds"] or 0), 1)
    first = min((rec["started_at"] for rec in log if rec.get("event") == "start"), default=None)
    cold = first is not None and all((b.get("finished_at") or first) >= first for b in built)
    total = sum(r["wall_seconds"] for r in runs) + sum(i["kept_seconds"] for i in interrupted)
    not_idle = [{"task": r["task"], "method": r["method"], "pid": r["pid"], "other_cpu_share": r["other_cpu_share"]}
                for r in runs if (r.get("other_cpu_share") or 0) > BUSY_SHARE]
    return {"cold": cold, "total_seconds": round(total, 1), "runs": runs, "interrupted": interrupted,
            "not_idle": not_idle, "pieces_seconds_by_kind": by_kind, "pieces": pieces_out}


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
    parser.add_argument("--log", default=None, help="the runs' start/end lines (default: leaderboard-time.jsonl beside --results)")
    parser.add_argument("--resume", action="store_true", help="skip the runs the log has finished with exit code 0 on this cache")
    parser.add_argument("--plugins-dir", default=None, help="passed to every mobench run (third-party methods)")
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--limit", type=int, default=None, help="first N prompts only (a smoke test, not a result)")
    args = parser.parse_args()
    if args.resume and not args.cache:
        parser.error("--resume needs --cache (a fresh temporary cache has nothing to resume)")

    methods = args.methods.split(",") if args.methods else registered_methods()
    results = Path(args.results)
    cache = Path(args.cache).expanduser().resolve() if args.cache else Path(tempfile.mkdtemp(prefix="mobench-cold-"))
    log_path = Path(args.log) if args.log else results.parent / "leaderboard-time.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["task"], r["method"]) for r in summarise(read_log(log_path, cache), [])["runs"]} if args.resume else set()
    env = {**os.environ, "MOBENCH_CACHE": str(cache)}
    plugins = ["--plugins-dir", args.plugins_dir] if args.plugins_dir else []

    def write(rec: dict) -> None:
        with open(log_path, "a") as fh:
            fh.write(json.dumps({**rec, "cache": str(cache)}) + "\n")

    for task in args.tasks.split(","):
        for method in methods:
            if (task, method) in done:
                print(json.dumps({"task": task, "method": method, "skipped": "finished in the log"}), file=sys.stderr, flush=True)
                continue
            out = results.parent / f"run-{task}-{method}.log"
            with open(out, "w") as fh:
                busy0, cpu0 = busy_cpu_seconds(), children_cpu_seconds()
                t0, started_at = time.perf_counter(), time.time()
                proc = subprocess.Popen([sys.executable, "-c", "from mobench.cli import entry; entry()", *plugins, "run",
                                         "--method", method, "--task", task, "--scale", args.scale, "--results", str(results),
                                         *(["--limit", str(args.limit)] if args.limit else [])], stdout=fh, stderr=fh, env=env)
                write({"event": "start", "task": task, "method": method, "pid": proc.pid, "started_at": started_at})
                rc = proc.wait()
                wall = time.perf_counter() - t0
                idle = idle_check(busy0, busy_cpu_seconds(), children_cpu_seconds() - cpu0, wall)
            rec = {"task": task, "method": method, "pid": proc.pid, "rc": rc, "started_at": started_at,
                   "wall_seconds": round(wall, 1), **idle, "log": str(out), **manifest_times(results, task, method)}
            if (idle["other_cpu_share"] or 0) > BUSY_SHARE:
                print(f"warning: {task}/{method} shared the machine (others used {idle['other_cpu_share']:.0%} of its CPU "
                      "meanwhile): its wall is not an idle-machine figure", file=sys.stderr, flush=True)
            write({"event": "end", **rec})
            print(json.dumps(rec), file=sys.stderr, flush=True)
    report = summarise(read_log(log_path, cache), pieces(cache))
    print(json.dumps({"bench": "leaderboard_time", "scale": args.scale, "cache": str(cache), "log": str(log_path), **report},
                     indent=2))


if __name__ == "__main__":
    main()
