"""`mobench sweep`: the matrix on submitit executors, killed and resumed, shared pieces trained once, SLURM
parameters, sharded runs, shared-file-system lock checks, and the artifact cache's write-aside publish.

The test plugin is tests/sweep/sweep_plugin.py (letters methods on the toy task, and the micro-model
`expert-switch` pair that shares real LoRA DPO experts).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mobench import artifacts, fslock, sweep as sweeping
from mobench.api import RunContext
from mobench.plugins import get_plugin_manager
from mobench.runner import RunConfig, execute
from mobench.store import Store

PLUGIN_DIR = Path(__file__).resolve().parent / "sweep"
METHODS = ("letters-shared", "letters-per-point")
GRID = 3  # the toy task's points per edge


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("MOBENCH_CACHE", str(path))
    return path


@pytest.fixture()
def registry():
    return get_plugin_manager(plugins_dir=PLUGIN_DIR).registry


def _sweep_cmd(results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mobench.cli", "--plugins-dir", str(PLUGIN_DIR), "sweep", "--methods", ",".join(METHODS),
            "--tasks", "toy", "--seeds", "0,1", "--results", str(results), *extra]


def _rows(results: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in results.glob("*/*/*/rows.jsonl"))


def _assert_every_run_complete_once(results: Path) -> None:
    """Each (method, seed) has one run folder, complete, with each grid point's row exactly once."""
    store = Store(results)
    runs = store.runs("toy")
    assert sorted((r.read_manifest()["method"], r.read_manifest()["seed"]) for r in runs) == sorted(
        (m, s) for m in METHODS for s in (0, 1))
    for run in runs:
        manifest = run.read_manifest()
        lines = [json.loads(x) for x in run.rows_path.read_text().splitlines()]
        keys = [row["preference_key"] for row in lines]
        assert len(keys) == len(set(keys)) == GRID, (run.path, keys)  # no duplicated, no lost row
        assert manifest["status"] == "complete"
        assert set(keys) == {",".join(f"{x:.6f}" for x in w) for w in manifest["grid"]}
        for row in lines:  # the letters method's scores, by hand: round(10 w_a) a's and round(10 w_b) b's
            assert row["mean"] == {"count-a": round(10 * row["weights"][0]), "count-b": round(10 * row["weights"][1])}
        gens = run.generations()
        assert len(gens) == GRID * 4 and len({(g["preference_key"], g["prompt_index"]) for g in gens}) == GRID * 4


def _builds(kind: str) -> list[str]:
    return [b["artifact"] for b in artifacts.build_log() if b["kind"] == kind]


def test_a_sweep_on_the_local_executor_killed_midway_then_rerun_completes_with_every_row_once(tmp_path, cache):
    results = tmp_path / "res"
    # every job holds after its 2nd grid point until killed: with 2 jobs at a time the store reaches >= 3 rows and
    # can never reach the last one, so the kill lands mid-sweep whatever the machine's speed
    env = {**os.environ, "MOBENCH_SWEEP_HOLD_AFTER": "2", "MOBENCH_SWEEP_BUILD_SLEEP": "0.5"}
    first = subprocess.Popen(_sweep_cmd(results, "--jobs", "2", "--shards", "2"), env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # synchronised on the store, not on time: kill once some rows exist (the holds keep the last one away)
    while _rows(results) < 3:
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the sweep, submitit's controllers and the jobs
    first.wait()
    killed_at = _rows(results)
    assert 3 <= killed_at < 2 * 2 * GRID

    env.pop("MOBENCH_SWEEP_HOLD_AFTER")
    second = subprocess.run(_sweep_cmd(results, "--jobs", "2", "--shards", "2"), env=env, capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 0, second.stderr
    assert "0 failed" in second.stdout
    _assert_every_run_complete_once(results)
    # trained exactly once over both sweeps: one codebook per seed, one policy per (seed, point) of the per-point method
    assert len(_builds("sweep-codebook")) == len(set(_builds("sweep-codebook"))) == 2
    assert len(_builds("sweep-policy")) == len(set(_builds("sweep-policy"))) == 2 * GRID
    # the sharded method's run id is the full grid's: the one `mobench run` gives without --shard
    registry = get_plugin_manager(plugins_dir=PLUGIN_DIR).registry
    plain = execute(RunConfig("letters-per-point", "toy", seed=1), registry, Store(results), RunContext(seed=1))
    assert plain.computed == 0 and plain.skipped == GRID
    assert "leaderboard: toy" in second.stdout and "letters-per-point" in second.stdout


def test_micro_model_sweep_trains_each_shared_dpo_expert_exactly_once(tmp_path, cache, smol_tokenizer):
    from mobench.models import micro_causal_lm

    policy = tmp_path / "micro"
    micro_causal_lm(smol_tokenizer, seed=0).save_pretrained(policy)
    smol_tokenizer.save_pretrained(policy)
    results = tmp_path / "res"
    cmd = [sys.executable, "-m", "mobench.cli", "--plugins-dir", str(PLUGIN_DIR), "sweep", "--methods",
           "expert-switch,expert-switch-last", "--tasks", "micro-pairs", "--seeds", "0,1", "--executor", "debug",
           "--device", "cpu", "--results", str(results)]
    proc = subprocess.run(cmd, env={**os.environ, "MOBENCH_MICRO_POLICY": str(policy)}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    experts = _builds("dpo-experts")
    assert len(experts) == len(set(experts)) == 4  # 2 objectives x 2 seeds, shared by both methods
    used = {}
    for run in Store(results).runs("micro-pairs"):
        manifest = run.read_manifest()
        assert manifest["status"] == "complete" and len(run.rows()) == 3
        used[(manifest["method"], manifest["seed"])] = {k: Path(v["path"]).name for k, v in manifest["method_provenance"]["experts"].items()}
    assert len(used) == 4
    for seed in (0, 1):
        assert used[("expert-switch", seed)] == used[("expert-switch-last", seed)]  # one expert per objective and seed
    assert set(used[("expert-switch", 0)].values()) | set(used[("expert-switch", 1)].values()) == set(experts)


def test_a_job_meeting_an_artifact_being_built_ends_busy_and_runs_again_after_another_job(tmp_path, cache, registry):
    import fcntl
    import threading

    spec = sweeping.SweepSpec(methods=["letters-shared"], tasks=["toy"], seeds=[0], results=str(tmp_path / "res"),
                              executor="debug", plugins_dir=str(PLUGIN_DIR))
    [job] = sweeping.plan_prepare(spec, registry, None)
    key = {"task": "toy", "seed": 0}
    plugin = sys.modules["mobench_dir_plugin_sweep_plugin"]  # loaded by the registry, as the jobs load it
    final = artifacts.artifact_path("sweep-codebook", key, plugin.builder(key))
    lock = final.parent / f".{final.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    held = open(lock, "a+")
    fcntl.flock(held, fcntl.LOCK_EX)  # "another process" is building the codebook
    Store(spec.results).ensure()
    assert sweeping.run_job(job)["status"] == "busy"  # at once: no waiting on the lock
    assert os.environ.get(artifacts.NO_WAIT_ENV) is None  # the job restores the environment

    threading.Timer(1.0, lambda: (fcntl.flock(held, fcntl.LOCK_UN), held.close())).start()
    engine = sweeping.make_engine(spec, tmp_path / "submitit")
    finished = []
    outcomes = sweeping.run_jobs(engine, [job], lambda j, o: finished.append(o["status"]))
    assert finished == ["done"] and outcomes[job]["missing"] == GRID
    assert len(_builds("sweep-codebook")) == 1


def recording_executor(folder, spec):
    """A third executor from a plugin (``--executor module:factory``): submitit's debug executor, recording jobs."""
    import submitit

    class Recording(submitit.DebugExecutor):
        submitted: list = []

        def submit(self, fn, *args, **kwargs):
            Recording.submitted.append(args[0].name)
            return super().submit(fn, *args, **kwargs)

    recording_executor.cls = Recording
    return Recording(folder), 1


def test_a_yaml_spec_on_a_plugin_executor_shards_the_per_point_method(tmp_path, cache, registry):
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(textwrap.dedent(f"""\
        methods: [letters-shared, letters-per-point]
        tasks: toy
        seeds: [3]
        executor: test_sweep:recording_executor
        results: {tmp_path / 'res'}
        shards: 2
        options:
          letters-shared: {{unit: 20}}
        plugins_dir: {PLUGIN_DIR}
        """))
    spec = sweeping.SweepSpec.from_yaml(spec_file)
    assert spec.seeds == [3] and spec.options == {"letters-shared": {"unit": "20"}}
    result = sweeping.sweep(spec, registry)
    assert not result.failures
    names = recording_executor.cls.submitted
    assert sorted(n for n in names if n.startswith("run")) == [
        "run letters-per-point on toy seed 3 shard 0/2", "run letters-per-point on toy seed 3 shard 1/2",
        "run letters-shared on toy seed 3"]
    runs = {r.read_manifest()["method"]: r for r in Store(spec.results).runs("toy")}
    assert runs["letters-shared"].read_manifest()["method_options"] == {"unit": 20}
    assert {row["mean"]["count-a"] for row in runs["letters-shared"].rows()} == {0, 10, 20}
    # shard i of 2 wrote the points of index i mod 2: both shards' rows, one run
    assert len(runs["letters-per-point"].rows()) == GRID and runs["letters-per-point"].read_manifest()["status"] == "complete"
    again = sweeping.sweep(spec, registry)  # complete runs are skipped: prepare jobs only
    assert not again.ran and all(o["missing"] == 0 for o in again.prepared.values())
    with pytest.raises(Exception, match="unknown key"):
        sweeping.SweepSpec.from_dict({"methods": ["a"], "tasks": ["b"], "seed": [1]})


def test_shards_of_one_run_split_the_grid_and_keep_the_full_grid_run_id(tmp_path, cache, registry):
    store = Store(tmp_path / "res")
    config = RunConfig("letters-shared", "toy", seed=0)
    first = execute(config, registry, store, RunContext(seed=0), shard=(1, 2))
    assert (first.computed, first.total) == (1, 1)  # point 1 of 0..2
    assert first.run.read_manifest()["status"] == "partial"
    assert [r["weights"] for r in first.run.rows()] == [[0.5, 0.5]]
    second = execute(config, registry, store, RunContext(seed=0), shard=(0, 2))
    assert second.run.path == first.run.path and second.computed == 2
    assert second.run.read_manifest()["status"] == "complete"
    whole = execute(config, registry, store, RunContext(seed=0))
    assert whole.run.path == first.run.path and whole.computed == 0 and whole.skipped == GRID


def test_the_slurm_executor_submits_one_array_with_the_sweeps_parameters(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"  # records the sbatch script submitit generated, answers like SLURM
    fake.write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho 'Submitted batch job 4242'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "srun").write_text("#!/bin/sh\n")  # submitit looks for srun to believe it is on a cluster
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    spec = sweeping.SweepSpec(methods=["m"], tasks=["t"], executor="slurm",
                              slurm=sweeping.SlurmSettings(partition="gpu", gpus_per_job=1, time_min=90,
                                                           array_parallelism=2, cpus_per_job=8, mem_gb=40))
    engine = sweeping.make_engine(spec, tmp_path / "submitit")
    assert engine.slots is None  # everything is submitted; SLURM runs array_parallelism at a time
    jobs = [sweeping.Job("run", "m", "t", s, "tiny", "res") for s in range(3)]
    running = {}
    sweeping._submit(engine, sweeping.SweepTask(), jobs, running, [])
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=90", "#SBATCH --array=0-2%2",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=40GB", "#SBATCH --ntasks-per-node=1", "#SBATCH --nodes=1",
                 "#SBATCH --signal=USR2@"):
        assert line in script, line
    assert sorted(h.job_id for h in running) == ["4242_0", "4242_1", "4242_2"]
    # a pre-empted job is requeued with the same callable and job: submitit's checkpoint protocol
    again = sweeping.SweepTask().checkpoint(jobs[0])
    assert again.args == (jobs[0],) and isinstance(again.function, sweeping.SweepTask)


MOUNTS = """\
sysfs /sys sysfs rw,nosuid 0 0
/dev/sda1 / ext4 rw,relatime 0 0
server:/export /shared nfs4 rw,vers=4.2,local_lock=flock,addr=10.0.0.1 0 0
server:/old /old nfs rw,nolock,vers=3 0 0
server:/home /home nfs4 rw,vers=4.2,local_lock=none 0 0
lustre@o2ib:/fs /lustre lustre rw,localflock 0 0
lustre@o2ib:/fs2 /lustre2 lustre rw,flock 0 0
/dev/sdb1 /data\\040disk ext4 rw 0 0
"""


def test_node_local_locks_are_named_from_the_mounts():
    mounts = fslock.parse_mounts(MOUNTS)
    reason = lambda path: fslock.node_local_reason(fslock.mount_of(path, mounts))  # noqa: E731
    assert "local_lock=flock" in reason("/shared/results")
    assert "nolock" in reason("/old/x")
    assert "localflock" in reason("/lustre/cache")
    assert reason("/home/u/results") is None and reason("/lustre2/x") is None and reason("/tmp/x") is None
    assert fslock.mount_of("/data disk/r", mounts).fstype == "ext4" and fslock.mount_of("/sharedx", mounts).point == "/"


def test_the_lock_probe_passes_here_and_warns_in_one_line_on_a_node_local_mount(tmp_path):
    assert fslock.probe(tmp_path) is None  # a second process is refused the lock this one holds
    assert fslock.check(tmp_path, "results folder", mounts_text="/dev/sda1 / ext4 rw 0 0\n") is None
    warning = fslock.check(tmp_path, "results folder", mounts_text="srv:/x / nfs rw,nolock 0 0\n")
    assert warning.startswith("warning: the results folder") and "NFS mounted nolock" in warning and "\n" not in warning
    assert not list(tmp_path.iterdir())  # the probe file is gone


def test_a_finished_artifact_is_never_replaced_by_a_second_builder(cache):
    key = {"what": "race"}

    def build(out):
        (out / "x").write_text("first")

    final = artifacts.get_or_build("thing", key, build)
    inode = (final / "x").stat().st_ino
    # a builder whose lock did not hold (node-local locks) finishes second: it discards its own copy
    tmp = final.parent / ".loser"
    tmp.mkdir()
    (tmp / "x").write_text("second")
    (tmp / artifacts.KEY_FILE).write_text("{}")
    assert artifacts._publish(tmp, final) is False
    assert (final / "x").read_text() == "first" and (final / "x").stat().st_ino == inode
    assert len(_builds("thing")) == 1


def test_per_point_methods_are_known_by_their_class_and_options_target_one_method():
    registry = get_plugin_manager().registry
    per_point = {name for name, spec in registry.methods.items() if sweeping.trains_per_preference(spec.factory)}
    assert {"morlhf", "modpo"} <= per_point and not per_point & {"rewarded-soups", "logit-ensemble", "mage"}
    assert sweeping.parse_sweep_options(["steps=4", "morlhf:train.steps=8", "mage:alpha=a=b"]) == {
        "*": {"steps": "4"}, "morlhf": {"train.steps": "8"}, "mage": {"alpha": "a=b"}}
    spec = sweeping.SweepSpec.from_dict({"methods": "morlhf,mage", "tasks": ["hh"], "seeds": "0,2",
                                         "options": {"*": {"k": 1}, "mage": {"k": True}}})
    assert spec.seeds == [0, 2] and spec.method_options("mage") == {"k": "true"} and spec.method_options("morlhf") == {"k": "1"}
    with pytest.raises(Exception, match="does not run"):
        sweeping.SweepSpec(methods=["a"], tasks=["t"], options={"b": {"x": "1"}}).check()
