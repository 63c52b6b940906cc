"""The artifact cache: keys (canonical, code version included), atomic rename, and the lock across processes.

Processes (forked: under mutmut the children run the mutated code too) synchronise on events, never on sleeps: a builder signals that it is inside ``build``
and waits to be released, so the test can look at the cache while a build is half done, start a second
process on the same key, or SIGKILL the builder mid-write.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
from pathlib import Path

import pytest

from mobench import artifacts
from mobench.artifacts import KEY_FILE, artifact_path, code_version, get_or_build, is_built, key_digest

KEY = {"model": "m", "seed": 3, "data": [1, 2]}
PARTS = 20


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _slow_build(out: Path, log: str, started, release) -> None:
    """Writes PARTS files, announcing itself first and waiting for ``release`` halfway."""
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    for i in range(PARTS):
        (out / f"part{i}.txt").write_text(f"{i}\n" * 1000)
        if i == PARTS // 2:
            started.set()
            release.wait()


def _make_build(log: str, started, release):
    def build(out: Path) -> None:
        _slow_build(out, log, started, release)

    return build


def _builder(cache_dir: str, log: str, started, release, result) -> None:
    os.environ["MOBENCH_CACHE"] = cache_dir
    path = get_or_build("thing", KEY, _make_build(log, started, release))
    result.put(str(path))


def _complete(path: Path) -> bool:
    return all((path / f"part{i}.txt").read_text() == f"{i}\n" * 1000 for i in range(PARTS))


def _started(event, proc) -> bool:
    """Wait until ``event`` is set, failing at once if ``proc`` died first (no time limit to tune)."""
    while not event.wait(0.05):
        if not proc.is_alive():
            pytest.fail(f"the builder exited (code {proc.exitcode}) before it started building")
    return True


def _spawn(target, *args):
    ctx = mp.get_context("fork")
    proc = ctx.Process(target=target, args=args)
    proc.start()
    return proc


def test_two_processes_build_one_key_once_and_never_see_half(cache, tmp_path):
    ctx = mp.get_context("fork")
    log = str(tmp_path / "builds.log")
    started_a, release_a, started_b, release_b = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Event()
    results = ctx.Queue()
    a = _spawn(_builder, str(cache), log, started_a, release_a, results)
    assert _started(started_a, a)
    # A is half way through its build: nothing is visible under the final name
    build = _make_build(log, started_a, release_a)  # the same code version as A's
    final = artifact_path("thing", KEY, build)
    assert not final.exists() and not is_built("thing", KEY, build)
    assert [p.name for p in final.parent.iterdir() if p.name.startswith(f".{final.name}.") and p.is_dir()]  # A's tmp folder
    b = _spawn(_builder, str(cache), log, started_b, release_b, results)
    release_a.set()
    a.join(120)
    b.join(120)
    assert a.exitcode == 0 and b.exitcode == 0
    paths = {results.get(timeout=10), results.get(timeout=10)}
    assert paths == {str(final)}
    assert len(Path(log).read_text().split()) == 1  # built once: B waited on the lock, then found it built
    assert not started_b.is_set()
    assert _complete(final)
    meta = json.loads((final / KEY_FILE).read_text())
    assert meta["kind"] == "thing" and {k: meta["key"][k] for k in KEY} == KEY and meta["key"]["code"] == code_version(build)
    assert not [p for p in final.parent.iterdir() if p.name.startswith(f".{final.name}.") and p.is_dir()]  # no tmp left


def test_a_builder_killed_mid_write_leaves_nothing_and_frees_the_lock(cache, tmp_path):
    ctx = mp.get_context("fork")
    log = str(tmp_path / "builds.log")
    started, release, results = ctx.Event(), ctx.Event(), ctx.Queue()
    a = _spawn(_builder, str(cache), log, started, release, results)
    assert _started(started, a)  # half the parts written, the lock held
    os.kill(a.pid, signal.SIGKILL)
    a.join(60)
    assert a.exitcode == -signal.SIGKILL
    build = _make_build(log, started, release)
    final = artifact_path("thing", KEY, build)
    assert not final.exists() and not is_built("thing", KEY, build)
    # the kernel released A's lock: a fresh build in this process goes through and is complete
    # (with fresh events: A died waiting on ``release``, which leaves that event's condition unusable)
    go = ctx.Event()
    go.set()
    got = get_or_build("thing", KEY, _make_build(log, ctx.Event(), go))
    assert got == final and _complete(final) and len(Path(log).read_text().split()) == 2


def test_a_failing_build_leaves_no_folder_and_a_retry_builds(cache):
    def broken(out: Path) -> None:
        (out / "half.txt").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        get_or_build("thing", KEY, broken)
    assert not artifact_path("thing", KEY, broken).exists()
    assert not [p for p in (cache / "thing").iterdir() if p.is_dir()]  # the tmp folder is gone too
    calls = []

    def good(out: Path) -> None:
        calls.append(out)
        (out / "ok.txt").write_text("ok")

    first = get_or_build("thing", KEY, good)
    again = get_or_build("thing", KEY, good)
    assert first == again and len(calls) == 1 and (first / "ok.txt").read_text() == "ok"
    assert calls[0] != first  # built in a temporary folder, then renamed into place


def test_a_folder_without_its_key_file_is_rebuilt(cache):
    def build(out: Path) -> None:
        (out / "new.txt").write_text("new")

    final = artifact_path("thing", KEY, build)
    final.mkdir(parents=True)
    (final / "stale.txt").write_text("half of an old build")
    assert not is_built("thing", KEY, build)
    assert get_or_build("thing", KEY, build) == final
    assert sorted(p.name for p in final.iterdir()) == sorted([KEY_FILE, "new.txt"])
    assert sorted(p.name for p in final.parent.iterdir()) == sorted([final.name, f".{final.name}.lock"])  # stale one gone


def test_keys_are_canonical_and_complete(cache):
    assert key_digest({"a": 1, "b": [1, 2]}) == key_digest({"b": [1, 2], "a": 1})
    assert key_digest({"a": 1}) != key_digest({"a": 2}) and key_digest({"a": 1}) != key_digest({"a": 1, "b": None})
    assert key_digest({"p": Path("/x")}) == key_digest({"p": "/x"})  # non-JSON values by their str
    assert artifact_path("a", KEY).parent.name == "a" and artifact_path("a", KEY) != artifact_path("b", KEY)
    assert artifact_path("a", KEY).name == key_digest(KEY)[:24]
    assert artifacts.cache_root() == cache and cache.is_dir()


# --- the code version: a regression in a fit cannot read the artifact the old fit built ----------------


def _fit_v1(x):
    return sum(x) / len(x)


def _fit_v2(x):
    return sum(x) / (len(x) + 1)


def _helper_a(x):
    return x + 1


def _helper_b(x):
    return x + 2


def _uses_helper(x):
    return _helper_a(x)


def test_code_version_follows_the_source_of_everything_the_build_reaches(monkeypatch):
    assert code_version(_fit_v1) == code_version(_fit_v1)
    assert code_version(_fit_v1) != code_version(_fit_v2)
    # a build closing over a fit function: the fit's source is part of the version
    build1 = (lambda fit: (lambda out: fit([1.0])))(_fit_v1)
    build2 = (lambda fit: (lambda out: fit([1.0])))(_fit_v2)
    assert code_version(build1) != code_version(build2)
    # a global the build calls, one level down: editing the helper changes the version
    before = code_version(_uses_helper)
    monkeypatch.setitem(_uses_helper.__globals__, "_helper_a", _helper_b)
    assert code_version(_uses_helper) != before
    # a function imported in the body of a project function is reached (here: the head's fit)
    from mobench import scorers

    def build(out):
        from mobench.scorers import fit_bradley_terry

        return fit_bradley_terry

    plain = code_version(build)
    monkeypatch.setattr(scorers, "fit_bradley_terry", _fit_v1)
    assert code_version(build) != plain
    # installed libraries are not hashed (their versions are in the keys)
    import json as stdlib_json

    assert code_version(lambda out: stdlib_json.dumps(out)) == code_version(lambda out: stdlib_json.dumps(out))


def test_an_edited_build_gets_a_new_folder(cache):
    p1 = get_or_build("thing", KEY, lambda out: (out / "v").write_text(str(_fit_v1([1.0, 2.0]))))
    p2 = get_or_build("thing", KEY, lambda out: (out / "v").write_text(str(_fit_v2([1.0, 2.0]))))
    assert p1 != p2 and (p1 / "v").read_text() == "1.5" and (p2 / "v").read_text() == "1.0"


def test_the_reward_heads_key_has_the_code_version_of_the_fit(cache, monkeypatch):
    """A regression in the head's fit (here: a different fit function) trains a new head, not reads the old one."""
    from mobench import scorers

    seen = []
    def fake_get_or_build(kind, key, build):
        seen.append(artifact_path(kind, key, build))
        return seen[-1]

    monkeypatch.setattr(artifacts, "get_or_build", fake_get_or_build)
    scorers.train_head("h", {"data": 1}, lambda: [])
    monkeypatch.setattr(scorers, "fit_bradley_terry", lambda pairs, seed=0: None)
    scorers.train_head("h", {"data": 1}, lambda: [])
    assert seen[0] != seen[1]


# --- the pieces of get_or_build one at a time: digest, wait flag, busy error, build log, a lost race --------


def test_key_digest_is_the_sha256_of_the_compact_sorted_json_and_names_are_its_first_24_digits(cache):
    import hashlib

    want = hashlib.sha256(b'{"a":1,"b":[1,2],"p":"/x"}').hexdigest()
    assert key_digest({"p": Path("/x"), "b": [1, 2], "a": 1}) == want
    assert artifact_path("k", {"p": Path("/x"), "b": [1, 2], "a": 1}) == cache / "k" / want[:24]
    version = code_version(_fit_v1)
    assert len(version) == 16 and int(version, 16) >= 0
    build = _make_build("unused", None, None)
    assert artifact_path("k", KEY, build).name == key_digest({**KEY, "code": code_version(build)})[:24]
    assert artifact_path("k", KEY, None) == artifact_path("k", KEY) != artifact_path("k", KEY, build)


def test_the_lock_waits_unless_told_not_to_and_then_names_the_busy_artifact(cache, monkeypatch):
    import fcntl

    flags = []
    real_flock = fcntl.flock
    monkeypatch.setattr(artifacts.fcntl, "flock", lambda fh, op: flags.append(op) or real_flock(fh, op))
    for value, blocking in ((None, True), ("", True), ("0", True), ("1", False), ("yes", False)):
        if value is None:
            monkeypatch.delenv(artifacts.NO_WAIT_ENV, raising=False)
        else:
            monkeypatch.setenv(artifacts.NO_WAIT_ENV, value)
        flags.clear()
        get_or_build("lock", {"v": value}, lambda out: None)
        assert flags == [fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_UN], value
    # another holder of the lock (a second open file: flock excludes it even within one process)
    monkeypatch.setattr(artifacts.fcntl, "flock", real_flock)
    build = lambda out: (out / "x").write_text("x")  # noqa: E731
    final = artifact_path("busy", KEY, build)
    final.parent.mkdir(parents=True)
    with open(final.parent / f".{final.name}.lock", "a+") as holder:
        real_flock(holder, fcntl.LOCK_EX)
        monkeypatch.setenv(artifacts.NO_WAIT_ENV, "1")
        with pytest.raises(artifacts.ArtifactBusy, match=rf"^the busy artifact {final.name} is being built by another process$") as err:
            get_or_build("busy", KEY, build)
        assert err.value.kind == "busy" and err.value.path == final
        real_flock(holder, fcntl.LOCK_UN)
    assert not final.exists()
    assert get_or_build("busy", KEY, build) == final and (final / "x").read_text() == "x"  # the lock was let go


def test_each_build_is_logged_once_with_its_duration(cache, monkeypatch):
    clock = iter([100.0, 102.5, 200.0, 200.25])
    monkeypatch.setattr(artifacts.time, "perf_counter", lambda: next(clock))
    build = lambda out: (out / "a").write_text("a")  # noqa: E731
    first = get_or_build("logged", {"n": 1}, build)
    assert get_or_build("logged", {"n": 1}, build) == first  # cached: not logged
    second = get_or_build("logged", {"n": 2, "p": Path("/y")}, lambda out: None)
    log = artifacts.build_log()
    assert [(e["kind"], e["artifact"], e["seconds"], e["pid"]) for e in log] == [
        ("logged", first.name, 2.5, os.getpid()), ("logged", second.name, 0.25, os.getpid())]
    assert json.loads((second / KEY_FILE).read_text())["key"]["p"] == "/y"


def test_a_build_that_loses_the_race_keeps_the_finished_copy(cache):
    """Where locks do not hold (two machines), the second builder to finish discards its own copy."""
    ours = []

    def build(out: Path) -> None:
        ours.append(out)
        (out / "who").write_text("us")
        final = artifact_path("race", KEY, build)
        final.mkdir(parents=True)  # the other machine finished first, while we were building
        (final / "who").write_text("them")
        (final / KEY_FILE).write_text("{}")

    final = get_or_build("race", KEY, build)
    assert (final / "who").read_text() == "them" and not ours[0].exists()
    assert artifacts.build_log() == []  # nothing of ours was published
    assert sorted(p.name for p in final.parent.iterdir() if p.is_dir()) == [final.name]


def test_a_build_runs_in_a_hidden_folder_beside_its_place_and_records_its_key(cache):
    seen = []

    def build(out: Path) -> None:
        seen.append(out)
        (out / "x").write_text("x")

    final = artifact_path("here", KEY, build)
    assert not is_built("here", KEY, build)
    assert get_or_build("here", KEY, build) == final
    [tmp] = seen
    assert tmp.parent == final.parent and tmp.name.startswith(f".{final.name}.") and not tmp.exists()
    assert is_built("here", KEY, build) and not is_built("here", KEY)  # the code version is part of the place
    assert json.loads((final / KEY_FILE).read_text()) == {"kind": "here", "key": {**KEY, "code": code_version(build)}}


def test_the_key_file_is_sorted_and_indented(cache):
    build = lambda out: None  # noqa: E731
    final = get_or_build("fmt", {"z": 1, "a": [Path("/p")]}, build)
    code = code_version(build)
    assert (final / KEY_FILE).read_text() == (
        '{\n  "key": {\n    "a": [\n      "/p"\n    ],\n    "code": "' + code + '",\n    "z": 1\n  },\n  "kind": "fmt"\n}')


def test_a_rename_that_keeps_failing_is_tried_four_times_then_reported(cache, monkeypatch):
    """The publish retries a failed rename three times (an unfinished folder may be in the way), then once more."""
    real_rename = os.rename
    failures = {"left": 0, "calls": 0}

    def flaky(src, dst):
        if Path(dst).parent == cache / "flaky" and not Path(dst).name.startswith("."):
            failures["calls"] += 1
            if failures["left"] > 0:
                failures["left"] -= 1
                raise OSError("rename failed")
        return real_rename(src, dst)

    monkeypatch.setattr(artifacts.os, "rename", flaky)
    build = lambda out: (out / "x").write_text("x")  # noqa: E731
    failures["left"] = 3
    final = get_or_build("flaky", {"n": 1}, build)
    assert failures["calls"] == 4 and (final / "x").read_text() == "x"
    assert [e["artifact"] for e in artifacts.build_log()] == [final.name]  # published, so logged
    failures.update(left=4, calls=0)
    with pytest.raises(OSError, match="rename failed"):
        get_or_build("flaky", {"n": 2}, build)
    assert failures["calls"] == 4 and not artifact_path("flaky", {"n": 2}, build).exists()
    assert sorted(p.name for p in (cache / "flaky").iterdir() if p.is_dir()) == [final.name]  # no temporary left


def test_a_source_file_edited_while_the_process_runs_is_refused_not_hashed(tmp_path):
    """Editing a project file mid-run made getsource read shifted lines (a key matching no code); now it is an error."""
    import importlib.util
    import os

    from mobench.api import MobenchError

    path = tmp_path / "mobench_edit_probe.py"
    original = "def helper(x):\n    return x + 1\n\n\ndef fit(x):\n    return helper(x) * 2\n"
    path.write_text(original)
    spec = importlib.util.spec_from_file_location("mobench_edit_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = code_version(module.fit)
    assert code_version(module.fit) == before
    # a line added above the functions: the loaded code is unchanged, the file is not
    path.write_text("# a comment\n" + original)
    os.utime(path, ns=(1, 10**18))
    with pytest.raises(MobenchError, match="changed on disk while this process was running"):
        code_version(module.fit)
    # the same bytes again with a new time (a touch, a checkout of the same content): hashed as before
    path.write_text(original)
    os.utime(path, ns=(1, 2 * 10**18))
    assert code_version(module.fit) == before
