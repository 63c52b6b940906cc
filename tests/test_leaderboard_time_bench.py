"""bench/leaderboard_time.py on the toy plugin: every run is logged as it starts and ends, --resume skips the
finished ones, and a run killed mid-way counts the time up to its last cached piece (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TOY

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "leaderboard_time.py"


def bench(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), "--plugins-dir", str(TOY), "--tasks", "toy", "--methods", "letters",
                           "--results", str(tmp_path / "res"), "--cache", str(tmp_path / "cache"), *extra],
                          capture_output=True, text=True, timeout=600)  # a hang guard, not a speed limit


def load_bench():
    spec = importlib.util.spec_from_file_location("leaderboard_time", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_logs_each_run_and_resume_skips_the_finished(tmp_path):
    proc = bench(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["cold"] is True and report["interrupted"] == []
    (run,) = report["runs"]
    assert (run["task"], run["method"], run["rc"], run["status"]) == ("toy", "letters", 0, "complete")
    assert report["total_seconds"] == run["wall_seconds"] > 0
    log = [json.loads(line) for line in (tmp_path / "leaderboard-time.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log] == ["start", "end"] and log[0]["pid"] == log[1]["pid"] == run["pid"]
    assert {r["cache"] for r in log} == {str((tmp_path / "cache").resolve())}
    # the run's own CPU (a real process: more than nothing) and, on Linux, what the rest of the machine used meanwhile
    assert run["cpu_seconds"] > 0
    if Path("/proc/stat").is_file():
        assert run["other_cpu_seconds"] >= 0 and 0 <= run["other_cpu_share"] <= 1.5

    again = bench(tmp_path, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert '"skipped": "finished in the log"' in again.stderr
    assert json.loads(again.stdout)["runs"] == report["runs"]  # not run twice, not counted twice
    assert len((tmp_path / "leaderboard-time.jsonl").read_text().splitlines()) == 2


def test_a_killed_run_counts_up_to_its_last_cached_piece():
    lt = load_bench()
    log = [{"event": "start", "task": "hh", "method": "rs", "pid": 11, "started_at": 100.0},
           {"event": "end", "task": "hh", "method": "rs", "pid": 11, "rc": 0, "started_at": 100.0, "wall_seconds": 50.0},
           {"event": "start", "task": "hh", "method": "mage", "pid": 12, "started_at": 200.0},  # killed
           {"event": "start", "task": "hh", "method": "mage", "pid": 13, "started_at": 400.0},
           {"event": "end", "task": "hh", "method": "mage", "pid": 13, "rc": 0, "started_at": 400.0, "wall_seconds": 30.0}]
    built = [{"kind": "dpo-experts", "folder": "a", "seconds": 40.0, "finished_at": 145.0, "pid": 11},
             {"kind": "rl-policies", "folder": "b", "seconds": 60.0, "finished_at": 270.0, "pid": 12},
             {"kind": "value-models", "folder": "c", "seconds": 20.0, "finished_at": 290.0, "pid": 12}]
    report = lt.summarise(log, built)
    (killed,) = report["interrupted"]
    assert (killed["method"], killed["kept_seconds"], killed["pieces_kept"]) == ("mage", 90.0, 2)
    assert report["total_seconds"] == 50.0 + 30.0 + 90.0
    assert [p["built_by"] for p in report["pieces"]] == ["hh/rs", "hh/mage", "hh/mage"]
    assert report["pieces_seconds_by_kind"] == {"dpo-experts": 40.0, "rl-policies": 60.0, "value-models": 20.0}
    assert report["cold"] is True
    failed = lt.summarise(log + [{"event": "start", "task": "hh", "method": "map", "pid": 14, "started_at": 500.0},
                                 {"event": "end", "task": "hh", "method": "map", "pid": 14, "rc": 1, "started_at": 500.0,
                                  "wall_seconds": 70.0}], built)
    assert failed["total_seconds"] == report["total_seconds"]  # a failed run's wall is not cold cost; it is listed
    assert [(i["method"], i["rc"]) for i in failed["interrupted"]] == [("mage", None), ("map", 1)]
    warm = lt.summarise(log, [{"kind": "models", "folder": "m", "seconds": 9.0, "finished_at": 50.0, "pid": 1}] + built)
    assert warm["cold"] is False  # a piece older than the first run: the cache was not empty


def test_resume_needs_a_named_cache(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--results", str(tmp_path / "res"), "--resume"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "--resume needs --cache" in proc.stderr


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="the idle check reads Linux's /proc/stat")
def test_a_run_beside_a_busy_process_is_flagged_not_idle(tmp_path):
    # one core spinning for the whole run: at least half of a 2-core machine's capacity (a quarter of 4) goes to
    # someone else, well above the 10% the bench tolerates
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        proc = bench(tmp_path)
    finally:
        burner.kill()
        burner.wait()
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    (run,) = report["runs"]
    cores = os.cpu_count() or 1
    assert run["other_cpu_share"] > min(0.9 / cores, 0.2), run
    assert [(r["method"], r["pid"]) for r in report["not_idle"]] == [("letters", run["pid"])]
    assert "shared the machine" in proc.stderr


def test_not_idle_lists_the_runs_others_shared():
    lt = load_bench()
    log = [{"event": "start", "task": "t", "method": m, "pid": pid, "started_at": 10.0 * pid} for m, pid in (("a", 1), ("b", 2), ("c", 3))]
    log += [{"event": "end", "task": "t", "method": "a", "pid": 1, "rc": 0, "started_at": 10.0, "wall_seconds": 5.0, "other_cpu_share": 0.05},
            {"event": "end", "task": "t", "method": "b", "pid": 2, "rc": 0, "started_at": 20.0, "wall_seconds": 5.0, "other_cpu_share": 0.45},
            {"event": "end", "task": "t", "method": "c", "pid": 3, "rc": 0, "started_at": 30.0, "wall_seconds": 5.0}]  # older log line
    assert [r["method"] for r in lt.summarise(log, [])["not_idle"]] == ["b"]
    assert lt.idle_check(100.0, 190.0, 60.0, 20.0)["other_cpu_seconds"] == 30.0
    assert lt.idle_check(None, 190.0, 60.0, 20.0)["other_cpu_share"] is None
