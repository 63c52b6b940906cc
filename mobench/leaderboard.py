"""Rankings and pairwise comparisons of the methods run on a task, computed from the store alone.

The unit is the prompt: every grid point's per-prompt raw scores (``generations.jsonl``, the committed
attempt only) are normalised with the run's own manifest (``z = direction * (score - mean) / std``), and
a grid point's position is the mean z over the prompts. Point estimates use every prompt; uncertainty
comes from a paired bootstrap over prompts:

- one set of resampled prompt indices (B replicates, a seeded generator) is drawn per task and used for
  every method and every seed, so a pairwise difference is computed on the same prompts on both sides
  (runs made on different prompts are refused: they cannot be paired);
- in each replicate each run's per-point mean z gives its hypervolume and Spearman controllability;
- runs of one method that differ only by ``--seed`` aggregate: the point estimate is the mean over
  seeds, and each replicate also resamples the seeds (a two-stage bootstrap: seeds, then prompts), so
  the interval holds the seed-to-seed spread as well as the prompt-to-prompt one;
- 95% intervals are percentile intervals of the replicates.

``scipy.stats.bootstrap`` resamples each sample it is given on its own; the pairing across methods (one
index draw shared by all) and the seed stage are what it cannot express, so the indices are drawn here
with numpy and the statistics (pymoo HV, scipy ranks) are the library ones from :mod:`mobench.metrics`.

Which runs are ranked: one line per method *and option set* (option variants side by side, labelled
``method[key=value,...]`` from the run's ``-o``). In each, the newest complete run's settings, every
complete seed run with those settings (the newest per seed); a method with no complete run is ranked on
its newest unfinished run (partial, failed, interrupted or running) that has rows, with a note saying so
and how many points it has. Runs without a row never hide one with rows, and a newer failed or partial
run than the one ranked is named in a note. Damaged manifests and rows (wrong shapes or types) are left
out with a one-line warning naming the file.

Scales never mix: runs of several scales need ``scale``. Within a scale the runs normalised under the
newest calibration (normalisation, directions and reference point) are ranked; runs under another
calibration are left out with a note naming it, and ``calibration=ID`` selects them instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobench.api import MobenchError, Normalisation
from mobench.metrics import (
    controllability,
    hypervolume,
    hypervolume_batch,
    pareto_front,
    percentile_interval,
    resample_counts,
    spearman_batch,
)
from mobench.provenance import scoring_rule_of
from mobench.store import CorruptLineWarning, RunDir, Store

RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
#: The most memory (bytes) the bootstrap arrays of one board may take before it is refused with one line.
MAX_BOOTSTRAP_BYTES = 2 * 2**30

Interval = tuple[float, float]


@dataclass
class PointView:
    """One grid point of a method: its mean z per objective with CIs, and where it stands."""

    key: str
    weights: list[float]
    z: dict[str, float]
    z_ci: dict[str, Interval | None]
    raw: dict[str, float]
    inside_box: bool  # strictly beats the reference point on every objective: it can add volume
    on_front: bool  # non-dominated among the method's own points
    # Share of the point's responses that are empty (whitespace only), mean over seeds; None when the store
    # kept no responses. A scorer may rate an empty reply well (hh's harmless head does): this shows when a
    # corner's score is bought with silence.
    empty: float | None = None


@dataclass
class Entry:
    """One method's line on the leaderboard: its newest settings, every seed run with them aggregated."""

    method: str
    run_id: str  # the newest run's id
    scale: str
    points: int
    grid_size: int
    hypervolume: float
    front_size: int
    spearman: float
    monotone: float
    objectives: list[str]
    ends: dict[str, dict[str, float]]
    wall_seconds: float
    status: str
    # Offline cost (prepare, plus training done inside generate) apart from decoding and scoring, seconds
    # per seed run (mean over seeds); offline_evaluations: fitness/calibration evaluations the method counted.
    offline_seconds: float = 0.0
    decode_seconds: float = 0.0
    offline_evaluations: int = 0
    weights: list[list[float]] = field(default_factory=list)
    normalised: list[list[float]] = field(default_factory=list)
    front: list[int] = field(default_factory=list)
    reference_point: list[float] = field(default_factory=list)
    hypervolume_ci: Interval | None = None
    spearman_ci: Interval | None = None
    seeds: list[int] = field(default_factory=list)
    n_seeds: int = 1
    run_ids: list[str] = field(default_factory=list)
    hypervolume_per_seed: list[float] = field(default_factory=list)
    rank: int = 0
    not_separable_from: list[int] = field(default_factory=list)  # ranks whose HV difference CI holds 0
    per_point: list[PointView] = field(default_factory=list)
    label: str = ""  # the method, with its -o options when they are not the defaults: mage[alpha=2]
    options: dict[str, Any] = field(default_factory=dict)  # the -o options of this line (text, as given)

    def __post_init__(self) -> None:
        self.label = self.label or self.method


@dataclass
class Comparison:
    """HV(a) - HV(b) with its paired-bootstrap CI; separable when the CI excludes 0."""

    a: str
    b: str
    rank_a: int
    rank_b: int
    difference: float
    ci: Interval | None
    separable: bool | None  # None: no per-prompt scores to bootstrap


@dataclass
class Board:
    """A task's leaderboard at one scale and calibration, with every pairwise comparison."""

    task: str
    scale: str
    calibration: str  # short digest of normalisation, directions and reference point
    objectives: list[str]
    directions: dict[str, int]
    normalisation: dict[str, dict[str, float]]
    reference_point: list[float]
    n_prompts: int | None
    prompts_sha256: str | None
    resamples: int
    bootstrap_seed: int
    confidence: float
    entries: list[Entry]
    comparisons: list[Comparison]
    notes: list[str] = field(default_factory=list)


@dataclass
class _Run:
    """One run's scores as the bootstrap needs them."""

    run: RunDir
    manifest: dict[str, Any]
    keys: list[str]
    weights: np.ndarray  # (P, m)
    raw: np.ndarray  # (P, m) raw mean per point
    z: np.ndarray  # (P, m) mean z over prompts (the point estimate)
    per_prompt: np.ndarray | None  # (P, N, m) z of every prompt; None when the generations are incomplete
    empty: np.ndarray | None = None  # (P,) share of empty responses; None without every response stored
    boot_z: np.ndarray | None = None  # (B, P, m)
    boot_hv: np.ndarray | None = None  # (B,)
    boot_spearman: np.ndarray | None = None  # (B,)

    @property
    def hypervolume(self) -> float:
        return hypervolume(self.z, self.manifest["reference_point"])

    @property
    def seed(self) -> int:
        return int(self.manifest.get("seed", self.manifest.get("config", {}).get("seed", 0)))


def scoring_rule(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The run's objectives' scoring rule (:func:`mobench.provenance.scoring_rule_of`), from its manifest."""
    return scoring_rule_of(manifest.get("objective_provenance"))


def calibration_id(manifest: dict[str, Any]) -> str:
    """A short digest of what turns a run's responses into its points: the objectives' scoring rule
    (:func:`scoring_rule`), normalisation, directions, reference point."""
    key = {
        "scoring": scoring_rule(manifest),
        "objectives": manifest.get("objectives"),
        "directions": manifest.get("directions"),
        "normalisation": manifest.get("normalisation"),
        "reference_point": manifest.get("reference_point"),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]


def _settings(manifest: dict[str, Any]) -> str:
    """Everything that determines a run's results except its seed: runs equal here are seeds of one setting."""
    config = {k: v for k, v in manifest.get("config", {}).items() if k != "seed"}
    key = {
        "config": config,
        "method_options": manifest.get("method_options"),
        "generation": manifest.get("generation"),
        "policy": manifest.get("policy"),
        "grid": manifest.get("grid"),
        "prompts_sha256": manifest.get("prompts_sha256"),
        "calibration": calibration_id(manifest),
    }
    return json.dumps(key, sort_keys=True, default=str)


def _stamp(manifest: dict[str, Any]) -> str:
    return str(manifest.get("finished_at") or manifest.get("started_at") or "")


def _directions(manifest: dict[str, Any], names: list[str]) -> list[int]:
    directions = manifest.get("directions")
    if not isinstance(directions, dict) or any(n not in directions for n in names):
        raise MobenchError(f"{manifest.get('run_id')}: the manifest has no direction for every objective; cannot normalise its scores")
    return [int(directions[n]) for n in names]


def load_run(run: RunDir, manifest: dict[str, Any]) -> _Run | None:
    """A run's points and per-prompt z-scores from its rows and committed generations; None without rows."""
    names = list(manifest["objectives"])
    rows = []
    for row in run.rows():
        problem = row_problem(row, names)
        if problem:
            warnings.warn(f"{run.rows_path}: damaged row {str(row.get('preference_key'))[:40]!r} ({problem}); skipped",
                          CorruptLineWarning, stacklevel=2)
            continue
        rows.append(row)
    if not rows:
        return None
    directions = np.array(_directions(manifest, names), dtype=float)
    norm = [Normalisation(float(manifest["normalisation"][n]["mean"]), float(manifest["normalisation"][n]["std"])) for n in names]
    means = np.array([x.mean for x in norm])
    stds = np.array([x.std if x.std > 0 else 1.0 for x in norm])  # as Normalisation.apply
    keys = [row["preference_key"] for row in rows]
    weights = np.array([row["weights"] for row in rows], dtype=float)
    raw = np.array([[row["mean"][n] for n in names] for row in rows], dtype=float)

    per_prompt = empty = None
    n = manifest.get("n_prompts") or rows[0].get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        scores: dict[str, dict[int, list[float]]] = {k: {} for k in keys}
        responses: dict[str, dict[int, str]] = {k: {} for k in keys}
        for g in run.generations():
            where = scores.get(g.get("preference_key"))
            if where is not None and isinstance(g.get("prompt_index"), int) and isinstance(g.get("scores"), dict):
                values = [g["scores"].get(name) for name in names]
                if all(_number(v) for v in values) and g["prompt_index"] not in where:
                    where[g["prompt_index"]] = [float(v) for v in values]
                    if isinstance(g.get("response"), str):
                        responses[g["preference_key"]][g["prompt_index"]] = g["response"]
        if all(sorted(scores[k]) == list(range(n)) for k in keys):
            values = np.array([[scores[k][j] for j in range(n)] for k in keys], dtype=float)  # (P, N, m)
            per_prompt = directions * (values - means) / stds
        if all(sorted(responses[k]) == list(range(n)) for k in keys):
            empty = np.array([np.mean([not responses[k][j].strip() for j in range(n)]) for k in keys], dtype=float)
    if per_prompt is not None:
        z = per_prompt.mean(axis=1)
    else:  # no complete per-prompt scores (an old or damaged run): the rows' own z, no intervals
        z = np.array([[row["normalised"][n] for n in names] for row in rows], dtype=float)
    return _Run(run=run, manifest=manifest, keys=keys, weights=weights, raw=raw, z=z, per_prompt=per_prompt, empty=empty)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _seconds(value: Any) -> float:
    return float(value) if _number(value) else 0.0


def manifest_problem(manifest: Any) -> str | None:
    """Why a manifest cannot be ranked (wrong shape or types), or None when it can."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    for key in ("run_id", "method", "scale"):
        if not isinstance(manifest.get(key), str) or not manifest.get(key):
            return f"no {key}"
    names = manifest.get("objectives")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return "no list of objective names"
    directions = manifest.get("directions")
    if not isinstance(directions, dict) or any(directions.get(n) not in (1, -1) for n in names):
        return "no direction (+1 or -1) for every objective"
    norm = manifest.get("normalisation")
    if not isinstance(norm, dict) or any(
            not isinstance(norm.get(n), dict) or not _number(norm[n].get("mean")) or not _number(norm[n].get("std"))
            for n in names):
        return "no finite normalisation mean and std for every objective"
    ref = manifest.get("reference_point")
    if not isinstance(ref, list) or len(ref) != len(names) or not all(_number(x) for x in ref):
        return "no finite reference point with one coordinate per objective"
    grid = manifest.get("grid")
    if not isinstance(grid, list) or not all(isinstance(w, list) and len(w) == len(names) and all(_number(x) for x in w) for w in grid):
        return "no grid of weights with one per objective"
    n = manifest.get("n_prompts")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        return "n_prompts is not a count"
    if not isinstance(manifest.get("config", {}), dict):
        return "config is not an object"
    if not isinstance(manifest.get("prompts_sha256"), (str, type(None))):
        return "prompts_sha256 is not text"
    if not isinstance(manifest.get("status", "complete"), str):
        return "status is not text"
    seed = manifest.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        return "seed is not an integer"
    if not isinstance(manifest.get("config", {}).get("options") or {}, dict):
        return "config options are not an object"
    return None


def row_problem(row: dict[str, Any], names: list[str]) -> str | None:
    """Why a row cannot be ranked (wrong shape or types), or None when it can."""
    if not isinstance(row.get("preference_key"), str):
        return "no preference key"
    w = row.get("weights")
    if not isinstance(w, list) or len(w) != len(names) or not all(_number(x) for x in w):
        return "weights are not one finite number per objective"
    for part in ("mean", "normalised"):
        values = row.get(part)
        if not isinstance(values, dict) or not all(_number(values.get(n)) for n in names):
            return f"{part} is not a finite number per objective"
    return None


def _read_manifests(store: Store, task: str) -> list[tuple[RunDir, dict[str, Any]]]:
    """Every run of ``task`` whose manifest can be ranked; the others are warned about (one line each) and left out."""
    out = []
    for run in store.runs(task):
        try:
            manifest = run.read_manifest()
        except MobenchError as exc:
            warnings.warn(f"{exc}; run left out", CorruptLineWarning, stacklevel=3)
            continue
        problem = manifest_problem(manifest)
        if problem:
            warnings.warn(f"{run.manifest_path}: damaged manifest ({problem}); run left out", CorruptLineWarning, stacklevel=3)
            continue
        out.append((run, manifest))
    return out


def _has_rows(run: RunDir) -> bool:
    try:
        return os.path.getsize(run.rows_path) > 0
    except OSError:
        return False


def option_label(method: str, options: Any) -> str:
    """``method`` alone, or ``method[key=value,...]`` for a run made with ``-o`` options."""
    if not isinstance(options, dict) or not options:
        return method
    return f"{method}[{','.join(f'{k}={v}' for k, v in sorted(options.items()))}]"


def _flat(options: Any, prefix: str = "") -> dict[str, Any]:
    """Nested option dicts as dotted keys: {"experts": {"steps": 32}} -> {"experts.steps": 32}."""
    if not isinstance(options, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _distinct_labels(groups: list[tuple[str, list[tuple[RunDir, dict]]]]) -> list[tuple[str, list[tuple[RunDir, dict]]]]:
    """Lines of one method whose labels collide (the same ``-o`` text, different resolved options: a default
    changed between the runs) get the resolved options they differ in, so no two lines share a name."""
    by_label: dict[str, list[int]] = {}
    for i, (label, _) in enumerate(groups):
        by_label.setdefault(label, []).append(i)
    out = list(groups)
    for label, members in by_label.items():
        if len(members) < 2:
            continue
        resolved = [_flat(groups[i][1][0][1].get("method_options")) for i in members]
        keys = sorted({k for r in resolved for k in r if len({json.dumps(x.get(k), default=str) for x in resolved}) > 1})
        for i, r in zip(members, resolved):
            shown = ",".join(f"{k}={r.get(k)}" for k in keys) or groups[i][1][0][0].run_id
            base = label[:-1] + "," if label.endswith("]") else label + "["
            out[i] = (f"{base}{shown}]", groups[i][1])
    return out


def _group_key(method: str, manifest: dict[str, Any]) -> str:
    """One leaderboard line per method and option set (the resolved options, else the -o text)."""
    options = manifest.get("method_options")
    if options is None:
        options = manifest.get("config", {}).get("options") or {}
    return json.dumps([method, options], sort_keys=True, default=str)


def _gone(manifest: dict[str, Any]) -> bool:
    """A run marked running whose process, on this machine, no longer exists (it was killed)."""
    import socket

    pid = manifest.get("pid")
    if manifest.get("status") != "running" or manifest.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _reason(manifest: dict[str, Any]) -> str:
    if _gone(manifest):
        return "running in its manifest, but its process is gone (killed); the same command resumes it"
    status = str(manifest.get("status", "unknown"))
    reason = manifest.get("reason")
    return f"{status} ({' '.join(str(reason).split())[:200]})" if reason else status


def _select(store: Store, task: str, scale: str | None, calibration: str | None) -> tuple[str, str, list[list[tuple[RunDir, dict]]], list[str]]:
    """The runs to rank: (scale, calibration id, one list of seed runs per method and option set, notes)."""
    manifests = _read_manifests(store, task)
    where = f" in {store.root}"
    if scale:
        manifests = [(r, m) for r, m in manifests if m.get("scale") == scale]
    if not manifests:
        raise MobenchError(f"no runs of task {task!r}{f' at scale {scale!r}' if scale else ''}{where}")
    notes = []
    # Runs without a single row say nothing about a method: they never decide scale, calibration or
    # line, but a failed one is named so that no failure goes unseen.
    empty = [(r, m) for r, m in manifests if not _has_rows(r)]
    manifests = [(r, m) for r, m in manifests if _has_rows(r)]
    for r, m in sorted(empty, key=lambda rm: rm[0].path.as_posix()):
        if m.get("status") != "running" or _gone(m):
            notes.append(f"{option_label(m['method'], m.get('config', {}).get('options'))} run {r.run_id} has no grid point: {_reason(m)}")
    if not manifests:
        raise MobenchError(f"no runs of task {task!r}{f' at scale {scale!r}' if scale else ''} with any grid point{where}"
                           + (f" ({len(empty)} run(s) without one: {'; '.join(notes)})" if notes else ""))
    scales = sorted({str(m.get("scale")) for _, m in manifests})
    if len(scales) > 1:
        counts = ", ".join(f"{s} ({sum(1 for _, m in manifests if str(m.get('scale')) == s)} runs)" for s in scales)
        raise MobenchError(f"runs of task {task!r} at several scales: {counts}; pass --scale {scales[0]} (scales never mix on one leaderboard)")
    chosen_scale = scales[0]
    ids = {calibration_id(m) for _, m in manifests}
    if calibration:
        matching = sorted(i for i in ids if i.startswith(calibration))
        if len(matching) != 1:
            raise MobenchError(f"--calibration {calibration!r} matches {len(matching)} of the calibrations of {task!r} at scale {chosen_scale!r} ({', '.join(sorted(ids))})")
        chosen = matching[0]
    else:
        complete = [(r, m) for r, m in manifests if m.get("status") == "complete"] or manifests
        chosen = calibration_id(max(complete, key=lambda rm: _stamp(rm[1]))[1])
    for other in sorted(ids - {chosen}):
        n = sum(1 for _, m in manifests if calibration_id(m) == other)
        notes.append(f"{n} run(s) under another calibration ({other}) left out; pass --calibration {other} to rank them")
    manifests = [(r, m) for r, m in manifests if calibration_id(m) == chosen]

    by_line: dict[str, list[tuple[RunDir, dict]]] = {}
    for run, m in manifests:
        by_line.setdefault(_group_key(m.get("method", run.path.parent.name), m), []).append((run, m))
    groups = []
    line_notes: list[tuple[int, str]] = []  # (line index, text after the line's name)
    for key in sorted(by_line):
        runs = sorted(by_line[key], key=lambda rm: _stamp(rm[1]), reverse=True)
        label = option_label(runs[0][1]["method"], runs[0][1].get("config", {}).get("options"))
        complete = [(r, m) for r, m in runs if m.get("status") == "complete"]
        pool = complete or runs
        settings = _settings(pool[0][1])  # the newest (complete) run's settings; its other seeds join it
        per_seed: dict[Any, tuple[RunDir, dict]] = {}
        for run, m in pool:
            if _settings(m) == settings:
                per_seed.setdefault(m.get("seed"), (run, m))  # the newest per seed
        chosen_runs = sorted(per_seed.values(), key=lambda rm: _stamp(rm[1]), reverse=True)
        if not complete:
            newest = chosen_runs[0]
            line_notes.append((len(groups), f" has no complete run: ranked on its newest run {newest[0].run_id}, "
                               f"{_reason(newest[1])}, with {len(newest[0].rows())} of {len(newest[1]['grid'])} grid points"))
        else:
            ranked_stamp = _stamp(chosen_runs[0][1])
            for run, m in runs:
                if m.get("status") != "complete" and _stamp(m) > ranked_stamp and (m.get("status") != "running" or _gone(m)):
                    line_notes.append((len(groups), f": a newer run {run.run_id} is {_reason(m)}; the complete run {chosen_runs[0][0].run_id} is ranked"))
        groups.append((label, chosen_runs))
    groups = _distinct_labels(groups)
    # A line's notes name it as the leaderboard does (after two lines of one method got their options).
    notes.extend(groups[i][0] + text for i, text in line_notes)
    return chosen_scale, chosen, groups, notes


def _check_pairable(task: str, runs: list[_Run]) -> None:
    prompts = {}
    for r in runs:
        prompts.setdefault((r.manifest.get("prompts_sha256"), r.manifest.get("n_prompts")), []).append(r)
    if len(prompts) > 1:
        parts = "; ".join(
            f"{n} prompts ({(sha or 'unknown')[:8]}): " + ", ".join(sorted({r.manifest["method"] + "/" + r.run.run_id for r in rs}))
            for (sha, n), rs in prompts.items()
        )
        raise MobenchError(f"runs of task {task!r} were made on different prompts and cannot be paired: {parts}; rerun them on one prompt set")


def _interval(samples: np.ndarray | None, confidence: float) -> Interval | None:
    if samples is None:
        return None
    lo, hi = percentile_interval(samples, confidence)
    return None if math.isnan(lo) else (lo, hi)


def _seed_draws(method: str, k: int, resamples: int, seed: int) -> np.ndarray:
    """Which seed run each replicate uses, k draws with replacement (all zeros for one seed)."""
    if k == 1:
        return np.zeros((resamples, 1), dtype=int)
    rng = np.random.default_rng([seed, zlib.crc32(method.encode())])
    return rng.integers(0, k, size=(resamples, k))


def _entry(label: str, runs: list[_Run], resamples: int, seed: int, confidence: float) -> tuple[Entry, np.ndarray | None]:
    """One method's (and option set's) seed runs, newest first, as its leaderboard line, with its bootstrap HV replicates."""
    newest = runs[0]
    manifest = newest.manifest
    names = list(manifest["objectives"])
    ref = list(manifest["reference_point"])
    # Points are aligned by preference key across seeds (a partial seed run contributes its points only).
    keys = [k for k in newest.keys if all(k in r.keys for r in runs)]
    idx = [[r.keys.index(k) for k in keys] for r in runs]
    weights = newest.weights[idx[0]]
    z = np.mean([r.z[i] for r, i in zip(runs, idx)], axis=0)
    raw = np.mean([r.raw[i] for r, i in zip(runs, idx)], axis=0)
    hv_seeds = [r.hypervolume for r in runs]
    control = [controllability(r.weights, r.z) for r in runs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        spearman = float(np.nanmean([c["spearman"] for c in control]))
        monotone = float(np.nanmean([c["monotone"] for c in control]))

    hv_boot = spearman_boot = z_boot = None
    if all(r.boot_hv is not None for r in runs):
        draws = _seed_draws(label, len(runs), resamples, seed)  # (B, k)
        rows = np.arange(resamples)[:, None]
        hv_boot = np.stack([r.boot_hv for r in runs], axis=1)[rows, draws].mean(axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            spearman_boot = np.nanmean(np.stack([r.boot_spearman for r in runs], axis=1)[rows, draws], axis=1)
        aligned = np.stack([r.boot_z[:, i] for r, i in zip(runs, idx)], axis=1)  # (B, k, P, m)
        z_boot = aligned[rows, draws].mean(axis=1)  # (B, P, m)

    front = pareto_front(z) if len(z) else []
    empty = np.mean([r.empty[i] for r, i in zip(runs, idx)], axis=0) if all(r.empty is not None for r in runs) else None
    per_point = []
    for p, key in enumerate(keys):
        per_point.append(PointView(
            key=key,
            weights=[float(w) for w in weights[p]],
            z={n: float(z[p, i]) for i, n in enumerate(names)},
            z_ci={n: _interval(None if z_boot is None else z_boot[:, p, i], confidence) for i, n in enumerate(names)},
            raw={n: float(raw[p, i]) for i, n in enumerate(names)},
            inside_box=bool(np.all(z[p] > np.asarray(ref))),
            on_front=p in front,
            empty=None if empty is None else float(empty[p]),
        ))
    ends = {}
    for i, name in enumerate(names):
        corner = [p for p in range(len(keys)) if abs(weights[p, i] - 1.0) < 1e-9]
        if corner:
            ends[f"w={name}"] = {n: float(raw[corner[0], j]) for j, n in enumerate(names)}
    offline = float(np.mean([
        _seconds(r.manifest.get("prepare_seconds")) + sum(_seconds(row.get("offline_seconds")) for row in r.run.rows())
        for r in runs
    ]))
    decode = float(np.mean([
        sum(_seconds(row.get("wall_seconds")) - _seconds(row.get("offline_seconds")) for row in r.run.rows())
        for r in runs
    ]))
    return Entry(
        label=label,
        options=dict(manifest.get("config", {}).get("options") or {}),
        method=manifest["method"],
        run_id=manifest["run_id"],
        scale=manifest["scale"],
        points=len(keys),
        grid_size=len(manifest["grid"]),
        hypervolume=float(np.mean(hv_seeds)),
        front_size=len(front),
        spearman=spearman,
        monotone=monotone,
        objectives=names,
        ends=ends,
        wall_seconds=offline + decode,
        offline_seconds=offline,
        decode_seconds=decode,
        offline_evaluations=int(np.mean([int(r.manifest.get("offline_evaluations") or 0) for r in runs])),
        status="complete" if all(r.manifest.get("status") == "complete" for r in runs) else
        next(r.manifest.get("status", "unknown") for r in runs if r.manifest.get("status") != "complete"),
        weights=[[float(w) for w in row] for row in weights],
        normalised=[[float(v) for v in row] for row in z],
        front=front,
        reference_point=[float(v) for v in ref],
        hypervolume_ci=_interval(hv_boot, confidence),
        spearman_ci=_interval(spearman_boot, confidence),
        seeds=[r.seed for r in runs],
        n_seeds=len(runs),
        run_ids=[r.manifest["run_id"] for r in runs],
        hypervolume_per_seed=[float(h) for h in hv_seeds],
        per_point=per_point,
    ), hv_boot


def build(
    store: Store,
    task: str,
    scale: str | None = None,
    calibration: str | None = None,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> Board:
    """The leaderboard of ``task``: methods ranked by hypervolume, with paired-bootstrap CIs and comparisons."""
    if resamples < 1:
        raise MobenchError(f"--resamples must be at least 1, got {resamples}")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # numpy and scipy warn about constant or empty inputs (a Spearman of a flat front): those cases give
        # NaN, shown as n/a or null, and the warnings would be stray lines on stderr
        warnings.simplefilter("ignore", RuntimeWarning)
        return _build(store, task, scale, calibration, resamples, seed, confidence)


def _build(store: Store, task: str, scale: str | None, calibration: str | None, resamples: int, seed: int,
           confidence: float) -> Board:
    chosen_scale, cal, groups, notes = _select(store, task, scale, calibration)
    labelled = [(label, [r for run, m in group if (r := load_run(run, m)) is not None]) for label, group in groups]
    labelled = [(label, group) for label, group in labelled if group]
    loaded = [group for _, group in labelled]
    if not loaded:
        raise MobenchError(f"no runs of task {task!r} with any grid point at scale {chosen_scale!r} in {store.root}")
    every = [r for group in loaded for r in group]
    _check_pairable(task, every)
    manifest = loaded[0][0].manifest
    names = list(manifest["objectives"])

    # One draw of prompt indices for every run on the task: the pairing.
    bootable = [r for r in every if r.per_prompt is not None]
    points = sum(len(r.keys) for r in every)
    need = 8 * max(resamples * points * len(names), max((r.per_prompt.size for r in bootable), default=0))
    if len(names) > 2:
        need = max(need, 8 * max(len(r.keys) for r in every) ** 2 * len(names))  # the grid-step search of controllability
    if need > MAX_BOOTSTRAP_BYTES:
        raise MobenchError(f"the leaderboard of {task!r} would need about {need / 2**30:.1f} GiB ({points:,} grid points, "
                           f"{resamples} resamples, {len(names)} objectives); pass a smaller --resamples or rank smaller grids")
    if bootable:
        n = bootable[0].per_prompt.shape[1]
        counts = resample_counts(n, resamples, np.random.default_rng(seed)).astype(float) / n  # (B, N)
        for r in bootable:
            r.boot_z = np.einsum("bn,pnm->bpm", counts, r.per_prompt)
            r.boot_hv = hypervolume_batch(r.boot_z, r.manifest["reference_point"])
            r.boot_spearman = spearman_batch(r.weights, r.boot_z)
        missing = sorted({label for label, group in labelled for r in group if r.per_prompt is None})
        if missing:
            notes.append(f"no complete per-prompt scores for {', '.join(missing)}: no intervals for them")
    else:
        notes.append("no run has complete per-prompt scores: no intervals")

    built = [_entry(label, group, resamples, seed, confidence) for label, group in labelled]
    built.sort(key=lambda eb: (-eb[0].hypervolume, eb[0].label))
    entries = [e for e, _ in built]
    for rank, e in enumerate(entries, start=1):
        e.rank = rank
    comparisons = []
    for i in range(len(built)):
        for j in range(i + 1, len(built)):
            (a, boot_a), (b, boot_b) = built[i], built[j]
            ci = None if boot_a is None or boot_b is None else _interval(boot_a - boot_b, confidence)
            separable = None if ci is None else not (ci[0] <= 0.0 <= ci[1])
            comparisons.append(Comparison(a.label, b.label, a.rank, b.rank, a.hypervolume - b.hypervolume, ci, separable))
            if separable is False:
                a.not_separable_from.append(b.rank)
                b.not_separable_from.append(a.rank)
    for e in entries:
        e.not_separable_from.sort()
    first = every[0].manifest
    return Board(
        task=task,
        scale=chosen_scale,
        calibration=cal,
        objectives=names,
        directions=dict(zip(names, _directions(manifest, names))),
        normalisation={k: dict(v) for k, v in manifest["normalisation"].items()},
        reference_point=[float(v) for v in manifest["reference_point"]],
        n_prompts=first.get("n_prompts"),
        prompts_sha256=first.get("prompts_sha256"),
        resamples=resamples,
        bootstrap_seed=seed,
        confidence=confidence,
        entries=entries,
        comparisons=comparisons,
        notes=notes,
    )


def leaderboard(store: Store, task: str, scale: str | None = None, **kwargs: Any) -> list[Entry]:
    """Every method with a run on ``task``, ranked by hypervolume (see :func:`build` for the whole board)."""
    return build(store, task, scale, **kwargs).entries
