"""Rendering of a task's leaderboard (:mod:`mobench.leaderboard` computes it): terminal, Markdown, JSON, plots.

Every view shows one scale and one calibration (the board's); hypervolume and Spearman carry their 95%
paired-bootstrap interval as ``value [low, high]``; ``≈`` lists the ranks whose hypervolume difference
from this one has an interval holding 0 (the data cannot separate them).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mobench.api import MobenchError
from mobench.leaderboard import Board, Entry
from mobench.store import strict as _strict

#: What ``plot --out`` may end with (what matplotlib's Agg backend writes).
PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")

_ONE_METHOD = "only one method has runs on this board: nothing to compare"
_RIGHT = ("rank", "hypervolume [95% CI]", "spearman [95% CI]", "monotone", "seeds", "offline s", "decode s", "empty replies",
          "HV difference", "95% CI")


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _with_ci(value: float | None, ci, digits: int = 3, ci_digits: int | None = None) -> str:
    text = _fmt(value, digits)
    if ci is None:
        return text
    d = digits if ci_digits is None else ci_digits
    return f"{text} [{_fmt(ci[0], d)}, {_fmt(ci[1], d)}]"


def _ends_text(entry: Entry) -> list[str]:
    """The raw scores at each objective's corner (w_i = 1), one cell per objective."""
    out = []
    for corner in entry.objectives:
        scores = entry.ends.get(f"w={corner}")
        out.append("-" if scores is None else " / ".join(_fmt(scores[n], 2) for n in entry.objectives))
    return out


def _headers(board: Board) -> list[str]:
    names = board.objectives
    joined = "/".join(names)
    return [
        "rank", "method", "hypervolume [95% CI]", "≈ ranks", "front", "spearman [95% CI]", "monotone",
        *[f"{joined} at w={n}" for n in names], "points", "seeds", "offline s", "decode s", "run",
    ]


def _cells(e: Entry) -> list[str]:
    points = f"{e.points}/{e.grid_size}" + ("" if e.status == "complete" else f" ({e.status})")
    return [
        str(e.rank), e.label, _with_ci(e.hypervolume, e.hypervolume_ci, 4, 3),
        ", ".join(map(str, e.not_separable_from)) or "-", f"{e.front_size}/{e.points}",
        _with_ci(e.spearman, e.spearman_ci, 2), _fmt(e.monotone, 2), *_ends_text(e),
        points, str(e.n_seeds), _offline_text(e), f"{e.decode_seconds:.0f}", e.run_id,
    ]


def _offline_text(e: Entry) -> str:
    """Offline seconds of the run (prepare + training inside generate), with the evaluations it counted."""
    text = f"{e.offline_seconds:.0f}"
    return text + (f" ({e.offline_evaluations} evals)" if e.offline_evaluations else "")


def _title(board: Board, what: str = "leaderboard") -> str:
    return f"mobench {what}: {board.task} ({board.scale}, calibration {board.calibration})"


def md_escape(text: Any) -> str:
    """Markdown from any text (a table cell, a note): one line, pipes escaped, HTML shown as text, never run."""
    out = " ".join(str(text).split())
    for char, repl in (("\\", "\\\\"), ("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|")):
        out = out.replace(char, repl)
    return out


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(md_escape(h) for h in headers) + " |",
             "|" + "|".join("---:" if h in _RIGHT or h.startswith("z ") else "---" for h in headers) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in cells) + " |" for cells in rows]
    return lines


def _legend(board: Board) -> str:
    pct = f"{board.confidence:.0%}"
    return (
        f"Hypervolume of each method's grid points (mean z over {board.n_prompts} prompts; z = direction x "
        f"(score - mean) / std from the task's calibration) against the reference point {board.reference_point}; "
        f"[low, high] = {pct} percentile interval of a paired bootstrap over prompts ({board.resamples} resamples, "
        f"seed {board.bootstrap_seed}, the same prompts for every method; seeds resampled too where a method has "
        "several, and its hypervolume is the mean over seeds); ≈ ranks = ranks whose hypervolume difference "
        f"from this one has a {pct} interval holding 0; front = non-dominated grid points; spearman = mean over "
        "objectives of corr(w_i, z_i); monotone = share of adjacent grid steps where raising w_i did not lower z_i."
    )


def points_rows(board: Board) -> tuple[list[str], list[list[str]]]:
    """The per-point view: each method's grid points, their z with CIs, inside the box, on the front, empty replies."""
    headers = ["method", "w", *[f"z {n} [95% CI]" for n in board.objectives], "inside box", "on front", "empty replies"]
    rows = []
    for e in board.entries:
        for p in e.per_point:
            rows.append([
                e.label, ", ".join(f"{w:.2f}" for w in p.weights),
                *[_with_ci(p.z[n], p.z_ci[n], 2) for n in board.objectives],
                "yes" if p.inside_box else "no", "yes" if p.on_front else "no",
                "n/a" if p.empty is None else f"{100 * p.empty:.0f}%",
            ])
    return headers, rows


def comparison_rows(board: Board) -> tuple[list[str], list[list[str]]]:
    """Every pair of methods: HV(a) - HV(b), its paired-bootstrap CI and whether the data separate them."""
    headers = ["rank a", "method a", "rank b", "method b", "HV difference", "95% CI", "separable"]
    rows = []
    for c in board.comparisons:
        ci = "n/a" if c.ci is None else f"[{_fmt(c.ci[0], 4)}, {_fmt(c.ci[1], 4)}]"
        sep = "n/a" if c.separable is None else ("yes" if c.separable else "no")
        rows.append([str(c.rank_a), c.a, str(c.rank_b), c.b, _fmt(c.difference, 4), ci, sep])
    return headers, rows


def to_markdown(board: Board, per_point: bool = True, comparisons: bool = True) -> str:
    """GitHub-flavoured Markdown (a CI job summary): the leaderboard, then the comparisons and per-point view."""
    lines = [f"### {md_escape(_title(board))}", ""]
    lines += _md_table(_headers(board), [_cells(e) for e in board.entries])
    lines += ["", _legend(board)]
    for note in board.notes:
        lines += ["", f"Note: {md_escape(note)}."]
    if comparisons and board.comparisons:
        lines += ["", f"#### Pairwise hypervolume differences ({md_escape(board.task)}, {board.scale})", ""]
        lines += _md_table(*comparison_rows(board))
    if per_point:
        lines += ["", f"#### Per grid point ({md_escape(board.task)}, {board.scale})", ""]
        lines += _md_table(*points_rows(board))
        lines += ["", f"inside box = beats the reference point {board.reference_point} on every objective (only "
                  "such points add hypervolume); on front = not dominated by another point of the same method; empty "
                  "replies = share of the point's responses that are empty or whitespace (n/a: responses not stored)."]
    return "\n".join(lines) + "\n"


def compare_markdown(board: Board) -> str:
    """The pairwise difference table alone, in Markdown."""
    lines = [f"### {md_escape(_title(board, 'compare'))}", ""]
    if not board.comparisons:
        return "\n".join([*lines, _ONE_METHOD, *[f"\nNote: {md_escape(note)}." for note in board.notes]]) + "\n"
    lines += _md_table(*comparison_rows(board))
    lines += ["", f"HV difference = HV(method a) - HV(method b); {board.confidence:.0%} percentile interval of a paired "
              f"bootstrap over the same {board.n_prompts} prompts ({board.resamples} resamples, seed "
              f"{board.bootstrap_seed}); separable = the interval excludes 0."]
    for note in board.notes:
        lines += ["", f"Note: {md_escape(note)}."]
    return "\n".join(lines) + "\n"


def board_dict(board: Board) -> dict[str, Any]:
    """The whole board as plain data (strict JSON: no NaN or Infinity)."""
    return _strict(asdict(board))


def to_json(board: Board) -> str:
    """The board as strict JSON: task, scale, calibration, bootstrap settings, entries, comparisons, notes."""
    return json.dumps(board_dict(board), indent=2, allow_nan=False) + "\n"


def compare_json(board: Board) -> str:
    data = board_dict(board)
    keep = ("task", "scale", "calibration", "reference_point", "n_prompts", "resamples", "bootstrap_seed",
            "confidence", "comparisons", "notes")
    return json.dumps({k: data[k] for k in keep}, indent=2, allow_nan=False) + "\n"


def _rich_table(title: str, headers: list[str], rows: list[list[str]]):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    for h in headers:
        table.add_column(escape(h), justify="right" if h in _RIGHT or h.startswith("z ") else "left")
    for cells in rows:
        table.add_row(*(escape(c) for c in cells))
    return table


def print_table(board: Board, console, per_point: bool = False) -> None:
    """The leaderboard as a rich table in the terminal (and, with ``per_point``, the per-point view)."""
    console.print(_rich_table(_title(board), _headers(board), [_cells(e) for e in board.entries]))
    if per_point:
        console.print(_rich_table(f"per grid point: {board.task} ({board.scale})", *points_rows(board)))
    for note in board.notes:
        console.print(f"note: {note}", markup=False)


def print_compare(board: Board, console) -> None:
    """The pairwise difference table in the terminal."""
    if not board.comparisons:
        console.print(_ONE_METHOD, markup=False)
        return
    console.print(_rich_table(_title(board, "compare"), *comparison_rows(board)))
    for note in board.notes:
        console.print(f"note: {note}", markup=False)


def check_plot_path(out: str | Path) -> Path:
    """The figure's path, checked before any work: a file name ending in a format matplotlib writes."""
    out = Path(out)
    if out.is_dir():
        raise MobenchError(f"--out {out} is a folder; give the figure's file name, like {out / 'pareto.png'}")
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        shown = f"'.{suffix}'" if suffix else "no extension"
        raise MobenchError(f"--out {out} has {shown}; the figure is written as {', '.join('.' + f for f in PLOT_FORMATS)}")
    return out


def _plain(text: Any) -> str:
    """Text for matplotlib drawn as it is: '$' would start mathtext (and crash on an unbalanced one)."""
    return str(text).replace("\\", "\\\\").replace("$", r"\$")


def _draw_pair(ax, board: Board, i: int, j: int, legend: bool) -> None:
    """Objective i against objective j: every method's points with CI bars and its front in that plane."""
    names = board.objectives
    xname, yname = names[i], names[j]
    for e in board.entries:
        xs = [p.z[xname] for p in e.per_point]
        ys = [p.z[yname] for p in e.per_point]
        ci = _with_ci(e.hypervolume, e.hypervolume_ci, 3)
        line = ax.scatter(xs, ys, s=28, alpha=0.75, label=_plain(f"{e.label} (HV {ci})"), zorder=3)
        color = line.get_facecolor()[0]
        if xs and all(p.z_ci[xname] and p.z_ci[yname] for p in e.per_point):
            xerr = [[max(0.0, x - p.z_ci[xname][0]) for x, p in zip(xs, e.per_point)], [max(0.0, p.z_ci[xname][1] - x) for x, p in zip(xs, e.per_point)]]
            yerr = [[max(0.0, y - p.z_ci[yname][0]) for y, p in zip(ys, e.per_point)], [max(0.0, p.z_ci[yname][1] - y) for y, p in zip(ys, e.per_point)]]
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor=color, alpha=0.4, lw=0.8)
        if len(names) == 2:
            front = sorted((e.normalised[k][i], e.normalised[k][j]) for k in e.front)
            if len(front) > 1:
                ax.plot([p[0] for p in front], [p[1] for p in front], color=color, lw=1.4)
    ref = board.reference_point
    ax.scatter([ref[i]], [ref[j]], marker="x", color="black", label="reference point", zorder=4)
    ax.axvline(ref[i], color="black", lw=0.6, ls=":")
    ax.axhline(ref[j], color="black", lw=0.6, ls=":")
    ax.set_xlabel(_plain(f"{xname} (z, higher is better)"))
    ax.set_ylabel(_plain(f"{yname} (z, higher is better)"))
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="best")


def plot(board: Board, out: str | Path) -> Path:
    """Every method's grid points (with 95% CI bars) and Pareto front in one figure.

    Two objectives: one plane. More: a scatter matrix, one panel per pair of objectives (objective i
    against objective j below the diagonal), so no objective goes unplotted.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = check_plot_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    m = len(board.objectives)
    title = _plain(f"mobench: {board.task} ({board.scale}); bars: {board.confidence:.0%} CI")
    if m <= 2:
        fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=120)
        _draw_pair(ax, board, 0, m - 1, legend=True)
        ax.set_title(title)
    else:
        size = 3.2 * (m - 1)
        fig, axes = plt.subplots(m - 1, m - 1, figsize=(size, size), dpi=100, squeeze=False)
        for row in range(m - 1):
            for col in range(m - 1):
                ax = axes[row][col]
                i, j = col, row + 1  # x: objective col, y: objective row + 1 (lower triangle)
                if i >= j:
                    ax.axis("off")
                    continue
                _draw_pair(ax, board, i, j, legend=False)
        handles, labels = axes[-1][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="upper right")
        fig.suptitle(title)
    fig.tight_layout()
    try:
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out
