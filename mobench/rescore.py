"""Re-score a store's runs with their task's current objectives and calibration, keeping what was there.

When an objective's scorer changes (a fixed head, a new rule such as the empty-reply floor), the texts a run
generated are still valid; only their scores are stale. ``mobench rescore --task T`` scores every stored
response again with the task's objectives as they load now, recomputes each grid point's means, standard
errors and z-scores under the task's current calibration, and rewrites the run's rows, generations and
manifest (objective provenance, normalisation, reference point). Nothing is lost: the files as they were are
copied first to ``rescored/<UTC stamp>/`` inside the run's folder, and the manifest's ``rescores`` list names
that copy and the scoring rule and calibration id the run had before.

What a rescore cannot do: a method whose artifacts were tuned or trained on the old objective (an RL policy,
a value model, a library compiled on validation scores) keeps the texts it generated under the old one; the
manifest's ``rescores`` entry says so, and a fresh ``mobench run`` rebuilds those artifacts.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from mobench.api import MobenchError, TaskInstance
from mobench.store import RunDir, Store, _json_line, write_json_atomic


@dataclass
class Rescored:
    """What one run's rescore did (or why it was skipped: ``skipped`` is the reason)."""

    method: str
    run_id: str
    points: int = 0
    max_abs_dz: float = 0.0  # the largest change of a point's z on any objective
    backup: str | None = None
    skipped: str | None = None


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(b"".join(_json_line(r) for r in records))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rescore_run(run: RunDir, task: TaskInstance, stamp: str) -> Rescored:
    """Re-score ``run`` with ``task``'s objectives and calibration (see the module's docstring)."""
    from mobench.leaderboard import calibration_id, scoring_rule
    from mobench.runner import score_point

    manifest = run.read_manifest()
    out = Rescored(str(manifest.get("method", run.path.parent.name)), run.run_id)
    if manifest.get("status") == "running":
        out.skipped = "its manifest says running (finish or resume it first)"
        return out
    if list(manifest.get("objectives") or []) != list(task.objective_names):
        out.skipped = f"objectives {manifest.get('objectives')} are not the task's {list(task.objective_names)}"
        return out
    rows = run.rows()
    if not rows:
        out.skipped = "no rows"
        return out
    generations = run.generations()
    by_key: dict[str, list[dict[str, Any]]] = {}
    for g in generations:
        by_key.setdefault(g["preference_key"], []).append(g)
    new_rows, new_generations = [], []
    for row in rows:
        items = sorted(by_key.get(row["preference_key"], []), key=lambda g: g.get("prompt_index", 0))
        if len(items) != row.get("n"):
            out.skipped = f"point {row['preference_key']} has {len(items)} stored responses, its row says {row.get('n')}"
            return out
        start = time.perf_counter()
        means, stderrs, normalised, scores = score_point(task, [g["prompt"] for g in items], [g["response"] for g in items])
        before = row.get("normalised") or {}
        for name, z in normalised.items():
            if isinstance(before.get(name), (int, float)):
                out.max_abs_dz = max(out.max_abs_dz, abs(z - before[name]))
        new_rows.append({**row, "mean": means, "stderr": stderrs, "normalised": normalised,
                         "scoring_seconds": time.perf_counter() - start})
        new_generations.extend({**g, "scores": s} for g, s in zip(items, scores))
    backup = run.path / "rescored" / stamp
    with run.locked():
        backup.mkdir(parents=True, exist_ok=False)
        for path in (run.manifest_path, run.rows_path, run.generations_path):
            if path.exists():
                shutil.copy2(path, backup / path.name)
        _write_jsonl(run.generations_path, new_generations)
        _write_jsonl(run.rows_path, new_rows)
        updated = dict(manifest)
        updated.update({
            "objective_provenance": {o.name: o.provenance() for o in task.objectives},
            "directions": {o.name: o.direction for o in task.objectives},
            "normalisation": {k: asdict(v) for k, v in sorted(task.normalisation.items())},
            "reference_point": list(task.reference_point),
        })
        updated["rescores"] = list(manifest.get("rescores") or []) + [{
            "at": stamp, "backup": str(backup.relative_to(run.path)),
            "scoring_before": scoring_rule(manifest), "calibration_before": calibration_id(manifest),
            "note": "texts kept; artifacts the method tuned or trained on the old objectives were not rebuilt",
        }]
        write_json_atomic(run.manifest_path, updated)
    out.points, out.backup = len(new_rows), str(backup)
    return out


def rescore(store: Store, task: TaskInstance, methods: list[str] | None = None,
            on_event: Callable[[str], None] | None = None) -> list[Rescored]:
    """Re-score every run of ``task`` (at its scale; only ``methods`` when given) in ``store``."""
    say = on_event or (lambda message: None)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    done = []
    runs = [r for r in store.runs(task.name) if r.manifest_path.exists()]
    for run in runs:
        try:
            manifest = run.read_manifest()
        except MobenchError as err:
            done.append(Rescored(run.path.parent.name, run.run_id, skipped=str(err)))
            continue
        if manifest.get("scale") != task.scale or (methods and manifest.get("method") not in methods):
            continue
        say(f"rescoring {manifest.get('method')} {run.run_id}")
        done.append(rescore_run(run, task, stamp))
    if not done:
        which = f"{', '.join(methods)} on " if methods else ""
        raise MobenchError(f"no run of {which}{task.name!r} at scale {task.scale!r} in {store.root}")
    return done


def load_calibrated(registry, task: str, scale: str, context) -> TaskInstance:
    """The task as a run loads it: its objectives and its calibration attached."""
    from mobench.calibration import attach
    from mobench.runner import check_task

    spec = registry.task(task)
    instance = attach(spec, spec.load(scale, context))
    check_task(instance, spec.objectives, registry)
    return instance


def summary_line(r: Rescored) -> str:
    if r.skipped:
        return f"{r.method} {r.run_id}: skipped, {r.skipped}"
    return f"{r.method} {r.run_id}: {r.points} points rescored, largest change of a point's z {r.max_abs_dz:.3f} (before: {r.backup})"


__all__ = ["Rescored", "rescore", "rescore_run", "load_calibrated", "summary_line"]
