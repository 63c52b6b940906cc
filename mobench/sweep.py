"""Methods x tasks x seeds -> runs, on an executor: submitit's local pool, SLURM arrays, or its debug executor.

The plan, in two phases of jobs, each job one process (one GPU where there are GPUs):

1. **prepare**: one job per (method, task, seed) loads the task, works out the run id and, unless the run
   is complete, runs the method's ``prepare`` alone: every shared trained piece (DPO experts, backbones,
   value models, objective heads) is built there, through the artifact cache. Jobs run with
   :data:`mobench.artifacts.NO_WAIT_ENV` set: a job that reaches an artifact another job is building does
   not wait on the lock (holding a GPU) but ends at once as *busy* and is submitted again after a job has
   finished, when the piece is a cache hit. The cache's lock plus its "finished" check make every key
   built exactly once per sweep (the cache's build log, ``builds.jsonl``, shows it); no method has to
   declare its pieces in advance, so third-party methods get the guarantee unchanged.
2. **run**: one job per run that is not complete; a method that trains one policy per preference
   (``Method.trains_per_preference``, every :class:`mobench.training.PolicyPerPreference`) is split into
   shards (``mobench run --shard i/N``: the full grid's run id, the points of index i modulo N), and
   only shards with missing points are submitted. Its ``prepare`` finds every shared piece cached.

Re-running the same sweep skips complete runs (their prepare job only reads the manifest) and resumes
partial ones (the store keeps every row written; claims stop two jobs computing one point). A SLURM job
is a :class:`submitit.helpers.Checkpointable`: after pre-emption or time-out submitit requeues it with
the same arguments, the run id is the same, so it resumes, and its grid-point claims (owned by its job
id) are taken back at once. At the end, one leaderboard per task.

Executors: ``local`` (default; :class:`submitit.LocalExecutor`, at most one job per GPU, else one job per
four CPU cores, ``--jobs`` to override), ``slurm`` (:class:`submitit.AutoExecutor`: partition, GPUs per
job, time limit, ``slurm_array_parallelism``), ``debug`` (:class:`submitit.DebugExecutor`: in this
process, one job at a time, for tests and debugging). A third executor comes from a plugin in one of
two ways: an executor plugin of submitit itself (entry-point group ``submitit``, e.g. the OAR plugin
``submitit-oar``), named by its cluster name; or ``--executor package.module:factory``, a function
``factory(folder, spec) -> (executor, slots)`` returning any submitit ``Executor`` and how many jobs may
run at once (None: submit all, the cluster queues them).
"""

from __future__ import annotations

import importlib
import json
import os
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from mobench.api import MobenchError

#: Seconds between two looks at running jobs and at the store.
POLL = 0.5

try:  # submitit's requeue protocol; the sweep works without submitit only for the plan
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - submitit is a dependency
    _Checkpointable = object


@dataclass
class SlurmSettings:
    """The SLURM submission parameters of a sweep's jobs (submitit's names in brackets)."""

    partition: str | None = None            # slurm_partition
    gpus_per_job: int = 1                   # gpus_per_node (one node, one task per job)
    cpus_per_job: int | None = None         # cpus_per_task
    time_min: int | None = None             # timeout_min: the job's time limit (None: 120 on SLURM, a week locally)
    array_parallelism: int = 32             # slurm_array_parallelism: array tasks running at once
    mem_gb: int | None = None               # mem_gb
    account: str | None = None              # slurm_account
    qos: str | None = None                  # slurm_qos
    constraint: str | None = None           # slurm_constraint

    def parameters(self) -> dict[str, Any]:
        """The keyword arguments of ``AutoExecutor.update_parameters``."""
        out: dict[str, Any] = {
            "timeout_min": int(self.time_min or 120), "gpus_per_node": int(self.gpus_per_job), "nodes": 1,
            "tasks_per_node": 1, "slurm_array_parallelism": int(self.array_parallelism),
            "name": "mobench-sweep",
        }
        optional = {"slurm_partition": self.partition, "cpus_per_task": self.cpus_per_job, "mem_gb": self.mem_gb,
                    "slurm_account": self.account, "slurm_qos": self.qos, "slurm_constraint": self.constraint}
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


@dataclass
class SweepSpec:
    """What to sweep and where: the matrix, the run settings shared by every run, the executor."""

    methods: list[str]
    tasks: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    scale: str = "tiny"
    results: str = "results"
    executor: str = "local"
    grid: int | None = None
    limit: int | None = None
    device: str | None = None
    dtype: str | None = None
    #: --gen overrides of every task's decoding settings {key: value as text} (part of the run ids)
    gen: dict[str, str] = field(default_factory=dict)
    #: method name (or "*" for every method) -> {option key: value as text}
    options: dict[str, dict[str, str]] = field(default_factory=dict)
    #: local: jobs at once (None: one per GPU, else one per four CPU cores)
    jobs: int | None = None
    #: per-point methods: shards per run (None: the executor's parallel slots, at most the grid points)
    shards: int | None = None
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    plugins_dir: str | None = None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SweepSpec":
        """A spec from a YAML file with the same keys (``slurm:`` a mapping of :class:`SlurmSettings`)."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise MobenchError(f"cannot read the sweep spec {path}: {' '.join(str(err).split())[:200]}") from None
        if not isinstance(data, dict):
            raise MobenchError(f"the sweep spec {path} must be a mapping (methods:, tasks:, seeds:, ...)")
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "the sweep spec") -> "SweepSpec":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise MobenchError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(known))}")
        data = dict(data)
        slurm = data.pop("slurm", None) or {}
        bad = sorted(set(slurm) - set(SlurmSettings.__dataclass_fields__)) if isinstance(slurm, dict) else ["(not a mapping)"]
        if bad:
            raise MobenchError(f"{where}: unknown slurm setting(s) {', '.join(bad)}; known: {', '.join(SlurmSettings.__dataclass_fields__)}")
        for key in ("methods", "tasks", "seeds"):
            if key in data:
                data[key] = _as_list(data[key], key)
        options = data.pop("options", None) or {}
        if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
            raise MobenchError(f"{where}: options must map a method name (or '*') to {{key: value}}")
        spec = cls(**data, slurm=SlurmSettings(**slurm),
                   options={str(m): {str(k): _text(v) for k, v in kv.items()} for m, kv in options.items()})
        spec.seeds = [int(s) for s in spec.seeds]
        return spec

    def check(self) -> None:
        """One-line errors for an empty matrix or settings out of range (names are checked by the planner)."""
        for key in ("methods", "tasks", "seeds"):
            if not getattr(self, key):
                raise MobenchError(f"the sweep has no {key}: give --{key} a,b or a '{key}:' list in the spec")
        for key in ("methods", "tasks", "seeds"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise MobenchError(f"the sweep's {key} repeat: {', '.join(map(str, values))}")
        if self.jobs is not None and self.jobs < 1 or self.shards is not None and self.shards < 1:
            raise MobenchError("--jobs and --shards must be at least 1")
        stray = sorted(set(self.options) - set(self.methods) - {"*"})
        if stray:
            raise MobenchError(f"options for {', '.join(stray)}, which the sweep does not run (methods: {', '.join(self.methods)})")

    def method_options(self, method: str) -> dict[str, str]:
        """The -o values of one method: those for every method ('*'), then its own."""
        return {**self.options.get("*", {}), **self.options.get(method, {})}


def _as_list(value: Any, key: str) -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, int):
        return [value]
    raise MobenchError(f"the sweep's {key} must be a list or 'a,b,c', not {value!r}")


def _text(value: Any) -> str:
    """An option value from YAML as the text -o would give (booleans lower-case, lists as JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def parse_sweep_options(items: list[str]) -> dict[str, dict[str, str]]:
    """``-o KEY=VALUE`` (every method) and ``-o METHOD:KEY=VALUE`` (one method) as {method or '*': {key: value}}."""
    from mobench.cli import parse_option_items

    out: dict[str, dict[str, str]] = {}
    for item in items:
        head, _, _ = item.partition("=")
        method, colon, _ = head.partition(":")
        target, text = (method.strip(), item[len(method) + 1:]) if colon else ("*", item)
        out.setdefault(target, {}).update(parse_option_items([text]))
    return out


@dataclass(frozen=True)
class Job:
    """One job of the sweep: prepare a run, or fill a run (or one shard of its grid)."""

    phase: str                      # "prepare" or "run"
    method: str
    task: str
    seed: int
    scale: str
    results: str
    options: tuple[tuple[str, str], ...] = ()
    grid: int | None = None
    limit: int | None = None
    device: str | None = None
    shard: tuple[int, int] | None = None
    plugins_dir: str | None = None
    log_dir: str | None = None
    dtype: str | None = None
    gen: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        shard = f" shard {self.shard[0]}/{self.shard[1]}" if self.shard else ""
        return f"{self.phase} {self.method} on {self.task} seed {self.seed}{shard}"

    @property
    def run_key(self) -> tuple[str, str, int]:
        return self.method, self.task, self.seed

    def config(self):
        from mobench.runner import RunConfig

        return RunConfig(method=self.method, task=self.task, scale=self.scale, grid=self.grid, limit=self.limit,
                         seed=self.seed, options=dict(self.options), dtype=self.dtype, gen=dict(self.gen))

    @property
    def log_path(self) -> Path | None:
        """The job's own log (events and tracebacks); library output goes beside it, in ``*.library.log``."""
        return Path(self.log_dir) / (self.name.replace(" ", "-").replace("/", "of") + ".log") if self.log_dir else None


def run_job(job: Job) -> dict[str, Any]:
    """Do one job in this process; never raises (a debug executor would open a debugger): the outcome's
    ``status`` is ``done``, ``busy`` (an artifact another job is building: submit again later) or ``failed``."""
    from mobench.artifacts import NO_WAIT_ENV, ArtifactBusy

    previous = os.environ.get(NO_WAIT_ENV)
    os.environ[NO_WAIT_ENV] = "1"
    log = _job_log(job)
    try:
        from mobench.api import RunContext
        from mobench.logs import library_output
        from mobench.plugins import get_plugin_manager
        from mobench.runner import execute
        from mobench.store import Store

        registry = get_plugin_manager(plugins_dir=job.plugins_dir).registry
        library = job.log_path.with_suffix(".library.log") if job.log_path else None
        with library_output(library) as library_log:  # a run's library output goes to its run folder's log
            context = RunContext(seed=job.seed, device=job.device, dtype=job.dtype, library_log=library_log)
            result = execute(job.config(), registry, Store(job.results), context, on_event=log, shard=job.shard,
                             prepare_only=job.phase == "prepare", claim_owner=_claim_owner(job))
        missing = result.total - result.skipped - result.computed
        return {"status": "done", "run_id": result.run.run_id, "path": str(result.run.path), "total": result.total,
                "computed": result.computed, "missing": missing, "grid": _grid_of(result.run)}
    except ArtifactBusy as err:
        log(f"busy: {err}")
        return {"status": "busy", "error": str(err)}
    except Exception as err:  # a job's failure is reported by the sweep, never raised into the executor
        log(traceback.format_exc())
        return {"status": "failed", "error": " ".join(f"{type(err).__name__}: {err}".split())[:500]}
    finally:
        if previous is None:
            os.environ.pop(NO_WAIT_ENV, None)
        else:
            os.environ[NO_WAIT_ENV] = previous


class SweepTask(_Checkpointable):
    """The callable submitted for a job: on SLURM pre-emption or time-out submitit requeues it as it is."""

    def __call__(self, job: Job) -> dict[str, Any]:
        return run_job(job)


def _grid_of(run) -> int | None:
    try:
        return len(run.read_manifest()["grid"])
    except Exception:  # prepare of a new run: no manifest yet
        return None


def _claim_owner(job: Job) -> str | None:
    """The owner of the job's grid-point claims: its submitit job id, which a requeued job keeps."""
    try:
        import submitit

        env = submitit.JobEnvironment()
        return f"sweep-{env.job_id}"
    except Exception:  # not inside a submitit job
        return None


def _job_log(job: Job) -> Callable[[str], None]:
    path = job.log_path
    if path is None:
        return lambda message: None

    def log(message: str) -> None:
        with open(path, "a") as fh:
            fh.write(f"{time.strftime('%H:%M:%S')} [{os.getpid()}] {message}\n")

    return log


# --- executors -------------------------------------------------------------------------------------


@dataclass
class Engine:
    """A submitit executor and how the sweep feeds it."""

    executor: Any
    slots: int | None                   # jobs at once (None: submit everything, the cluster queues it)
    gpus: list[int] = field(default_factory=list)   # local: one visible GPU per job


def visible_gpus() -> list[int]:
    """The GPU indices this machine shows (CUDA_VISIBLE_DEVICES respected; none without torch or CUDA)."""
    import shutil

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" or (
            "CUDA_VISIBLE_DEVICES" not in os.environ and shutil.which("nvidia-smi") is None):
        return []  # no GPU here: spare the planner a torch import
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:
        return []


def make_engine(spec: SweepSpec, folder: Path) -> Engine:
    """The executor named by ``spec.executor`` (see the module's docstring)."""
    import submitit

    name = spec.executor
    if name == "debug":
        return Engine(submitit.DebugExecutor(folder), 1)
    if name == "local":
        executor = submitit.LocalExecutor(folder)
        # submitit's local controller kills a job at its time limit: locally none unless one is asked for
        executor.update_parameters(timeout_min=int(spec.slurm.time_min or 7 * 24 * 60))
        gpus = visible_gpus()
        slots = spec.jobs or (len(gpus) if gpus else max(1, (os.cpu_count() or 1) // 4))
        return Engine(executor, slots, [gpus[i % len(gpus)] for i in range(slots)] if gpus else [])  # --jobs > GPUs: shared
    if name == "slurm":
        return Engine(slurm_executor(spec, folder), None)
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise MobenchError(f"--executor {name}: cannot import it ({err})") from None
        executor, slots = factory(folder, spec)
        return Engine(executor, slots)
    from submitit.core.plugins import get_executors

    plugins = get_executors()
    if name in plugins:
        executor = submitit.AutoExecutor(folder, cluster=name)
        return Engine(executor, None)
    raise MobenchError(f"unknown executor {name!r}; choose local, slurm, debug, a submitit plugin's cluster "
                       f"({', '.join(sorted(plugins)) or 'none installed'}) or package.module:factory")


def slurm_executor(spec: SweepSpec, folder: Path):
    """submitit's SLURM executor with the sweep's parameters (one node, one task, ``gpus_per_job`` GPUs)."""
    import submitit

    try:
        executor = submitit.AutoExecutor(folder, cluster="slurm")
    except RuntimeError as err:  # submitit finds no srun: not a SLURM machine
        raise MobenchError(f"--executor slurm: {err}") from None
    executor.update_parameters(**spec.slurm.parameters())
    return executor


# --- the plan and the scheduler ----------------------------------------------------------------------


def plan_prepare(spec: SweepSpec, registry, log_dir: str | None) -> list[Job]:
    """One prepare job per (method, task, seed), after checking names and options (one-line errors)."""
    from mobench.runner import validate

    jobs = []
    for task in spec.tasks:
        for method in spec.methods:
            for seed in spec.seeds:
                job = Job("prepare", method, task, seed, spec.scale, spec.results,
                          tuple(sorted(spec.method_options(method).items())), spec.grid, spec.limit, spec.device,
                          None, spec.plugins_dir, log_dir, spec.dtype, tuple(sorted(spec.gen.items())))
                validate(job.config(), registry)
                jobs.append(job)
    return jobs


def trains_per_preference(factory: Any) -> bool:
    """Whether a method trains one policy per preference (its grid is then split across jobs)."""
    if getattr(factory, "trains_per_preference", False):
        return True
    from mobench.training import PolicyPerPreference

    return isinstance(factory, type) and issubclass(factory, PolicyPerPreference)


def plan_runs(spec: SweepSpec, registry, prepared: dict[Job, dict[str, Any]], slots: int | None) -> list[Job]:
    """The run jobs: one per incomplete run; per-point methods one per shard that has missing points."""
    from mobench.store import Store

    jobs = []
    for job, outcome in prepared.items():
        if outcome.get("status") != "done" or outcome["missing"] == 0:
            continue
        run_job_ = replace(job, phase="run")
        if not trains_per_preference(registry.method(job.method).factory):
            jobs.append(run_job_)
            continue
        grid = outcome["total"]
        count = max(1, min(grid, spec.shards or slots or grid))
        run = Store(spec.results).run(job.task, job.method, outcome["run_id"])
        keys, done = _grid_keys(run), run.done_keys()
        for index in range(count):
            if keys is None or any(k not in done for j, k in enumerate(keys) if j % count == index):
                jobs.append(replace(run_job_, shard=(index, count)))
    return jobs


def _grid_keys(run) -> list[str] | None:
    from mobench.api import Preference

    try:
        return [Preference(tuple(w)).key for w in run.read_manifest()["grid"]]
    except Exception:  # the run has no manifest yet: every shard has points to compute
        return None


def run_jobs(engine: Engine, jobs: list[Job], on_finish: Callable[[Job, dict], None],
             on_poll: Callable[[], None] = lambda: None) -> dict[Job, dict[str, Any]]:
    """Run ``jobs`` on the engine, at most ``engine.slots`` at once; a *busy* job is submitted again once
    another job has finished (the piece it waited for is then built). Returns each job's final outcome."""
    task = SweepTask()
    pending: deque[Job] = deque(jobs)
    deferred: list[Job] = []
    running: dict[Any, tuple[Job, int | None]] = {}
    outcomes: dict[Job, dict[str, Any]] = {}
    free_gpus = list(engine.gpus)
    while pending or running or deferred:
        if not pending and not running:
            # every job left waits on a piece a process outside this sweep is building: look again soon
            time.sleep(POLL * 10)
            pending.extend(deferred)
            deferred.clear()
        room = len(pending) if engine.slots is None else max(0, engine.slots - len(running))
        batch = [pending.popleft() for _ in range(min(room, len(pending)))]
        if batch:
            _submit(engine, task, batch, running, free_gpus)
        finished = [h for h in list(running) if _done(h)]
        for handle in finished:
            job, gpu = running.pop(handle)
            if gpu is not None:
                free_gpus.append(gpu)
            outcome = _outcome(handle)
            if outcome.get("status") == "busy":
                deferred.append(job)
                continue
            outcomes[job] = outcome
            on_finish(job, outcome)
            pending.extend(deferred)
            deferred.clear()
        on_poll()
        if running and not finished:
            time.sleep(POLL)
    return outcomes


def _submit(engine: Engine, task: SweepTask, batch: list[Job], running: dict, free_gpus: list[int]) -> None:
    if engine.gpus:  # local with GPUs: one visible GPU per job
        for job in batch:
            gpu = free_gpus.pop(0)
            engine.executor.update_parameters(gpus_per_node=1, visible_gpus=[gpu])
            running[engine.executor.submit(task, job)] = (job, gpu)
        return
    if engine.slots is None and len(batch) > 1 and hasattr(engine.executor, "batch"):
        with engine.executor.batch():  # one job array (SLURM: --array=0-N%parallelism)
            handles = [engine.executor.submit(task, job) for job in batch]
        for handle, job in zip(handles, batch):
            running[handle] = (job, None)
        return
    for job in batch:
        running[engine.executor.submit(task, job)] = (job, None)


def _done(handle) -> bool:
    try:
        return bool(handle.done())
    except Exception:  # a job whose state cannot be read counts as finished; its result says why
        return True


def _outcome(handle) -> dict[str, Any]:
    try:
        outcome = handle.result()
    except Exception as err:  # the job process died (killed, out of memory, time limit)
        return {"status": "failed", "error": " ".join(f"job {getattr(handle, 'job_id', '?')} ended without a result: {err}".split())[:500]}
    return outcome if isinstance(outcome, dict) else {"status": "failed", "error": f"unexpected job result {outcome!r}"}


# --- the sweep ---------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """What a sweep did: every job's outcome, and the runs it covers (complete or not)."""

    prepared: dict[Job, dict[str, Any]]
    ran: dict[Job, dict[str, Any]]

    @property
    def failures(self) -> list[tuple[Job, str]]:
        return [(job, o.get("error", "")) for outcomes in (self.prepared, self.ran) for job, o in outcomes.items()
                if o.get("status") != "done"]


def shared_fs_warnings(spec: SweepSpec) -> list[str]:
    """One line for the results folder and one for the cache where they lack cross-process locks."""
    from mobench import fslock
    from mobench.artifacts import cache_root

    out = []
    for folder, what in ((Path(spec.results), "results folder"), (cache_root(), "artifact cache")):
        warning = fslock.check(folder, what)
        if warning:
            out.append(warning)
    return out


def sweep(spec: SweepSpec, registry, progress=None, say: Callable[[str], None] = lambda m: None) -> SweepResult:
    """Plan and run the sweep: prepare jobs, then run jobs; ``progress`` gets the matrix's counts."""
    from mobench.store import Store

    spec.check()
    spec = replace(spec, results=str(Path(spec.results).resolve()))  # jobs may run in another folder (SLURM)
    store = Store(spec.results)
    store.ensure(create=False)  # checks only: a user error below leaves nothing behind
    folder = Path(spec.results) / ".sweep"
    log_dir = folder / "logs"
    prepare = plan_prepare(spec, registry, str(log_dir))
    engine = make_engine(spec, folder / "submitit")
    store.ensure()
    log_dir.mkdir(parents=True, exist_ok=True)
    for warning in shared_fs_warnings(spec):
        say(warning)
    view = progress or _NoProgress()
    view.start(len(prepare))

    def prepared_one(job, outcome):
        view.prepared(job, outcome)
        if outcome.get("status") != "done":
            say(f"{job.name} failed: {outcome.get('error')}")

    say(f"prepare: {len(prepare)} jobs on the {spec.executor} executor")
    prepared = run_jobs(engine, prepare, prepared_one, view.poll)
    runs = plan_runs(spec, registry, prepared, engine.slots)
    view.planned(runs, prepared)
    say(f"run: {len(runs)} jobs ({sum(1 for o in prepared.values() if o.get('missing') == 0)} runs already complete)")

    def ran_one(job, outcome):
        view.ran(job, outcome)
        if outcome.get("status") != "done":
            say(f"{job.name} failed: {outcome.get('error')}")

    ran = run_jobs(engine, runs, ran_one, view.poll)
    view.finish()
    return SweepResult(prepared, ran)


class _NoProgress:
    def start(self, prepare_jobs): pass
    def prepared(self, job, outcome): pass
    def planned(self, runs, prepared): pass
    def ran(self, job, outcome): pass
    def poll(self): pass
    def finish(self): pass


class MatrixProgress:
    """One rich display for the whole matrix: prepare jobs, run jobs, and grid points read from the store.

    With ``log`` (stderr is not a terminal: CI, a log file) each finished job is also one line.
    """

    def __init__(self, progress, results: str, log: bool = False):
        self.progress = progress
        self.results = results
        self.log = log
        self.points_task = None
        self.runs: dict[tuple, Any] = {}

    def start(self, prepare_jobs: int) -> None:
        self.prepare_task = self.progress.add_task("prepare jobs", total=prepare_jobs)

    def prepared(self, job, outcome) -> None:
        self.progress.advance(self.prepare_task)
        self._line(job, outcome)

    def _line(self, job, outcome) -> None:
        if self.log:
            what = outcome.get("status") if outcome.get("status") != "done" else (
                f"{outcome['missing']} of {outcome['total']} points to compute" if job.phase == "prepare"
                else f"{outcome['computed']} points computed")
            self.progress.console.log(f"{job.name}: {what}", markup=False)

    def planned(self, runs: list[Job], prepared: dict[Job, dict]) -> None:
        from mobench.store import Store

        store = Store(self.results)
        total = 0
        for job, outcome in prepared.items():
            if outcome.get("status") == "done":
                self.runs[job.run_key] = store.run(job.task, job.method, outcome["run_id"])
                total += outcome["total"]
        self.run_task = self.progress.add_task("run jobs", total=len(runs))
        self.points_task = self.progress.add_task("grid points", total=total)
        self.poll()

    def ran(self, job, outcome) -> None:
        self.progress.advance(self.run_task)
        self._line(job, outcome)

    def poll(self) -> None:
        if self.points_task is not None:
            self.progress.update(self.points_task, completed=sum(len(r.done_keys()) for r in self.runs.values()))

    def finish(self) -> None:
        self.poll()
