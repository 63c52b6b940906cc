"""Commands for the built-in tasks' objectives: ``mobench objectives eval``.

(``mobench calibrate`` is a core command: it works for every registered task.)
"""

from __future__ import annotations

import json

import click

from mobench import hookimpl
from mobench.api import SCALES
from mobench.models import DTYPES


def _load(task: str, scale: str, device: str | None = None, dtype: str | None = None):
    """The task instance as its ``load`` returns it (no calibration needed to check its objectives); ``device``
    and ``dtype`` reach the objectives' models through the run context."""
    from mobench.api import RunContext
    from mobench.plugins import get_plugin_manager

    ctx = click.get_current_context(silent=True)
    # The CLI hands its plugin manager (which honours --plugins-dir) to commands as ctx.obj["pm"].
    pm = ctx.obj.get("pm") if ctx is not None and isinstance(ctx.obj, dict) and ctx.obj.get("pm") else get_plugin_manager()
    return pm.registry.task(task).load(scale, RunContext(device=device, registry=pm.registry, dtype=dtype))


def pairwise_accuracy(objective, pairs) -> float:
    """Share of pairs where the objective prefers the chosen response (direction applied)."""
    chosen = objective.score([p.prompt for p in pairs], [p.chosen for p in pairs])
    rejected = objective.score([p.prompt for p in pairs], [p.rejected for p in pairs])
    return sum(objective.direction * (c - r) > 0 for c, r in zip(chosen, rejected)) / len(pairs)


def length_correlations(task: str, scale: str) -> dict[str, dict]:
    """Per objective, the Spearman correlation of its raw score with the response's words, as the task's
    calibration recorded it (on the reference policy's responses and on the data responses); {} if none."""
    from mobench import calibration
    from mobench.plugins import get_plugin_manager

    ctx = click.get_current_context(silent=True)
    pm = ctx.obj.get("pm") if ctx is not None and isinstance(ctx.obj, dict) and ctx.obj.get("pm") else get_plugin_manager()
    path = calibration.calibration_path(pm.registry.task(task))
    try:
        record = json.loads(path.read_text())["scales"][scale]
        return {name: stat.get("spearman_with_words") or {} for name, stat in record["objectives"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def objective_accuracies(task: str, scale: str, n_pairs: int = 200, device: str | None = None,
                         dtype: str | None = None) -> list[dict]:
    """Per objective of the task: the trained head's held-out accuracy beside the length-only baseline on the
    same held-out pairs, or, for a scorer that was not trained on the task's pairs (hub reward models), its
    accuracy on the first ``n_pairs`` of them; and its correlation with length from the calibration."""
    instance = _load(task, scale, device, dtype)
    rho = length_correlations(task, scale)
    rows = []
    for objective in instance.objectives:
        prov = objective.provenance()
        if "heldout_accuracy" in prov:
            rows.append({"objective": objective.name, "accuracy": prov["heldout_accuracy"], "pairs": prov["n_heldout"],
                         "length_baseline": prov.get("length_baseline_accuracy"),
                         "length_rule": prov.get("length_baseline_rule"),
                         "on": "held-out 20% of its training pairs", "scorer": prov.get("scorer", "")})
        elif prov.get("scorer") == "hub reward model" and instance.pairs.get(objective.name):
            pairs = instance.pairs[objective.name][:n_pairs]
            rows.append({"objective": objective.name, "accuracy": pairwise_accuracy(objective, pairs), "pairs": len(pairs),
                         "on": "the task's preference pairs (not trained on them)", "scorer": prov.get("model", "")})
        else:
            rows.append({"objective": objective.name, "accuracy": None, "pairs": 0,
                         "on": "not trained (a fixed scorer)", "scorer": prov.get("scorer", "")})
        rows[-1]["spearman_words"] = rho.get(objective.name, {})
    return rows


@click.command("eval")
@click.option("--task", required=True, help="Task whose objectives to evaluate.")
@click.option("--scale", type=click.Choice(SCALES), default="tiny", show_default=True)
@click.option("--pairs", "n_pairs", default=200, show_default=True, help="Pairs for scorers not trained by mobench.")
@click.option("--device", default=None, help="Where the objectives' reward models run: cpu, cuda, ... (default: automatic).")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
              help="Precision of the reward models (auto: the device's default; the tiny heads' encoder stays fp32 on CPU).")
def objectives_eval(task: str, scale: str, n_pairs: int, device: str | None, dtype: str) -> None:
    """Print each objective's held-out pairwise accuracy, the length-only baseline on the same pairs
    ("longer wins" or "shorter wins", whichever the training pairs favour) and the Spearman correlation of
    its score with the response's words (reference policy's / data responses, from the calibration)."""
    def num(x) -> str:
        return "n/a" if x is None else f"{x:+.2f}"

    for row in objective_accuracies(task, scale, n_pairs, device, None if dtype == "auto" else dtype):
        acc = "n/a" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        base = ""
        if row.get("length_baseline") is not None:
            base = f"  length-only {row['length_baseline']:.3f} ({row['length_rule']})"
        rho = row.get("spearman_words") or {}
        corr = f"  spearman(words) ref {num(rho.get('reference'))} data {num(rho.get('data'))}"
        click.echo(f"{row['objective']:<10} accuracy {acc:>6}{base}{corr}  pairs {row['pairs']:>4}  on {row['on']}  "
                   f"[{row['scorer']}]")


@hookimpl
def register_commands(cli):
    existing = cli.commands.get("objectives")
    if existing is None:
        group = click.Group("objectives", help="Inspect the objectives of a task.")
        cli.add_command(group)
        existing = group
    if isinstance(existing, click.Group):
        existing.add_command(objectives_eval)
    else:  # another plugin already owns a plain `objectives` command
        cli.add_command(objectives_eval, "objectives-eval")
