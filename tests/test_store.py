"""Crash safety and concurrency of the results store, with real processes and a real SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

from helpers import TOY
from mobench.store import RunDir, Store


def _cmd(results, grid="11"):
    return [sys.executable, "-m", "mobench.cli", "--plugins-dir", str(TOY), "run", "--method", "letters",
            "--task", "toy", "--grid", grid, "--results", str(results)]


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "rows.jsonl").read_text().splitlines() if x.strip()]


def _check_complete(results, points=11):
    [run_path] = list((results / "toy" / "letters").iterdir())
    rows = _rows(run_path)
    keys = [r["preference_key"] for r in rows]
    assert len(keys) == len(set(keys)) == points, keys
    for r in rows:
        w1, w2 = r["weights"]
        assert r["mean"] == {"count-a": round(10 * w1), "count-b": round(10 * w2)}
    gens = RunDir(run_path).generations()
    assert len(gens) == points * 4
    assert len({(g["preference_key"], g["prompt_index"]) for g in gens}) == points * 4
    return run_path


def test_sigkill_in_the_middle_then_resume_loses_and_duplicates_nothing(tmp_path):
    env = {**os.environ, "MOBENCH_TOY_HOLD_AFTER": "3"}  # holds after 3 points until killed: no race with its end
    proc = subprocess.Popen(_cmd(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    rows_file = None
    while time.time() < deadline:
        found = list(tmp_path.glob("toy/letters/*/rows.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            rows_file = found[0]
            break
        time.sleep(0.05)
    assert rows_file is not None, "the run never wrote three rows"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _rows(rows_file.parent)
    assert len(before) == 3  # exactly the points before the hold
    again = subprocess.run(_cmd(tmp_path), env={**os.environ}, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"{11 - len(before)} grid points computed, {len(before)} already there" in again.stdout
    run_path = _check_complete(tmp_path)
    # the rows written before the kill are byte-for-byte still there, first
    assert _rows(run_path)[: len(before)] == before
    manifest = json.loads((run_path / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["resumed_at"]) == 1


def test_resume_by_run_id_uses_the_saved_grid(tmp_path):
    subprocess.run(_cmd(tmp_path, grid="5"), check=True, capture_output=True)
    [run_path] = list((tmp_path / "toy" / "letters").iterdir())
    lines = (run_path / "rows.jsonl").read_text().splitlines()
    (run_path / "rows.jsonl").write_text("\n".join(lines[:2]) + "\n")
    cmd = [sys.executable, "-m", "mobench.cli", "--plugins-dir", str(TOY), "run", "--method", "letters", "--task", "toy",
           "--results", str(tmp_path), "--resume", run_path.name]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0 and "3 grid points computed, 2 already there, 5 in the grid" in out.stdout
    missing = subprocess.run(cmd[:-1] + ["nope"], capture_output=True, text=True)
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr


def test_two_concurrent_writers_of_the_same_run_split_the_grid(tmp_path):
    import re

    env = {**os.environ, "MOBENCH_TOY_SLEEP": "0.5"}
    procs = [subprocess.Popen(_cmd(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    run_path = _check_complete(tmp_path)
    # each point was computed by exactly one of them (claims), not by both with the loser's work discarded
    computed = [int(re.search(r"(\d+) grid points computed", out).group(1)) for out, _ in outs]
    assert sum(computed) == 11 and min(computed) >= 1, outs
    assert not (run_path / "claims.json").exists()  # every claim released


def test_claims_skip_live_owners_and_take_over_dead_or_expired_ones(tmp_path):
    store = Store(tmp_path)
    store.ensure()
    run = store.run("toy", "letters", "r1")
    assert run.claim(["k1", "k2", "k3"], "A", ttl=60, limit=1) == ["k1"]
    assert run.claim(["k1", "k2", "k3"], "B", ttl=60, limit=1) == ["k2"]  # k1 is A's (this live process)
    assert run.claim(["k1", "k2", "k3"], "B", ttl=60) == ["k2", "k3"]
    assert run.append_point({"preference_key": "k1", "attempt": "A"}, [])
    assert run.claim(["k1", "k2"], "C", ttl=60) == []  # k1 done, k2 B's
    # a claim of a dead process of this machine ends at once; an expired one too
    claims = json.loads(run.claims_path.read_text())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claims["k2"]["pid"] = dead.pid
    claims["k3"]["expires"] = time.time() - 1
    run.claims_path.write_text(json.dumps(claims))
    assert run.claim(["k2", "k3"], "C", ttl=60) == ["k2", "k3"]
    run.release("C")
    assert not run.claims_path.exists()
    run.claims_path.write_text("[damaged")  # a damaged claims file holds no claim
    assert run.claim(["k2"], "D", ttl=60) == ["k2"]


def test_concurrent_appends_from_many_threads_never_interleave(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = Store(tmp_path)
    store.ensure()
    run = store.run("toy", "letters", "r1")
    big = "x" * 20000  # longer than a pipe buffer: a torn write would show

    def write(i):
        row = {"preference_key": f"k{i % 25}", "weights": [0, 1], "attempt": str(i)}
        return run.append_point(row, [{"preference_key": f"k{i % 25}", "attempt": str(i), "response": big}])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(write, range(100)))
    assert sum(results) == 25
    assert len(run.rows()) == 25 and len(run.generations()) == 25
    assert all(len(json.loads(line)["response"]) == 20000 for line in run.generations_path.read_text().splitlines())


def test_partial_last_line_from_a_killed_writer_is_isolated(tmp_path):
    store = Store(tmp_path)
    store.ensure()
    run = store.run("toy", "letters", "r1")
    run.append_point({"preference_key": "a", "attempt": "1"}, [])
    with open(run.rows_path, "ab") as fh:
        fh.write(b'{"preference_key": "b", "att')  # a writer died here
    run.append_point({"preference_key": "c", "attempt": "2"}, [])
    assert [r["preference_key"] for r in run.rows()] == ["a", "c"]


def test_run_id_changes_with_the_method_options_so_stale_rows_are_never_resumed():
    from mobench.api import Normalisation, TaskInstance
    from mobench.grid import simplex_grid
    from mobench.runner import RunConfig, run_id
    from mobench.training import DpoBudget

    task = TaskInstance(name="t", scale="tiny", policy="p", objectives=[], prompts=["a", "b"],
                        normalisation={"x": Normalisation(0.0, 1.0)}, reference_point=(0.0,))

    def options(steps):
        return DpoBudget.preset("tiny").replace({"steps": steps})

    config, grid = RunConfig(method="m", task="t"), simplex_grid(2, 3)
    assert run_id(config, grid, task, options(32)) == run_id(config, grid, task, options(32))
    assert run_id(config, grid, task, options(32)) != run_id(config, grid, task, options(4))
    assert run_id(config, grid, task, options(32)).startswith("tiny-s0-")
    # The task's decoding settings are part of the identity too.
    longer = TaskInstance(name="t", scale="tiny", policy="p", objectives=[], prompts=["a", "b"],
                          normalisation={"x": Normalisation(0.0, 1.0)}, reference_point=(0.0,),
                          generation={"max_new_tokens": 128})
    assert run_id(config, grid, task, options(32)) != run_id(config, grid, longer, options(32))


def test_the_done_key_index_reads_only_new_bytes_and_sees_other_writers(tmp_path):
    store = Store(tmp_path)
    store.ensure()
    a = store.run("toy", "letters", "r1")
    b = RunDir(a.path)  # a second writer of the same run (another process in real life)
    assert a.append_point({"preference_key": "k1", "attempt": "1"}, [])
    assert b.append_point({"preference_key": "k2", "attempt": "2"}, [])
    assert not a.append_point({"preference_key": "k2", "attempt": "3"}, [])  # b's row is seen through the index
    assert a.done_keys() == b.done_keys() == {"k1", "k2"}
    assert a._offset == a.rows_path.stat().st_size  # everything read, and only once
    # a partial last line (a writer killed mid-line) is not consumed until it is terminated
    with open(a.rows_path, "ab") as fh:
        fh.write(b'{"preference_key": "k9", "att')
    assert a.done_keys() == {"k1", "k2"} and a._offset < a.rows_path.stat().st_size
    assert a.append_point({"preference_key": "k3", "attempt": "4"}, [])
    assert a.done_keys() == {"k1", "k2", "k3"} == {r["preference_key"] for r in a.rows()}
    # a rows file replaced by a shorter one (restored from a backup) is read again from the start
    a.rows_path.write_text(json.dumps({"preference_key": "k1"}) + "\n")
    assert a.done_keys() == {"k1"}


def test_append_cost_does_not_grow_with_the_rows(tmp_path, monkeypatch):
    """The index reads each byte of rows.jsonl once: the bytes read per append stay one row's worth."""
    import builtins

    store = Store(tmp_path)
    store.ensure()
    run = store.run("toy", "letters", "r1")
    read_sizes = []
    real_open = builtins.open

    class Counting:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def read(self, n=-1):
            data = self.fh.read(n)
            read_sizes.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.fh, name)

    def counting_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        return Counting(fh) if str(path) == str(run.rows_path) and "b" in mode else fh

    for i in range(300):
        if i == 250:
            monkeypatch.setattr(builtins, "open", counting_open)
        run.append_point({"preference_key": f"k{i}", "attempt": "a", "pad": "x" * 100}, [])
    line = len(run.rows_path.read_bytes().splitlines()[-1]) + 1
    # reads of the last byte (newline check) and of the one new row since the previous append, never the file
    assert read_sizes and max(read_sizes) <= line


def test_lines_are_exact_and_files_get_the_store_mode(tmp_path):
    """One compact sorted JSON line per record, newline-terminated, no blank lines; 0666 & ~umask like every file."""
    from mobench.store import FILE_MODE, write_json_atomic

    run = Store(tmp_path).run("toy", "letters", "r1")
    assert run.append_point({"preference_key": "a", "attempt": "1"}, [{"preference_key": "a", "attempt": "1", "x": 1.5}])
    assert run.append_point({"preference_key": "b", "attempt": "1"}, [])  # no generations: nothing written for them
    assert not run.append_point({"preference_key": "a", "attempt": "2"}, [{"preference_key": "a", "attempt": "2"}])
    assert run.rows_path.read_bytes() == b'{"attempt":"1","preference_key":"a"}\n{"attempt":"1","preference_key":"b"}\n'
    assert run.generations_path.read_bytes() == b'{"attempt":"1","preference_key":"a","x":1.5}\n'
    write_json_atomic(run.manifest_path, {"p": tmp_path / "x", "nan": float("nan")})
    assert json.loads(run.manifest_path.read_text()) == {"nan": None, "p": str(tmp_path / "x")}
    for path in (run.rows_path, run.generations_path, run.manifest_path):
        assert os.stat(path).st_mode & 0o777 == FILE_MODE, path
    assert [p.name for p in run.path.iterdir() if p.name.startswith(".manifest")] == []  # no temporary left


def test_an_atomic_write_renames_within_the_folder_and_cleans_up_on_failure(tmp_path, monkeypatch):
    import pytest

    from mobench import store
    from mobench.store import write_json_atomic

    target = tmp_path / "m.json"
    target.write_text('{"old": 1}')
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(store.os, "replace", lambda a, b: renames.append((a, b)) or real_replace(a, b))
    write_json_atomic(target, {"new": 2})
    [(src, dst)] = renames
    assert os.path.dirname(src) == str(tmp_path) and os.path.basename(src).startswith(".m.json.") and dst == target

    def fail(a, b):
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(target, {"newer": 3})
    assert json.loads(target.read_text()) == {"new": 2} and sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_damaged_lines_are_skipped_one_by_one_with_their_line_number(tmp_path):
    import warnings

    from mobench.store import CorruptLineWarning, read_jsonl

    run = Store(tmp_path).run("toy", "letters", "r1")
    run.path.mkdir(parents=True)
    lines = [b'{"preference_key": "a", "v": 1}', b"", b"[1, 2]", b"3", b'{"preference_key": "x", "v"', b'{"preference_key": 5}',
             b'{"preference_key": "a", "v": 2}', b'{"preference_key": "b"}']
    run.rows_path.write_bytes(b"\n".join(lines) + b"\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_jsonl(run.rows_path) == [{"preference_key": "a", "v": 1}, {"preference_key": 5},
                                             {"preference_key": "a", "v": 2}, {"preference_key": "b"}]
        # the first row of a point wins; a row whose key is not a string is no point's row
        assert run.rows() == [{"preference_key": "a", "v": 1}, {"preference_key": "b"}]
    assert [(w.category, str(w.message)) for w in caught] == [
        (CorruptLineWarning, f"{run.rows_path}:{n}: corrupt line skipped") for n in (3, 4, 5)] * 2
    assert run.done_keys() == {"a", "b"}
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_a_one_byte_torn_line_stays_apart_and_a_replaced_rows_file_is_reread(tmp_path):
    run = Store(tmp_path).run("toy", "letters", "r1")
    run.path.mkdir(parents=True)
    run.rows_path.write_bytes(b"{")  # a writer killed after its first byte
    assert run.append_point({"preference_key": "a", "attempt": "1"}, [])
    assert run.rows_path.read_bytes() == b'{\n{"attempt":"1","preference_key":"a"}\n'
    assert run.done_keys() == {"a"}
    # replaced (a new file, a new inode) by a longer one with other keys: the index starts over
    new = run.path / "rows.new"
    new.write_text("".join(json.dumps({"preference_key": k, "pad": "x" * 50}) + "\n" for k in ("p", "q")))
    os.replace(new, run.rows_path)
    assert run.done_keys() == {"p", "q"}


def test_generations_match_their_row_by_point_and_attempt_even_when_fields_are_damaged(tmp_path):
    run = Store(tmp_path).run("toy", "letters", "r1")
    row = {"preference_key": "a", "attempt": {"b": 1, "a": [2]}}
    gens = [{"preference_key": "a", "attempt": {"a": [2], "b": 1}, "i": 0},  # same attempt, keys in another order
            {"preference_key": "a", "attempt": "{'b': 1, 'a': [2]}", "i": 1},  # text of another attempt
            {"preference_key": ["a"], "attempt": {"b": 1, "a": [2]}, "i": 2},  # damaged key
            {"preference_key": "a", "i": 3},  # no attempt
            {"preference_key": "a", "attempt": {"x": 1}, "i": 7}]  # another damaged attempt: not this row's
    run.append_point(row, gens)
    run.append_point({"preference_key": "b"}, [{"preference_key": "b", "i": 4}, {"preference_key": "b", "attempt": None, "i": 5},
                                               {"preference_key": "b", "attempt": 0, "i": 6}])
    assert [g["i"] for g in run.generations()] == [0, 4, 5]


def test_json_files_are_byte_identical_for_equal_content_and_indented_for_reading(tmp_path):
    """Sorted keys: equal manifests are equal files whatever the dict order (diffable, hashable); two-space indent."""
    from mobench.store import write_json_atomic

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_json_atomic(a, {"b": [1, 2], "a": {"d": float("inf"), "c": "x"}})
    write_json_atomic(b, {"a": {"c": "x", "d": None}, "b": (1, 2)})
    assert a.read_bytes() == b.read_bytes() == (
        b'{\n  "a": {\n    "c": "x",\n    "d": null\n  },\n  "b": [\n    1,\n    2\n  ]\n}')


def test_short_writes_are_continued_until_the_line_is_complete(tmp_path, monkeypatch):
    """write(2) may write fewer bytes than asked: the rest is written, in order, before the fsync."""
    from mobench import store

    real_write = os.write
    sizes = []

    def short(fd, data):
        sizes.append(len(data))
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr(store.os, "write", short)
    run = Store(tmp_path).run("toy", "letters", "r1")
    assert run.append_point({"preference_key": "a", "attempt": "1"}, [])
    line = b'{"attempt":"1","preference_key":"a"}\n'
    assert run.rows_path.read_bytes() == line
    assert sizes == list(range(len(line), 0, -7))  # each call asked for what was left
