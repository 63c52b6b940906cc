"""One method x one task x the preference grid -> scored rows in the store, resumable at any point."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from mobench.api import SCALES, Generation, MethodSpec, MobenchError, Preference, RunContext, TaskInstance, prompts_sha256
from mobench.calibration import attach as attach_calibration
from mobench.grid import grid_size, parse_weights, simplex_grid
from mobench.metrics import mean_stderr
from mobench.options import Options, options_class
from mobench.plugins import Registry
from mobench.toolkit import seed_everything
from mobench.provenance import git_revision, machine, scoring_rule_of, versions
from mobench.store import RunDir, Store, _one_line

#: How long a claim on a grid point holds (seconds) before another run may take the point over; a claim
#: of a process of this machine that has died ends at once. MOBENCH_CLAIM_TTL overrides it.
CLAIM_TTL = 3 * 3600.0
#: How often a run whose remaining points are all claimed by other live runs looks again (seconds).
CLAIM_POLL = 0.5

#: What a --resume value may be: a run id (a folder name of this results store), never a path.
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class RunConfig:
    """Everything that determines a run (and, hashed, its run id)."""

    method: str
    task: str
    scale: str = "tiny"
    grid: int | None = None
    weights: str | None = None
    limit: int | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # the user's -o KEY=VALUE, as given (text)
    dtype: str | None = None  # --dtype of the models loaded to decode and score (None: the device's default)
    gen: dict[str, Any] = field(default_factory=dict)  # --gen overrides of the task's Generation, as given (text)


@dataclass
class RunResult:
    run: RunDir
    computed: int
    skipped: int
    total: int


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_options(spec: MethodSpec, scale: str, overrides: dict[str, Any]) -> Options | None:
    """The method's options at ``scale``: its preset, the registration's fixed values, then the user's ``-o``."""
    cls = options_class(spec.factory)
    if cls is None:
        if overrides:
            raise MobenchError(f"method {spec.name!r} takes no options (got {', '.join(sorted(map(str, overrides)))})")
        return None
    options = cls.preset(scale)
    if spec.fixed:
        options = options.replace(spec.fixed, owner=spec.name)
    return options.replace({str(k): v for k, v in overrides.items()}, parse=True, owner=spec.name)


def build_method(spec: MethodSpec, options: Options | None):
    """The method object: ``factory(options)`` (or ``factory()`` without Options), named as registered."""
    method = spec.factory(options) if options is not None else spec.factory()
    try:
        method.name = spec.name
    except AttributeError:  # a read-only name property: keep the method's own
        pass
    return method


def run_id(config: RunConfig, preferences: list[Preference], task: TaskInstance | None = None,
           options: Options | None = None) -> str:
    """A readable, deterministic id: the same command gives the same id, so it resumes.

    It hashes only what determines this method's results on this task: the method's resolved options,
    the task's policy, prompts, decoding settings (with the ``--gen`` overrides applied), calibration and
    objectives' scoring rule (:func:`mobench.provenance.scoring_rule_of`), the
    grid, the prompt limit, the seed and ``--dtype`` when given. A changed option, decoding setting or
    calibration starts a new run instead of resuming rows made under the old one.
    """
    fingerprint = None
    if task is not None:
        fingerprint = {
            "policy": task.policy,
            "prompts": prompts_sha256(task.prompts),
            "generation": task.generation.to_dict(),
            "normalisation": {k: asdict(v) for k, v in sorted(task.normalisation.items())},
            "reference_point": list(task.reference_point),
            # how a text is scored (a changed scorer rule, e.g. the empty-reply floor, is a new run)
            "scoring": scoring_rule_of({o.name: o.provenance() for o in task.objectives}),
        }
    identity = {
        "task_fingerprint": fingerprint,
        "method": config.method,
        "task": config.task,
        "scale": config.scale,
        "grid": [p.key for p in preferences],
        "limit": config.limit,
        "seed": config.seed,
        "options": options.to_dict() if options is not None else None,
    }
    if config.dtype not in (None, "auto"):  # only when given: the ids of runs made before --dtype stay the same
        identity["dtype"] = config.dtype
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{config.scale}-s{config.seed}-{digest}"


def _peak_memory_mb(device: str | None) -> dict[str, float]:
    # ru_maxrss is the process's peak resident set so far (KiB on Linux): an upper bound per point.
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _reset_cuda_peak() -> None:
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()


def resolve_preferences(config: RunConfig, objectives: int, default_grid: int) -> list[Preference]:
    """The grid of this run: explicit ``--weights`` points, else ``--grid N``, else the task's default."""
    if config.weights is not None:
        return parse_weights(config.weights, objectives)
    return simplex_grid(objectives, config.grid or default_grid)


def check_resume_id(resume: str) -> None:
    """A --resume value is a run id of this results folder: a plain folder name, never a path."""
    if not _RUN_ID.match(resume) or resume in (".", ".."):
        shown = _one_line(resume, 80)
        raise MobenchError(f"--resume takes a run id of this results folder (like tiny-s0-1a2b3c4d), not {shown!r}")


def validate(config: RunConfig, registry: Registry) -> Options | None:
    """Check names, scale, options and weights before anything heavy is loaded; returns the method's options."""
    if config.scale not in SCALES:
        raise MobenchError(f"unknown scale {config.scale!r}; choose one of {', '.join(SCALES)}")
    options = build_options(registry.method(config.method), config.scale, config.options)
    task_spec = registry.task(config.task)
    if config.weights is not None and config.grid is not None:
        raise MobenchError("--grid and --weights contradict each other: --weights gives the grid points itself; pass one of them")
    if config.weights is not None:
        parse_weights(config.weights, len(task_spec.objectives))
    if config.grid is not None:
        if config.grid < 2:
            raise MobenchError(f"--grid must be at least 2 points per edge, got {config.grid}")
        grid_size(len(task_spec.objectives), config.grid)  # refuses a grid too large to hold
    if config.dtype is not None:
        from mobench.models import DTYPES

        if config.dtype not in DTYPES:
            raise MobenchError(f"unknown dtype {config.dtype!r}; choose one of {', '.join(DTYPES)}")
    if config.gen:
        Generation().with_overrides(config.gen)  # names and types checked before anything loads
    if config.limit is not None and config.limit < 1:
        raise MobenchError(f"--limit must be at least 1, got {config.limit}")
    if config.seed < 0 or config.seed >= 2**32:
        raise MobenchError(f"--seed must be between 0 and 2**32 - 1, got {config.seed}")
    return options


def check_task(task: TaskInstance, declared: tuple[str, ...], registry: Registry) -> None:
    """A loaded (and calibrated) task instance must be coherent before any run uses it."""
    if tuple(task.objective_names) != tuple(declared):
        raise MobenchError(f"task {task.name!r} declared objectives {list(declared)} but loaded {task.objective_names}")
    task.validate()
    for objective in task.objectives:
        known = registry.objectives.get(objective.name)
        if known is not None and known.direction != objective.direction:
            raise MobenchError(f"task {task.name!r}: objective {objective.name!r} has direction {objective.direction:+d}, registered {known.direction:+d}")


def score_point(task: TaskInstance, prompts: list[str], responses: list[str]) -> tuple[dict, dict, dict, list[dict]]:
    """Score one grid point's responses with every objective: means, standard errors, z-scores, per-item."""
    per_objective = {}
    for objective in task.objectives:
        try:
            values = [float(v) for v in objective.score(prompts, responses)]
        except (TypeError, ValueError) as err:
            raise MobenchError(f"objective {objective.name!r} returned a score that is not a number ({_one_line(err, 120)})") from None
        if len(values) != len(responses):
            raise MobenchError(f"objective {objective.name!r} returned {len(values)} scores for {len(responses)} responses")
        bad = next((j for j, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            raise MobenchError(f"objective {objective.name!r} returned a non-finite score ({values[bad]}) for prompt {bad}")
        per_objective[objective.name] = values
    means, stderrs, normalised = {}, {}, {}
    for objective in task.objectives:
        mean, se = mean_stderr(per_objective[objective.name])
        means[objective.name], stderrs[objective.name] = mean, se
        normalised[objective.name] = task.normalisation[objective.name].apply(mean, objective.direction)
    items = [{name: per_objective[name][j] for name in per_objective} for j in range(len(responses))]
    return means, stderrs, normalised, items


def execute(
    config: RunConfig,
    registry: Registry,
    store: Store,
    context: RunContext,
    resume: str | None = None,
    on_event: Callable[[str], None] | None = None,
    shard: tuple[int, int] | None = None,
    prepare_only: bool = False,
    claim_owner: str | None = None,
) -> RunResult:
    """Run ``config`` into ``store``: load the task, prepare the method, fill the missing grid points.

    ``shard=(i, n)`` computes only the grid points whose index in the full grid is i modulo n (the run id,
    manifest and store are the full grid's: n shards side by side fill one run). ``prepare_only`` loads the
    task and prepares the method (training what it trains) without writing anything to the store; the
    result says how many points are still missing. ``claim_owner`` names the owner of this process's grid
    point claims (default: a fresh attempt id): a requeued cluster job passes its job id, so it takes
    back the points its pre-empted run had claimed instead of waiting for the claims to expire.
    """
    say = on_event or (lambda message: None)
    validate(config, registry)
    if resume is not None:
        check_resume_id(resume)
    store.ensure(create=False)  # checks only: nothing is written before the task has loaded
    context.registry = registry
    method_spec = registry.method(config.method)
    task_spec = registry.task(config.task)

    saved_grid = None
    if resume is not None:
        # --resume takes the settings and grid the run was started with.
        resumed = store.run(config.task, config.method, resume)
        if not resumed.manifest_path.exists():
            raise MobenchError(f"no run {resume!r} of {config.method} on {config.task} in {store.root}")
        saved = resumed.read_manifest()
        try:
            config = RunConfig(**{k: v for k, v in saved.get("config", {}).items() if k in asdict(config)})
            saved_grid = [Preference(tuple(w)) for w in saved["grid"]]
        except (KeyError, TypeError, ValueError, MobenchError) as err:
            raise MobenchError(f"{resumed.manifest_path}: damaged manifest, cannot resume from it ({_one_line(err, 120)})") from None
    options = validate(config, registry)
    if config.dtype not in (None, "auto"):
        context.dtype = config.dtype

    say(f"loading task {config.task} ({config.scale})")
    task = task_spec.load(config.scale, context)
    if not isinstance(task, TaskInstance):
        raise MobenchError(f"task {config.task!r}: load returned {type(task).__name__}, not a TaskInstance")
    if task.normalisation and task.reference_point:
        check_task(task, task_spec.objectives, registry)  # a calibration the task brings itself must be coherent
    task = attach_calibration(task_spec, task)
    check_task(task, task_spec.objectives, registry)
    if config.gen:  # --gen: the task's decoding settings with the user's overrides (hashed into the run id)
        task.generation = task.generation.with_overrides(config.gen)
    if config.limit is not None and config.limit >= len(task.prompts):
        if config.limit > len(task.prompts):
            say(f"note: --limit {config.limit} is more than the task's {len(task.prompts)} prompts: using all {len(task.prompts)}")
        config = RunConfig(**{**asdict(config), "limit": None})
    prompts = task.prompts[: config.limit] if config.limit else list(task.prompts)
    preferences = saved_grid or resolve_preferences(config, len(task.objectives), task.grid_points)

    rid = resume or run_id(config, preferences, task, options)
    run = store.run(config.task, config.method, rid)
    existing = run.read_manifest() if run.manifest_path.exists() else None
    if existing is not None:
        from mobench.leaderboard import manifest_problem

        problem = manifest_problem(existing)
        if problem:
            raise MobenchError(f"{run.manifest_path}: damaged manifest ({problem}); move the folder {run.path} "
                               "away to start this run again")
    done = run.done_keys() if existing is not None else set()
    missing = [p for p in preferences if p.key not in done]
    result = RunResult(run=run, computed=0, skipped=len(preferences) - len(missing), total=len(preferences))
    if shard is not None:
        index, count = shard
        if not (count >= 1 and 0 <= index < count):
            raise MobenchError(f"--shard {index}/{count}: the shard index must lie in 0..{count - 1}")
        share = {p.key for j, p in enumerate(preferences) if j % count == index}
        missing = [p for p in missing if p.key in share]
        result.skipped, result.total = len(share) - len(missing), len(share)
    if not missing and (shard is not None or (existing is not None and existing.get("status") == "complete")):
        # Nothing to do and nothing to record: the store is left as it is (a read-only store included).
        if existing is not None and existing.get("status") != "complete" and {p.key for p in preferences} <= done:
            run.set_status("complete", finished_at=_now())
        say(f"all {result.total} grid points already in {run.path}")
        return result
    if prepare_only:
        if missing:
            say(f"preparing {config.method}")
            seed_everything(config.seed)
            build_method(method_spec, options).prepare(task, context)
        return result
    store.ensure()
    if existing is not None:
        # status running again, and an earlier failure's reason dropped
        run.set_status("running", resumed_at=[*existing.get("resumed_at", []), _now()], **_process())
    else:
        run.write_manifest(
            {
                "mobench_results": 1,
                "run_id": rid,
                "config": asdict(config),
                "task": config.task,
                "method": config.method,
                "scale": config.scale,
                "objectives": task.objective_names,
                "directions": {o.name: o.direction for o in task.objectives},
                "grid": [list(p.weights) for p in preferences],
                "n_prompts": len(prompts),
                "prompts_sha256": prompts_sha256(prompts),
                "generation": task.generation.to_dict(),
                "method_options": options.to_dict() if options is not None else None,
                "normalisation": {k: asdict(v) for k, v in task.normalisation.items()},
                "reference_point": list(task.reference_point),
                "policy": task.policy,
                "task_provenance": task.provenance,
                "objective_provenance": {o.name: o.provenance() for o in task.objectives},
                "plugins": {
                    "method": registry.owner[("method", config.method)],
                    "task": registry.owner[("task", config.task)],
                    "versions": {name: info.version for name, info in registry.plugins.items()},
                },
                "versions": versions(),
                "git_revision": git_revision(),
                "machine": machine(),
                "seed": config.seed,
                "started_at": _now(),
                "status": "running",
                **_process(),
            }
        )

    if getattr(context, "library_log", None) is not None:  # library output from here on: the run folder's log
        from mobench.logs import RUN_LOG

        context.library_log.attach(run.path / RUN_LOG)
    if not missing:
        run.set_status("complete", finished_at=_now())
        say(f"all {len(preferences)} grid points already in {run.path}")
        return result

    try:
        _fill(run, result, config, method_spec, options, task, prompts, preferences, missing, context, say, claim_owner)
    except KeyboardInterrupt:
        _record_end(run, "interrupted", "interrupted (Ctrl-C or SIGTERM); rerun the same command to resume")
        raise
    except BaseException as err:  # recorded, then raised again: the CLI prints the one line
        _record_end(run, "failed", f"{type(err).__name__}: {err}" if not isinstance(err, MobenchError) else str(err))
        raise
    _record_outcome(run, preferences)
    return result


def _record_outcome(run: RunDir, preferences: list[Preference]) -> None:
    """Mark the run complete when every grid point has its row, else partial.

    Shards of one run finish side by side: one that writes "partial" looks again, so whichever shard
    ends last leaves "complete" (its rows precede its own check).
    """
    grid = {p.key for p in preferences}
    complete = grid <= run.done_keys()
    run.set_status("complete" if complete else "partial", finished_at=_now())
    if not complete and grid <= run.done_keys():
        run.set_status("complete", finished_at=_now())


def _process() -> dict[str, Any]:
    """Which process is running the run: a run left "running" by a killed process is told apart by it."""
    import socket

    return {"pid": os.getpid(), "host": socket.gethostname()}


def _record_end(run: RunDir, status: str, reason: str) -> None:
    """Write a failed or interrupted run's status; never let the record hide the error being raised."""
    try:
        run.set_status(status, reason, finished_at=_now())
    except Exception:  # a read-only or vanished store: the error itself is what the user needs to see
        pass


def _fill(run, result, config, method_spec, options, task, prompts, preferences, missing, context, say,
          claim_owner=None) -> None:
    """Prepare the method and compute the missing grid points, appending each as it is scored."""
    say(f"preparing {config.method}")
    method = build_method(method_spec, options)
    seed_everything(config.seed)
    started = time.perf_counter()
    method.prepare(task, context)
    prepare_seconds = time.perf_counter() - started
    run.update_manifest(method_provenance=method.provenance(), prepare_seconds=prepare_seconds,
                        offline_evaluations=int(getattr(method, "offline_evaluations", 0)))

    attempt = uuid.uuid4().hex[:12]
    owner = claim_owner or attempt
    batched = bool(getattr(method, "batch_preferences", False))
    ttl = float(os.environ.get("MOBENCH_CLAIM_TTL", CLAIM_TTL))
    point_step = context.progress.step("grid points", total=len(missing)) if context.progress else None
    pending, waiting = list(missing), False
    try:
        while True:
            done = run.done_keys()
            pending = [p for p in pending if p.key not in done]
            if not pending:
                break
            # Claim before computing: concurrent runs of this command split the grid instead of both computing it.
            got = set(run.claim([p.key for p in pending], owner, ttl, limit=None if batched else 1))
            if not got:
                if not waiting:
                    say(f"waiting for {len(pending)} grid point(s) another run is computing")
                    waiting = True
                time.sleep(CLAIM_POLL)
                continue
            batch = [p for p in pending if p.key in got]
            pending = [p for p in pending if p.key not in got]
            _reset_cuda_peak()
            seed_everything(config.seed)
            t0 = time.perf_counter()
            offline_before = float(getattr(method, "offline_seconds", 0.0))
            responses = method.generate(prompts, batch)
            # Offline work inside generate (a policy trained per preference) is recorded apart from decoding.
            offline_seconds = (float(getattr(method, "offline_seconds", 0.0)) - offline_before) / len(batch)
            generation_seconds = (time.perf_counter() - t0) / len(batch) - offline_seconds
            if not isinstance(responses, (list, tuple)) or len(responses) != len(batch) or any(
                    not isinstance(r, (list, tuple)) or len(r) != len(prompts) for r in responses):
                raise MobenchError(f"method {config.method!r} returned a wrong number of responses "
                                   f"(one list of {len(prompts)} texts per grid point is expected)")
            if any(not isinstance(t, str) for r in responses for t in r):
                raise MobenchError(f"method {config.method!r} returned a response that is not text")
            for preference, texts in zip(batch, responses):
                t1 = time.perf_counter()
                means, stderrs, normalised, items = score_point(task, prompts, texts)
                scoring_seconds = time.perf_counter() - t1
                row = {
                    "preference_key": preference.key,
                    "weights": list(preference.weights),
                    "objectives": task.objective_names,
                    "mean": means,
                    "stderr": stderrs,
                    "normalised": normalised,
                    "n": len(prompts),
                    "generation_seconds": generation_seconds,
                    "scoring_seconds": scoring_seconds,
                    "offline_seconds": offline_seconds,
                    "wall_seconds": offline_seconds + generation_seconds + scoring_seconds,
                    "batched_points": len(batch),
                    **_peak_memory_mb(context.device),
                    "attempt": attempt,
                    "written_at": _now(),
                }
                generations = [
                    {
                        "preference_key": preference.key,
                        "attempt": attempt,
                        "prompt_index": j,
                        "prompt": prompts[j],
                        "response": texts[j],
                        "scores": items[j],
                    }
                    for j in range(len(prompts))
                ]
                if run.append_point(row, generations):
                    result.computed += 1
                if point_step:
                    point_step.advance(1)
    finally:
        result.skipped = result.total - result.computed  # points written by another run count as already there
        try:
            run.release(owner)
        except OSError:
            pass
        if point_step:
            point_step.close()
        # Again at the end: methods that train per point (MORLHF, MODPO) know their policies only now.
        try:
            run.update_manifest(method_provenance=method.provenance(),
                                offline_evaluations=int(getattr(method, "offline_evaluations", 0)))
        except Exception as err:  # never let provenance hide the generation error being raised
            say(f"warning: {config.method}.provenance() failed at the end of the run: {err}")
