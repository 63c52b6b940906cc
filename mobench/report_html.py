"""One self-contained HTML page of a task's leaderboard, for CI to publish (an artifact, a Pages site).

The page holds everything inline: CSS in a ``<style>`` element, the Pareto plot as a base64 PNG ``data:``
URI, no script, no font, no link to fetch. A Content-Security-Policy meta tag forbids scripts and every
network load, so the page renders the same offline, from an artifact zip or an e-mail. It shows the
leaderboard with CIs, the pairwise HV differences, the plot, the per-point table and a few generations
per grid point. Every piece of text (labels, notes, prompts, responses, option values) goes through
:func:`html.escape`: a response that says ``<script>`` is shown as text, never run.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from mobench.leaderboard import Board
from mobench.report import _RIGHT, _cells, _headers, _legend, _title, comparison_rows, points_rows
from mobench.store import Store

#: Generations shown per grid point (the first prompts of the run, in prompt order).
SAMPLES_PER_POINT = 2

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #1b1f24; }
h1 { font-size: 20px; margin: 0 0 8px; } h2 { font-size: 16px; margin: 28px 0 8px; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; vertical-align: top; }
th { background: #f6f8fa; text-align: left; font-size: 12.5px; } td.num, th.num { text-align: right; } td.num { white-space: nowrap; }
tr:nth-child(even) td { background: #fbfcfd; }
p.legend, p.note { color: #57606a; max-width: 110ch; font-size: 12.5px; }
img.plot { width: 560px; max-width: 100%; border: 1px solid #d0d7de; }
.layout { display: flex; gap: 24px; align-items: flex-start; } .layout > .side { flex: 1 1 0; min-width: 320px; }
pre { white-space: pre-wrap; word-break: break-word; margin: 2px 0; font-size: 12px; background: #f6f8fa; padding: 6px; }
details { margin: 4px 0 10px; } summary { cursor: pointer; font-weight: 600; }
.meta { color: #57606a; font-size: 12px; }
"""


def _e(text: Any) -> str:
    """Any text as HTML text and attribute value: <, >, &, ' and " escaped."""
    return html.escape(str(text), quote=True)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    def cell(tag: str, head: str, text: str) -> str:
        cls = ' class="num"' if head in _RIGHT or head.startswith("z ") else ""
        return f"<{tag}{cls}>{_e(text)}</{tag}>"

    head = "".join(cell("th", h, h) for h in headers)
    body = "".join("<tr>" + "".join(cell("td", h, c) for h, c in zip(headers, cells)) + "</tr>" for cells in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def generation_samples(store: Store, board: Board, per_point: int = SAMPLES_PER_POINT) -> dict[str, list[dict[str, Any]]]:
    """A few generations per grid point of each board line's newest run: label -> points in grid order,
    each ``{"weights", "samples": [{"prompt_index", "prompt", "response", "scores"}]}`` (committed rows only)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for entry in board.entries:
        by_key: dict[str, list[dict[str, Any]]] = {}
        for g in store.run(board.task, entry.method, entry.run_id).generations():
            by_key.setdefault(str(g.get("preference_key")), []).append(g)
        points = []
        for point in entry.per_point:
            ordered = sorted(by_key.get(point.key, []), key=lambda g: g.get("prompt_index") if isinstance(g.get("prompt_index"), int) else 0)
            points.append({"weights": point.weights, "samples": [
                {k: g.get(k) for k in ("prompt_index", "prompt", "response", "scores")} for g in ordered[:per_point]]})
        out[entry.label] = points
    return out


def _samples_html(board: Board, samples: dict[str, list[dict[str, Any]]]) -> str:
    parts = []
    for label, points in samples.items():
        parts.append(f"<h3>{_e(label)}</h3>")
        for point in points:
            weights = ", ".join(f"{n}={w:.2f}" for n, w in zip(board.objectives, point["weights"]))
            items = []
            for s in point["samples"]:
                scores = s.get("scores") if isinstance(s.get("scores"), dict) else {}
                shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in scores.items())
                items.append(f'<div class="meta">prompt {_e(s.get("prompt_index"))}: {_e(shown)}</div>'
                             f"<pre>{_e(s.get('prompt'))}</pre><pre><b>response:</b> {_e(s.get('response'))}</pre>")
            body = "".join(items) or '<p class="note">no generations stored for this point</p>'
            parts.append(f"<details><summary>w = ({_e(weights)})</summary>{body}</details>")
    return "".join(parts)


def to_html(board: Board, plot_png: bytes | None = None, samples: dict[str, list[dict[str, Any]]] | None = None) -> str:
    """The whole page: title, leaderboard, notes, plot beside the pairwise table, per-point table, generations."""
    title = _title(board)
    notes = "".join(f'<p class="note">Note: {_e(n)}.</p>' for n in board.notes)
    plot = ""
    if plot_png:
        data = base64.b64encode(plot_png).decode("ascii")
        plot = f'<img class="plot" alt="Pareto plot of {_e(board.task)}" src="data:image/png;base64,{data}">'
    if board.comparisons:
        pairs = ('<div class="side"><h2>Pairwise hypervolume differences</h2>' + _table(*comparison_rows(board)) +
                 '<p class="legend">HV difference = HV(method a) - HV(method b) with its paired-bootstrap interval; '
                 "separable = the interval excludes 0.</p></div>")
    else:
        pairs = '<div class="side"><h2>Pairwise hypervolume differences</h2><p class="note">only one method: nothing to compare</p></div>'
    sections = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{board.n_prompts} prompts, {board.resamples} bootstrap resamples (seed {board.bootstrap_seed}), '
        f"reference point {_e(board.reference_point)}, calibration {_e(board.calibration)}</p>",
        "<h2>Leaderboard</h2>", _table(_headers(board), [_cells(e) for e in board.entries]),
        f'<p class="legend">{_e(_legend(board))}</p>', notes,
        f'<div class="layout"><div><h2>Pareto plot</h2>{plot}</div>{pairs}</div>',
        "<h2>Per grid point</h2>", _table(*points_rows(board)),
    ]
    if samples:
        sections += ["<h2>Generations</h2>", '<p class="legend">The first prompts of each line\'s newest run at every '
                     "grid point, with their raw scores.</p>", _samples_html(board, samples)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body>{''.join(sections)}</body></html>\n")


def write_html(board: Board, store: Store, out: str | Path, plot_png: bytes | None = None,
               per_point: int = SAMPLES_PER_POINT) -> Path:
    """Write the page to ``out`` (with ``per_point`` generations per grid point) and return its path."""
    out = Path(out)
    out.write_text(to_html(board, plot_png, generation_samples(store, board, per_point)), encoding="utf-8")
    return out
