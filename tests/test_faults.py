"""Fault injection: every bad input is one line and an exit code, never a traceback, and leaves the store as it was.

Each case runs the real command line (a subprocess) against a copy of a store holding one complete toy
run, and compares a checksum of every file under the store (hidden ones included) before and after.
Then: failed and interrupted runs say so in their manifest; damaged manifests and rows are left out
with a warning; a read-only store; seeded random SIGKILLs, synchronised on the store, after which the
resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TOY, mobench

FAULTS = Path(__file__).resolve().parent / "toy_faults"
TOYDIR, FAULTDIR = str(TOY), str(FAULTS)


def checksums(root: Path) -> dict[str, str]:
    """Every file and folder under root (hidden ones too) -> sha256 of its bytes ('dir' for folders)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def error_lines(stderr: str) -> list[str]:
    """stderr without the progress log (rich log lines start with a timestamp '[' or continue indented)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith((" ", "["))]


def assert_one_line(proc, code: int, fragment: str | None = None) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    if fragment is not None:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A store with one complete toy run (letters, 3 points), made once and copied per test."""
    root = tmp_path_factory.mktemp("template") / "store"
    proc = mobench("--plugins-dir", TOYDIR, "run", "--method", "letters", "--task", "toy", "--results", str(root))
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture
def store(template, tmp_path) -> Path:
    root = tmp_path / "store"
    shutil.copytree(template, root)
    return root


def _run_id(store: Path) -> str:
    [run] = list((store / "toy" / "letters").iterdir())
    return run.name


LONG = "x" * 60_000

# (case id, plugins dir, arguments (RESULTS and TMP are filled in), exit code, fragment of the one error line)
CASES = [
    ("unknown option", TOYDIR, ["run", "-m", "letters", "-t", "toy", "-o", "bogus=1"], 2, "no option 'bogus'"),
    ("option without key", TOYDIR, ["run", "-m", "letters", "-t", "toy", "-o", "=5"], 2, "KEY=VALUE"),
    ("option bad value", TOYDIR, ["run", "-m", "letters", "-t", "toy", "-o", "unit=ten"], 2, "unit"),
    ("huge option value", TOYDIR, ["run", "-m", "letters", "-t", "toy", "-o", f"unit={LONG}"], 2, "unit"),
    ("markup method", TOYDIR, ["run", "-m", "[/x]", "-t", "toy"], 2, "unknown method '[/x]'"),
    ("markup task", TOYDIR, ["run", "-m", "letters", "-t", "[bold]x[/]"], 2, "unknown task '[bold]x[/]'"),
    ("markup resume", TOYDIR, ["run", "-m", "letters", "-t", "toy", "--resume", "[/]"], 2, "--resume takes a run id"),
    ("resume absolute path", TOYDIR, ["run", "-m", "letters", "-t", "toy", "--resume", "TMP/other/run"], 2, "--resume takes a run id"),
    ("resume dotdot", TOYDIR, ["run", "-m", "letters", "-t", "toy", "--resume", ".."], 2, "--resume takes a run id"),
    ("resume unknown", TOYDIR, ["run", "-m", "letters", "-t", "toy", "--resume", "tiny-s0-00000000"], 2, "no run 'tiny-s0-00000000'"),
    ("resume with grid", TOYDIR, ["run", "-m", "letters", "-t", "toy", "--resume", "RUNID", "--grid", "5"], 2, "drop --grid"),
    ("resume with option", TOYDIR, ["run", "-m", "letters", "-t", "toy", "--resume", "RUNID", "-o", "unit=3"], 2, "drop -o"),
    ("nan weight", TOYDIR, ["run", "-m", "letters", "-t", "toy", "--weights", "nan,0.5"], 2, "[nan, 0.5] has a non-finite weight"),
    ("empty weights", TOYDIR, ["run", "-m", "letters", "-t", "toy", "--weights", ""], 2, "--weights is empty"),
    ("grid beside weights", TOYDIR, ["run", "-m", "letters", "-t", "toy", "--grid", "3", "--weights", "0.5,0.5"], 2, "contradict"),
    ("grid too large", TOYDIR, ["run", "-m", "letters", "-t", "toy", "--grid", "1000000"], 2, "more than the 20,000"),
    ("weights not numbers", TOYDIR, ["run", "-m", "letters", "-t", "toy", "--weights", "a,b"], 2, "not a comma-separated list"),
    ("negative seed", TOYDIR, ["run", "-m", "letters", "-t", "toy", "--seed", "-1"], 2, "--seed"),
    ("limit zero", TOYDIR, ["run", "-m", "letters", "-t", "toy", "--limit", "0"], 2, "--limit must be at least 1"),
    ("grid not a number", TOYDIR, ["run", "-m", "letters", "-t", "toy", "--grid", "three"], 2, "three"),
    ("plot unsupported format", TOYDIR, ["plot", "-t", "toy", "--out", "TMP/p.txt"], 2, "'.txt'"),
    ("plot no extension", TOYDIR, ["plot", "-t", "toy", "--out", "TMP/pareto"], 2, "no extension"),
    ("plot into a folder", TOYDIR, ["plot", "-t", "toy", "--out", "TMP"], 2, "is a folder"),
    ("plot under a file", TOYDIR, ["plot", "-t", "toy", "--out", "TMP/afile/p.png"], 2, "afile"),
    ("report onto a file", TOYDIR, ["report", "-t", "toy", "--out", "TMP/afile"], 2, "is a file"),
    ("resamples zero", TOYDIR, ["leaderboard", "-t", "toy", "--resamples", "0"], 2, "--resamples must be at least 1"),
    ("resamples too many", TOYDIR, ["leaderboard", "-t", "toy", "--resamples", "100000000"], 2, "GiB"),
    ("unknown calibration", TOYDIR, ["leaderboard", "-t", "toy", "--calibration", "zzzz"], 2, "--calibration 'zzzz' matches 0"),
    ("leaderboard other task", TOYDIR, ["leaderboard", "-t", "good"], 2, "unknown task 'good'"),
    ("reference point of 3 for 2 objectives", FAULTDIR, ["run", "-m", "good", "-t", "bad-ref"], 2, "reference point"),
    ("normalisation of other objectives", FAULTDIR, ["run", "-m", "good", "-t", "bad-norm"], 2, "normalisation does not match"),
    ("dollar in an objective name", FAULTDIR, ["run", "-m", "good", "-t", "dollar"], 2, "breaks the rule"),
    ("html in an objective name", FAULTDIR, ["run", "-m", "good", "-t", "html"], 2, "breaks the rule"),
    ("no toy task here", FAULTDIR, ["leaderboard", "-t", "toy"], 2, "unknown task 'toy'"),
]


@pytest.mark.parametrize("case,plugins,args,code,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_the_store_unchanged(store, tmp_path, case, plugins, args, code, fragment):
    (tmp_path / "afile").write_text("not a folder")
    args = [a.replace("TMP", str(tmp_path)).replace("RUNID", _run_id(store)) for a in args]
    before = checksums(store)
    proc = mobench("--plugins-dir", plugins, *args, "--results", str(store))
    line = assert_one_line(proc, code, fragment)
    assert len(line) <= 1100  # a 60,000-character value is never echoed back whole
    assert checksums(store) == before
    assert (tmp_path / "afile").read_text() == "not a folder"


@pytest.mark.parametrize("content", ["{}", "[1,2]", '{"run_id": ', '{"run_id": "x", "method": 3}'])
def test_a_damaged_manifest_is_never_resumed_into(store, content):
    run = store / "toy" / "letters" / _run_id(store)
    (run / "rows.jsonl").write_text((run / "rows.jsonl").read_text().splitlines()[0] + "\n")  # points missing
    (run / "manifest.json").write_text(content)
    before = checksums(store)
    proc = mobench("--plugins-dir", TOYDIR, "run", "-m", "letters", "-t", "toy", "--results", str(store))
    assert_one_line(proc, 2, "manifest")
    assert checksums(store) == before


def test_results_and_messages_with_markup_are_printed_as_text(tmp_path):
    weird = tmp_path / "r[/]x[bold]"
    proc = mobench("--plugins-dir", TOYDIR, "run", "-m", "letters", "-t", "toy", "--results", str(weird))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    again = mobench("--plugins-dir", TOYDIR, "run", "-m", "letters", "-t", "toy", "--results", str(weird))
    assert again.returncode == 0 and "0 grid points computed" in again.stdout, again.stderr
    # a plugin whose ImportError holds markup: every command still answers, the message printed as it is
    listed = mobench("--plugins-dir", str(FAULTS / "markup"), "list", "methods")
    assert listed.returncode == 0, listed.stderr
    [warning] = error_lines(listed.stderr)
    assert warning.startswith("warning:") and "[/gpu]" in warning and "[bold]more[/bold]" in warning


def test_a_failed_run_says_failed_with_its_reason_and_the_same_command_resumes_it(tmp_path):
    res = tmp_path / "res"
    base = ["--plugins-dir", FAULTDIR, "run", "-m", "good", "-t", "good", "--grid", "5", "--results", str(res)]
    proc = mobench(*base, env={"MOBENCH_FAULT_AT": "2"})
    assert_one_line(proc, 2, "fault injected after 2 grid points [/boom]")
    [run] = list((res / "good" / "good").iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["reason"] == "fault injected after 2 grid points [/boom]"
    assert len((run / "rows.jsonl").read_text().splitlines()) == 2
    # the leaderboard ranks its two points and says the run is not complete
    board = mobench("--plugins-dir", FAULTDIR, "leaderboard", "-t", "good", "--results", str(res), "--format", "json")
    assert board.returncode == 0, board.stderr
    data = json.loads(board.stdout)
    assert data["entries"][0]["status"] == "failed" and data["entries"][0]["points"] == 2
    assert any("no complete run" in n and "2 of 5 grid points" in n for n in data["notes"])
    again = mobench(*base)
    assert again.returncode == 0 and "3 grid points computed, 2 already there" in again.stdout, again.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and "reason" not in manifest and len(manifest["resumed_at"]) == 1


@pytest.mark.parametrize("method,task,code,fragment", [
    ("fails-prepare", "good", 1, "unexpected RuntimeError: CUDA is missing [/gpu] on this machine"),
    ("wrong-count", "good", 2, "wrong number of responses"),
    ("good", "nan-task", 2, "non-finite score"),
])
def test_a_method_or_scorer_failure_is_recorded_as_failed(tmp_path, method, task, code, fragment):
    res = tmp_path / "res"
    proc = mobench("--plugins-dir", FAULTDIR, "run", "-m", method, "-t", task, "--results", str(res))
    assert_one_line(proc, code, fragment)
    [run] = list((res / task / method).iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and fragment.split(": ")[-1] in manifest["reason"]
    # a failed run without a single point never hides anything: the leaderboard says what happened
    board = mobench("--plugins-dir", FAULTDIR, "leaderboard", "-t", task, "--results", str(res))
    assert_one_line(board, 2, "with any grid point")
    assert "failed" in board.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_an_interrupted_run_exits_130_and_says_interrupted(tmp_path, sig):
    res = tmp_path / "res"
    cmd = [sys.executable, "-m", "mobench.cli", "--plugins-dir", TOYDIR, "run", "-m", "letters", "-t", "toy",
           "--grid", "11", "--results", str(res)]
    # The run holds after its first point until signalled: the signal never races the run's end. Its SIGINT is
    # set back to the default before exec: a test session started in the background of a non-interactive shell
    # ignores SIGINT, children inherit that, and Python then never installs its KeyboardInterrupt handler.
    proc = subprocess.Popen(cmd, env={**os.environ, "MOBENCH_TOY_HOLD_AFTER": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_rows(res, 1, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    [line] = error_lines(err)
    assert line.startswith("interrupted")
    [run] = list((res / "toy" / "letters").iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "resume" in manifest["reason"]


def _wait_rows(res: Path, k: int, proc, timeout: float = 120) -> Path:
    """Block until the run's rows.jsonl holds at least k committed lines (synchronised on the store)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for rows in res.glob("toy/letters/*/rows.jsonl"):
            if rows.read_bytes().count(b"\n") >= k:
                return rows
        assert proc.poll() is None, "the run ended before writing enough rows"
        time.sleep(0.01)
    raise AssertionError(f"the run never wrote {k} rows")


def _content(res: Path):
    """What a finished toy run holds, independent of timing: rows' scores and every committed generation."""
    from mobench.store import RunDir

    [path] = list((res / "toy" / "letters").iterdir())
    run = RunDir(path)
    rows = run.rows()
    keys = [r["preference_key"] for r in rows]
    assert len(keys) == len(set(keys)), keys
    scores = {r["preference_key"]: (r["weights"], r["mean"], r["normalised"], r["n"]) for r in rows}
    gens = sorted((g["preference_key"], g["prompt_index"], g["response"], json.dumps(g["scores"], sort_keys=True))
                  for g in run.generations())
    assert len(gens) == len(set((g[0], g[1]) for g in gens))
    return path.name, scores, gens


def test_seeded_random_sigkills_then_resume_equal_an_uninterrupted_run(tmp_path):
    cmd = lambda res: [sys.executable, "-m", "mobench.cli", "--plugins-dir", TOYDIR, "run", "-m", "letters", "-t", "toy",
                       "--grid", "11", "--results", str(res)]
    clean = tmp_path / "clean"
    subprocess.run(cmd(clean), check=True, capture_output=True)
    expected = _content(clean)
    rng = random.Random(15)
    res = tmp_path / "killed"
    kills = 0
    for _ in range(3):  # three kills into one run, each after a random number of newly observed rows
        have = 0
        rows = next(iter(res.glob("toy/letters/*/rows.jsonl")), None)
        if rows is not None:
            have = rows.read_bytes().count(b"\n")
        if have >= 10:
            break
        proc = subprocess.Popen(cmd(res), env={**os.environ, "MOBENCH_TOY_SLEEP": "0.15"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_rows(res, have + rng.randint(1, 3), proc)
        time.sleep(rng.uniform(0.0, 0.15))  # a random moment within the next point: mid-generation or mid-write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 1
    # the killed run still says "running" in its manifest; the leaderboard says its process is gone
    board = mobench("--plugins-dir", TOYDIR, "leaderboard", "-t", "toy", "--results", str(res), "--format", "json")
    assert board.returncode == 0, board.stderr
    assert any("its process is gone (killed)" in note for note in json.loads(board.stdout)["notes"])
    final = subprocess.run(cmd(res), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert _content(res) == expected
    [path] = list((res / "toy" / "letters").iterdir())
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["resumed_at"]) == kills


@pytest.mark.parametrize("damage,warning", [
    ("manifest {}", "damaged manifest (no run_id)"),
    ("manifest [1,2]", "damaged manifest (a JSON list, not an object)"),
    ("manifest not json", "unreadable manifest"),
    ("manifest reference point of 3", "no finite reference point"),
    ("row weights text", "damaged row"),
    ("row mean null", "damaged row"),
])
def test_damaged_files_are_left_out_with_one_warning(store, tmp_path, damage, warning):
    # a second method's complete run, then damage one of the two
    shutil.copytree(store / "toy" / "letters", store / "toy" / "other")
    for run in (store / "toy" / "other").iterdir():
        m = json.loads((run / "manifest.json").read_text())
        m["method"] = "other"
        (run / "manifest.json").write_text(json.dumps(m))
    [run] = list((store / "toy" / "other").iterdir())
    manifest, rows = run / "manifest.json", run / "rows.jsonl"
    if damage == "manifest {}":
        manifest.write_text("{}")
    elif damage == "manifest [1,2]":
        manifest.write_text("[1,2]")
    elif damage == "manifest not json":
        manifest.write_text('{"run_id": ')
    elif damage == "manifest reference point of 3":
        m = json.loads(manifest.read_text())
        m["reference_point"] = [0, 0, 0]
        manifest.write_text(json.dumps(m))
    else:
        lines = [json.loads(x) for x in rows.read_text().splitlines()]
        if damage == "row weights text":
            lines[1]["weights"] = "0.5,0.5"
        else:
            lines[1]["mean"] = None
        rows.write_text("".join(json.dumps(x) + "\n" for x in lines))
    before = checksums(store)
    proc = mobench("--plugins-dir", TOYDIR, "leaderboard", "-t", "toy", "--results", str(store), "--format", "json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    [line] = error_lines(proc.stderr)
    assert line.startswith("warning:") and warning in line, line
    labels = [e["label"] for e in json.loads(proc.stdout)["entries"]]
    assert "letters" in labels
    if damage.startswith("row"):
        assert [e["points"] for e in json.loads(proc.stdout)["entries"] if e["label"] == "other"] == [2]
    assert checksums(store) == before


def _make_read_only(root: Path) -> str:
    """Make every file and folder under root unwritable; returns how. Root ignores permission bits, so as
    root the store is made immutable (chattr +i); elsewhere chmod a-w is enough."""
    if os.geteuid() != 0:
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        return "chmod"
    if shutil.which("chattr") is None:
        pytest.skip("running as root, where chmod does not stop writes, and chattr is not installed")
    done = subprocess.run(["chattr", "-R", "+i", str(root)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"running as root, where chmod does not stop writes, and chattr +i failed: {done.stderr.strip()}")
    return "chattr"


def _undo_read_only(root: Path, how: str) -> None:
    if how == "chattr":
        subprocess.run(["chattr", "-R", "-i", str(root)], check=True)
    else:
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def test_a_read_only_store(store):
    before = checksums(store)
    how = _make_read_only(store)
    try:
        run = lambda *extra, results=store: mobench("--plugins-dir", TOYDIR, "run", "-m", "letters", "-t", "toy",
                                                    "--results", str(results), *extra)
        # the complete run: nothing to do, nothing written, success
        done = run()
        assert done.returncode == 0 and "0 grid points computed, 3 already there" in done.stdout, done.stderr
        # a new run in it, and a new store under it: one line each
        assert_one_line(run("-o", "unit=3"), 2, "not writable")
        assert_one_line(run(results=store / "new"), 2, "not writable")
        board = mobench("--plugins-dir", TOYDIR, "leaderboard", "-t", "toy", "--results", str(store))
        assert board.returncode == 0 and "letters" in board.stdout, board.stderr
        after = checksums(store)
    finally:
        _undo_read_only(store, how)
    assert after == before


def test_store_files_are_group_readable_like_the_rows(store):
    [run] = list((store / "toy" / "letters").iterdir())
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    for path in (store / ".mobench-store", run / "manifest.json", run / "rows.jsonl", run / "generations.jsonl"):
        assert path.stat().st_mode & 0o777 == expected, path


def test_limit_beyond_the_prompts_is_capped_with_a_note(tmp_path):
    proc = mobench("--plugins-dir", TOYDIR, "run", "-m", "letters", "-t", "toy", "--limit", "1000000", "--results", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "more than the task's 4 prompts: using all 4" in " ".join(proc.stderr.split())
    [run] = list((tmp_path / "toy" / "letters").iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["n_prompts"] == 4 and manifest["config"]["limit"] is None


def test_mobench_debug_shows_the_traceback_of_an_unexpected_error(tmp_path):
    proc = mobench("--plugins-dir", FAULTDIR, "run", "-m", "fails-prepare", "-t", "good", "--results", str(tmp_path),
                   env={"MOBENCH_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "CUDA is missing [/gpu]" in proc.stderr
