"""Leaderboards (terminal, Markdown, JSON) and Pareto plots, computed from the store alone."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mobench.api import MobenchError
from mobench.metrics import controllability, hypervolume, pareto_front
from mobench.store import CorruptLineWarning, RunDir, Store


@dataclass
class Entry:
    """One method's line on the leaderboard (its latest run on the task at the scale)."""

    method: str
    run_id: str
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
    weights: list[list[float]] = field(default_factory=list)
    normalised: list[list[float]] = field(default_factory=list)
    front: list[int] = field(default_factory=list)
    reference_point: list[float] = field(default_factory=list)


def _entry(run: RunDir, manifest: dict[str, Any]) -> Entry | None:
    rows = run.rows()
    if not rows:
        return None
    names = manifest["objectives"]
    weights = [row["weights"] for row in rows]
    normalised = [[row["normalised"][n] for n in names] for row in rows]
    ref = manifest["reference_point"]
    front = pareto_front(normalised)
    control = controllability(weights, normalised)
    ends = {}
    for i, name in enumerate(names):
        corner = [j for j, w in enumerate(weights) if abs(w[i] - 1.0) < 1e-9]
        if corner:
            ends[f"w={name}"] = {n: rows[corner[0]]["mean"][n] for n in names}
    wall = float(manifest.get("prepare_seconds") or 0.0) + sum(float(row.get("wall_seconds", 0.0)) for row in rows)
    return Entry(
        method=manifest["method"],
        run_id=manifest["run_id"],
        scale=manifest["scale"],
        points=len(rows),
        grid_size=len(manifest["grid"]),
        hypervolume=hypervolume(normalised, ref),
        front_size=len(front),
        spearman=control["spearman"],
        monotone=control["monotone"],
        objectives=names,
        ends=ends,
        wall_seconds=wall,
        status=manifest.get("status", "unknown"),
        weights=weights,
        normalised=normalised,
        front=front,
        reference_point=ref,
    )


def leaderboard(store: Store, task: str, scale: str | None = None) -> list[Entry]:
    """Every method with a run on ``task`` (latest run each), ranked by hypervolume."""
    latest: dict[str, tuple[str, RunDir, dict]] = {}
    for run in store.runs(task):
        try:
            manifest = run.read_manifest()
        except MobenchError as exc:
            warnings.warn(str(exc), CorruptLineWarning, stacklevel=2)
            continue
        if scale and manifest.get("scale") != scale:
            continue
        stamp = manifest.get("finished_at") or manifest.get("started_at") or ""
        method = manifest.get("method", run.path.parent.name)
        if method not in latest or stamp > latest[method][0]:
            latest[method] = (stamp, run, manifest)
    entries = [e for _, run, manifest in latest.values() if (e := _entry(run, manifest)) is not None]
    if not entries:
        raise MobenchError(f"no runs of task {task!r}{f' at scale {scale!r}' if scale else ''} in {store.root}")
    entries.sort(key=lambda e: (-e.hypervolume, e.method))
    return entries


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ends_text(entry: Entry) -> list[str]:
    out = []
    for corner in (entry.objectives[0], entry.objectives[-1]):
        scores = entry.ends.get(f"w={corner}")
        out.append("-" if scores is None else " / ".join(_fmt(scores[n], 2) for n in entry.objectives))
    return out


def _headers(entries: list[Entry]) -> list[str]:
    names = entries[0].objectives
    joined = "/".join(names)
    return [
        "rank", "method", "hypervolume", "front", "spearman", "monotone",
        f"{joined} at w={names[0]}", f"{joined} at w={names[-1]}", "points", "wall s", "run",
    ]


def _cells(rank: int, e: Entry) -> list[str]:
    first, last = _ends_text(e)
    return [
        str(rank), e.method, _fmt(e.hypervolume, 4), f"{e.front_size}/{e.points}", _fmt(e.spearman, 2),
        _fmt(e.monotone, 2), first, last, f"{e.points}/{e.grid_size}", f"{e.wall_seconds:.0f}", e.run_id,
    ]


def to_markdown(entries: list[Entry], task: str) -> str:
    """A GitHub-flavoured Markdown table, ready for a CI job summary."""
    headers = _headers(entries)
    lines = [f"### mobench leaderboard: {task} ({entries[0].scale})", "", "| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---:" if h in ("rank", "hypervolume", "spearman", "monotone", "wall s") else "---" for h in headers) + "|")
    for rank, e in enumerate(entries, start=1):
        lines.append("| " + " | ".join(_cells(rank, e)) + " |")
    lines += ["", "Hypervolume of the normalised mean scores against the task's fixed reference point "
              f"{entries[0].reference_point}; front = non-dominated grid points; spearman = mean over objectives "
              "of corr(w_i, score_i); monotone = share of adjacent grid steps where raising w_i did not lower score_i."]
    return "\n".join(lines) + "\n"


def to_json(entries: list[Entry], task: str) -> str:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps({"task": task, "entries": [clean(asdict(e)) for e in entries]}, indent=2) + "\n"


def print_table(entries: list[Entry], task: str, console) -> None:
    """A rich table in the terminal."""
    from rich.table import Table

    table = Table(title=f"mobench leaderboard: {task} ({entries[0].scale})")
    for h in _headers(entries):
        table.add_column(h, justify="right" if h in ("rank", "hypervolume", "spearman", "monotone", "wall s") else "left")
    for rank, e in enumerate(entries, start=1):
        table.add_row(*_cells(rank, e))
    console.print(table)


def plot(entries: list[Entry], task: str, out: str | Path) -> Path:
    """Every method's grid points and Pareto front in one figure (first two objectives)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = entries[0].objectives
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=120)
    for e in entries:
        xs = [p[0] for p in e.normalised]
        ys = [p[-1] for p in e.normalised]
        line = ax.scatter(xs, ys, s=28, alpha=0.75, label=f"{e.method} (HV {e.hypervolume:.3f})")
        front = sorted((e.normalised[i][0], e.normalised[i][-1]) for i in e.front)
        if len(front) > 1:
            ax.plot([p[0] for p in front], [p[1] for p in front], color=line.get_facecolor()[0], lw=1.4)
    ref = entries[0].reference_point
    ax.scatter([ref[0]], [ref[-1]], marker="x", color="black", label="reference point")
    ax.set_xlabel(f"{names[0]} (normalised, higher is better)")
    ax.set_ylabel(f"{names[-1]} (normalised, higher is better)")
    ax.set_title(f"mobench: {task} ({entries[0].scale})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
