"""A real writer process SIGKILLed mid-write, synchronised on the store (never on sleeps or timing slack).

The writer appends grid points with ``RunDir.append_point``. A hook in the writer process pauses it at an
exact place and says so in a marker file; the test waits for the marker and SIGKILLs it there:
- between a point's generations and its row (the generations are orphans of a dead attempt), or
- half way through a generations line (the file ends in a torn line).
A second writer (another attempt) then completes the run; the reader must show every point once, with
exactly the generations of the attempt that committed it, and later lines must not be swallowed by the torn one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from mobench.store import CorruptLineWarning, Store

POINTS, PER_POINT, KILL_AT = 6, 5, 3

WRITER = r'''
import os, sys, time
from pathlib import Path
import mobench.store as store

root, attempt, mode, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
run = store.Store(root).run("t", "m", "r")
run.path.mkdir(parents=True, exist_ok=True)
original = store._append
calls = {"generations": 0}

def pause(marker):
    Path(root, marker).write_text(str(os.getpid()))
    while True:
        time.sleep(60)

def hooked(path, payload):
    if Path(path).name.startswith("generations"):
        calls["generations"] += 1
        if mode == "torn" and calls["generations"] == kill_at + 1:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.write(fd, payload[: len(payload) // 2])  # half of the point's first line
            os.fsync(fd)
            pause("paused")
        original(path, payload)
        if mode == "between" and calls["generations"] == kill_at + 1:
            pause("paused")  # generations written, row not yet
        return
    original(path, payload)

store._append = hooked
for i in range(int(sys.argv[5])):
    key = f"k{i}"
    gens = [{"preference_key": key, "attempt": attempt, "prompt_index": j, "response": f"{attempt}-{i}-{j} " + "x" * 200}
            for j in range(int(sys.argv[6]))]
    run.append_point({"preference_key": key, "attempt": attempt, "weights": [i, 0]}, gens)
print("done")
'''


def _writer(root: Path, attempt: str, mode: str) -> subprocess.Popen:
    cmd = [sys.executable, "-c", WRITER, str(root), attempt, mode, str(KILL_AT), str(POINTS), str(PER_POINT)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(marker: Path, proc: subprocess.Popen) -> None:
    while not marker.exists():  # synchronisation, not a time limit: the writer either pauses or exits
        if proc.poll() is not None:
            pytest.fail(f"the writer exited before pausing: {proc.stderr.read()}")
        time.sleep(0.02)


@pytest.mark.parametrize("mode", ["between", "torn"])
def test_a_writer_killed_mid_write_then_resumed(tmp_path, mode):
    first = _writer(tmp_path, "A", mode)
    _wait_for(tmp_path / "paused", first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    run = Store(tmp_path).run("t", "m", "r")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = run.rows()
        gens = run.generations()
    assert [r["preference_key"] for r in rows] == [f"k{i}" for i in range(KILL_AT)]  # exactly the committed points
    assert len(gens) == KILL_AT * PER_POINT and {g["attempt"] for g in gens} == {"A"}
    raw = run.generations_path.read_bytes()
    if mode == "between":
        assert raw.count(b"\n") == (KILL_AT + 1) * PER_POINT  # point k's generations are on disk: orphans
        assert not [w for w in caught if issubclass(w.category, CorruptLineWarning)]
    else:
        assert not raw.endswith(b"\n")  # a torn last line
        assert [w for w in caught if issubclass(w.category, CorruptLineWarning)]

    second = _writer(tmp_path, "B", "none")
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0 and out.strip() == "done", err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = run.rows()
        gens = run.generations()
    assert [r["preference_key"] for r in rows] == [f"k{i}" for i in range(POINTS)]  # each point once, in order
    attempt = {r["preference_key"]: r["attempt"] for r in rows}
    assert attempt == {f"k{i}": "A" if i < KILL_AT else "B" for i in range(POINTS)}
    assert len(gens) == POINTS * PER_POINT
    for g in gens:  # only the committing attempt's generations; the orphans and the torn line are gone
        assert g["attempt"] == attempt[g["preference_key"]]
        assert g["response"].startswith(f"{g['attempt']}-{g['preference_key'][1:]}-{g['prompt_index']} ")
    assert len({(g["preference_key"], g["prompt_index"]) for g in gens}) == POINTS * PER_POINT
    corrupt = [w for w in caught if issubclass(w.category, CorruptLineWarning)]
    assert len(corrupt) == (1 if mode == "torn" else 0)  # the torn line alone; B's lines start fresh
