"""Choose any method's tunable options on a task's VALIDATION prompts: HV per setting, and the chosen default.

Issue 12's rule: a method's defaults are chosen on validation prompts disjoint from the evaluation prompts,
never on the test prompts. For every setting of the cartesian product of the ``--set`` values (parsed and checked
by the method's own typed Options before anything loads), the method is built through the registry and
prepared as ``mobench run`` prepares it (trained pieces come from the artifact cache: a knob that only enters
after training rebuilds nothing; the builds a prepare made are listed from ``mobench.artifacts.build_log()``),
then asked for the task's validation prompts at the task's grid, scored with ``mobench.runner.score_point`` and
normalised by the task's calibration. Per setting: hypervolume against the task's reference point, Spearman
controllability, each objective's z at its own corner, with 95% intervals from a paired bootstrap over the
validation prompts (one draw of prompt resamples for every setting, drawn and summarised with mobench.metrics'
own bootstrap pieces, as the leaderboard does), and the HV difference to the chosen setting with its interval.
The chosen default is the setting of highest validation HV (ties: the first listed), or, with ``--rule
first-unless-separable`` (for a knob whose settings differ in cost: list the cheaper or incumbent setting
first), the first listed setting unless another one's HV is separably above it (the paired interval of the
difference lies above 0), and then the highest of those. Evaluation prompts are
never decoded; a task without validation prompts, or whose validation prompts overlap its evaluation prompts,
is refused. Each setting's method is dropped (and CUDA's cache emptied) before the next one is built. Examples:
    python bench/validation_sweep.py --method react --task hh --set beta=0.01,0.1,1 --json react-beta.json
    python bench/validation_sweep.py --method mage --task hh --set alpha=0.5,1,2 --set candidates=top-k,top-p --markdown
A value list is split on commas outside brackets, so a tuple option takes JSON lists: --set k=[1.1,1.5],[2,2].
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import re
import shlex
import sys
import time
import warnings
from typing import Any, Sequence

#: One value of a --set list: a bracketed JSON list, or text up to the next comma.
_VALUE = re.compile(r"\s*(\[[^\]]*\]|[^,]+)\s*(?:,|$)")


def parse_sets(texts: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["beta=0.01,0.1", "positions=all"]`` -> ``[("beta", ["0.01", "0.1"]), ("positions", ["all"])]``; one clear error else."""
    from mobench.api import MobenchError

    out: list[tuple[str, list[str]]] = []
    for text in texts:
        key, sep, values = str(text).partition("=")
        if not sep or not key.strip() or not values.strip():
            raise MobenchError(f"--set takes KEY=VALUE[,VALUE...], got {text!r}")
        items = [m.group(1).strip() for m in _VALUE.finditer(values)]
        if "".join(_VALUE.sub("", values)).strip() or not items:
            raise MobenchError(f"--set {key.strip()}: cannot read the values {values!r} (commas between values, lists in brackets)")
        if len(set(items)) != len(items):
            raise MobenchError(f"--set {key.strip()}: a value is listed twice ({values})")
        out.append((key.strip(), items))
    if not out:
        raise MobenchError("nothing to sweep: pass --set KEY=VALUE[,VALUE...] at least once")
    return out


def settings_product(sets: Sequence[tuple[str, Sequence[str]]]) -> list[dict[str, str]]:
    """Every combination of the ``--set`` values, the last key varying fastest (in the order given)."""
    keys = [k for k, _ in sets]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values for _, values in sets))]


def build_settings(spec, scale: str, fixed: dict[str, str], settings: Sequence[dict[str, str]]) -> list:
    """Each setting's Options (preset, registration's fixed values, ``-o``, then the setting), all checked first.

    A key is resolved to its dotted path by the method's Options, so ``beta`` and ``-o beta=...`` collide, and
    two ``--set`` keys naming one option are refused.
    """
    from mobench.api import MobenchError
    from mobench.options import options_class
    from mobench.runner import build_options

    cls = options_class(spec.factory)
    if cls is None:
        raise MobenchError(f"method {spec.name!r} takes no options: nothing to sweep")
    paths = [cls.resolve(k, spec.name) for k in settings[0]]
    if len(set(paths)) != len(paths):
        raise MobenchError(f"--set names one option twice ({', '.join(paths)})")
    given = {cls.resolve(k, spec.name) for k in fixed}
    both = sorted(set(paths) & given)
    if both:
        raise MobenchError(f"{', '.join(both)} is both swept (--set) and fixed (-o): pass it once")
    return [build_options(spec, scale, {**fixed, **setting}) for setting in settings]


def validation_prompts(task) -> list[str]:
    """The task's validation prompts; a MobenchError when it has none or one of them is an evaluation prompt."""
    from mobench.api import MobenchError

    prompts = list(task.validation_prompts)
    if not prompts:
        raise MobenchError(f"task {task.name!r} ({task.scale}) has no validation prompts: defaults are never tuned on evaluation prompts")
    leaked = set(prompts) & set(task.prompts)
    if leaked:
        raise MobenchError(f"task {task.name!r}: {len(leaked)} of its {len(prompts)} validation prompts are evaluation prompts; refusing to tune on them")
    return prompts


def load_task(registry, name: str, scale: str, context):
    """The task as ``mobench run`` loads it: the plugin's instance with its calibration attached, checked."""
    from mobench.api import MobenchError, TaskInstance
    from mobench.calibration import attach
    from mobench.runner import check_task

    spec = registry.task(name)
    task = spec.load(scale, context)
    if not isinstance(task, TaskInstance):
        raise MobenchError(f"task {name!r}: load returned {type(task).__name__}, not a TaskInstance")
    task = attach(spec, task)
    check_task(task, spec.objectives, registry)
    return task


def decode(method, prompts: list[str], preferences: list, seed: int) -> list[list[str]]:
    """The method's responses at every grid point, asked for as the runner asks (seeded before each call; all points
    in one call for a ``batch_preferences`` method, else one at a time)."""
    from mobench.api import MobenchError
    from mobench.toolkit import seed_everything

    batches = [preferences] if getattr(method, "batch_preferences", False) else [[p] for p in preferences]
    out: list[list[str]] = []
    for batch in batches:
        seed_everything(seed)
        responses = method.generate(prompts, batch)
        if len(responses) != len(batch) or any(len(r) != len(prompts) for r in responses):
            raise MobenchError(f"method {method.name!r} returned a wrong number of responses "
                               f"(one list of {len(prompts)} texts per grid point is expected)")
        out.extend(list(r) for r in responses)
    return out


def score_grid(task, prompts: list[str], preferences: list, outputs: list[list[str]]):
    """``(z, per_prompt)``: each point's z of the mean scores by ``score_point`` (P, m), and every prompt's z (P, N, m)."""
    import numpy as np

    from mobench.runner import score_point

    names = task.objective_names
    z, per_prompt = [], []
    for responses in outputs:
        _, _, normalised, items = score_point(task, prompts, responses)
        z.append([normalised[n] for n in names])
        per_prompt.append([[task.normalisation[o.name].apply(item[o.name], o.direction) for o in task.objectives]
                           for item in items])
    return np.asarray(z, dtype=float), np.asarray(per_prompt, dtype=float)


def draw_resamples(n_prompts: int, resamples: int, seed: int):
    """The paired bootstrap's prompt weights (B, N), one draw shared by every setting (as the leaderboard draws)."""
    import numpy as np

    from mobench.metrics import resample_counts

    return resample_counts(n_prompts, resamples, np.random.default_rng(seed)).astype(float) / n_prompts


def summarise(task, preferences: list, z, per_prompt, weights_draw, confidence: float = 0.95) -> dict[str, Any]:
    """HV, Spearman and every point's z (point estimates and bootstrap intervals) of one setting's scored grid.

    ``boot_hv`` (the replicates, for paired differences) is returned too; it is not JSON and is popped by the caller.
    """
    import numpy as np

    from mobench.metrics import controllability, hypervolume, hypervolume_batch, percentile_interval, spearman_batch

    names = task.objective_names
    weights = [list(p.weights) for p in preferences]
    ref = list(task.reference_point)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # constant columns give NaN Spearman terms, as on the board
        boot_z = np.einsum("bn,pnm->bpm", weights_draw, per_prompt)
        boot_hv = hypervolume_batch(boot_z, ref)
        boot_spearman = spearman_batch(weights, boot_z)
        control = controllability(weights, z)
    points = {}
    for i, p in enumerate(preferences):
        points[p.key] = {n: float(z[i, j]) for j, n in enumerate(names)}
    point_ci = {p.key: {n: list(percentile_interval(boot_z[:, i, j], confidence)) for j, n in enumerate(names)}
                for i, p in enumerate(preferences)}
    return {
        "hv": hypervolume(z, ref),
        "hv_ci": list(percentile_interval(boot_hv, confidence)),
        "spearman": control["spearman"],
        "spearman_ci": list(percentile_interval(boot_spearman, confidence)),
        "monotone": control["monotone"],
        "points": points,
        "points_ci": point_ci,
        "corners": corners(names, points),
        "boot_hv": boot_hv,
    }


def corners(names: Sequence[str], points: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """Each objective's z at its own corner (all weight on it); None when the grid has no such point."""
    from mobench.api import Preference

    out = {}
    for i, name in enumerate(names):
        key = Preference(tuple(1.0 if j == i else 0.0 for j in range(len(names)))).key
        out[name] = points[key][name] if key in points else None
    return out


RULES = ("highest", "first-unless-separable")
RULE_TEXT = {
    "highest": "highest validation HV, ties: first listed",
    "first-unless-separable": "the first listed unless another's validation HV is separably above it",
}


def choose(rows: Sequence[dict[str, Any]], boots: Sequence | None = None, rule: str = "highest",
           confidence: float = 0.95) -> int:
    """The index of the chosen row.

    ``highest``: the row of highest HV; ties go to the first listed. ``first-unless-separable``: row 0 (the
    cheaper or incumbent setting, listed first) unless some row's HV minus row 0's has its paired-bootstrap
    interval (``boots``: each row's bootstrap HV replicates on the same prompt resamples) entirely above 0;
    then the highest-HV row among those. A setting that costs more has to earn its cost on the data.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    if rule == "highest":
        return max(range(len(rows)), key=lambda i: (rows[i]["hv"], -i))
    if boots is None or len(boots) != len(rows):
        raise ValueError("rule 'first-unless-separable' needs every row's bootstrap HV replicates")
    from mobench.metrics import percentile_interval

    import numpy as np

    better = [i for i in range(1, len(rows))
              if percentile_interval(np.asarray(boots[i]) - np.asarray(boots[0]), confidence)[0] > 0]
    return max(better, key=lambda i: (rows[i]["hv"], -i)) if better else 0


def add_differences(rows: list[dict[str, Any]], boots: list, best: int, confidence: float = 0.95) -> None:
    """Each row's HV minus the chosen row's, with the paired-bootstrap interval (the same prompt resamples)."""
    from mobench.metrics import percentile_interval

    for row, boot in zip(rows, boots):
        row["hv_minus_chosen"] = row["hv"] - rows[best]["hv"]
        row["hv_minus_chosen_ci"] = list(percentile_interval(boot - boots[best], confidence))


def _free_memory() -> None:
    """Drop what the previous setting left (its models) before the next one loads its own."""
    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def sweep(spec, task, context, settings: Sequence[dict[str, str]], options: Sequence, grid_points: int | None = None,
          resamples: int = 1000, bootstrap_seed: int = 0, say=None, rule: str = "highest") -> dict[str, Any]:
    """Prepare, decode the validation prompts at the grid, score and summarise ``spec``'s method under each setting.

    ``options[i]`` are setting i's checked Options (:func:`build_settings`). Returns the result dict of the module
    docstring: one row per setting in order, and ``chosen``, the row :func:`choose` picks under ``rule``.
    """
    from mobench.artifacts import build_log
    from mobench.grid import simplex_grid
    from mobench.runner import build_method
    from mobench.toolkit import seed_everything

    say = say or (lambda message: None)
    prompts = validation_prompts(task)
    preferences = simplex_grid(len(task.objectives), grid_points or task.grid_points)
    draw = draw_resamples(len(prompts), resamples, bootstrap_seed)
    rows, boots = [], []
    for n, (setting, opts) in enumerate(zip(settings, options), start=1):
        label = ", ".join(f"{k}={v}" for k, v in setting.items())
        say(f"[{n}/{len(settings)}] {label}: preparing {spec.name}")
        logged = len(build_log())
        method = build_method(spec, opts)
        seed_everything(context.seed)
        t0 = time.perf_counter()
        method.prepare(task, context)
        prepare_seconds = time.perf_counter() - t0
        built = [{k: e.get(k) for k in ("kind", "artifact", "seconds")} for e in build_log()[logged:] if e.get("pid") == os.getpid()]
        provenance = method.provenance()
        say(f"[{n}/{len(settings)}] {label}: prepared in {prepare_seconds:.0f} s ({len(built)} artifacts built); "
            f"decoding {len(prompts)} validation prompts x {len(preferences)} grid points")
        t1 = time.perf_counter()
        outputs = decode(method, prompts, preferences, context.seed)
        decode_seconds = time.perf_counter() - t1
        method = None  # noqa: F841  the setting's models go before the next setting loads its own
        _free_memory()
        t2 = time.perf_counter()
        z, per_prompt = score_grid(task, prompts, preferences, outputs)
        summary = summarise(task, preferences, z, per_prompt, draw)
        boots.append(summary.pop("boot_hv"))
        rows.append({
            "setting": dict(setting),
            "options": {k: opts.get(opts.resolve(k)) for k in setting},
            **summary,
            "prepare_seconds": round(prepare_seconds, 2),
            "decode_seconds": round(decode_seconds, 2),
            "scoring_seconds": round(time.perf_counter() - t2, 2),
            "built": built,
            "method_provenance": provenance,
            "responses": {p.key: out for p, out in zip(preferences, outputs)},
        })
        say(f"[{n}/{len(settings)}] {label}: HV {rows[-1]['hv']:.4f}, Spearman {rows[-1]['spearman']:.2f}")
    best = choose(rows, boots, rule)
    add_differences(rows, boots, best)
    return {
        "method": spec.name, "task": task.name, "scale": task.scale, "objectives": task.objective_names,
        "n_validation_prompts": len(prompts), "validation_prompts": prompts,
        "grid": [list(p.weights) for p in preferences], "reference_point": list(task.reference_point),
        "normalisation": {k: {"mean": v.mean, "std": v.std} for k, v in task.normalisation.items()},
        "generation": task.generation.to_dict(), "seed": context.seed,
        "bootstrap": {"resamples": resamples, "seed": bootstrap_seed, "confidence": 0.95, "unit": "validation prompt"},
        "rows": rows, "chosen": rows[best]["setting"], "chosen_index": best, "rule": rule,
    }


def _fmt(x: float | None, digits: int) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def ci_text(value: float | None, ci: Sequence[float], digits: int) -> str:
    """``value [lo, hi]`` with ``digits`` decimals (n/a for a missing or NaN number)."""
    return f"{_fmt(value, digits)} [{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"


def table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The sweep's headers and one row of cells per setting (the chosen one marked)."""
    names = result["objectives"]
    headers = ["setting", "HV [95% CI]", "Spearman [95% CI]", *[f"z {n} at w_{n}=1" for n in names],
               "HV - chosen [95% CI]", "prepare s", "decode s", "built"]
    rows = []
    for i, row in enumerate(result["rows"]):
        label = ", ".join(f"{k}={v}" for k, v in row["setting"].items()) + (" (chosen)" if i == result["chosen_index"] else "")
        kinds = [b["kind"] for b in row["built"]]
        built = ", ".join(f"{k} x{kinds.count(k)}" if kinds.count(k) > 1 else k for k in dict.fromkeys(kinds)) or "-"
        rows.append([label, ci_text(row["hv"], row["hv_ci"], 4), ci_text(row["spearman"], row["spearman_ci"], 2),
                     *[_fmt(row["corners"][n], 3) for n in names],
                     ci_text(row["hv_minus_chosen"], row["hv_minus_chosen_ci"], 4),
                     f"{row['prepare_seconds']:.0f}", f"{row['decode_seconds']:.0f}", built])
    return headers, rows


def summary_line(result: dict[str, Any]) -> str:
    """Which setting was chosen, on what."""
    chosen = ", ".join(f"{k}={v}" for k, v in result["chosen"].items())
    return (f"{result['method']} on {result['task']} ({result['scale']}): {result['n_validation_prompts']} validation prompts, "
            f"grid of {len(result['grid'])}; chosen ({RULE_TEXT[result.get('rule', 'highest')]}): {chosen}")


def markdown(result: dict[str, Any]) -> str:
    """The sweep as a Markdown table, then the chosen setting's line."""
    from mobench.report import md_escape

    headers, rows = table(result)
    lines = ["| " + " | ".join(md_escape(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(md_escape(c) for c in cells) + " |" for cells in rows]
    return "\n".join([*lines, "", summary_line(result)])


def print_rich(result: dict[str, Any]) -> None:
    """The sweep as a terminal table (rich), then the chosen setting's line."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    headers, rows = table(result)
    out = Table(title=escape(f"validation sweep: {result['method']} on {result['task']} ({result['scale']})"))
    for h in headers:
        out.add_column(escape(h))
    for cells in rows:
        out.add_row(*(escape(c) for c in cells))
    console = Console()
    console.print(out)
    console.print(summary_line(result), markup=False)


def main(argv: Sequence[str] | None = None) -> None:
    from mobench.api import MobenchError, RunContext
    from mobench.models import DTYPES
    from mobench.plugins import get_plugin_manager
    from mobench.provenance import git_revision, machine, versions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="an option to sweep and its values (repeat for a cartesian product)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option held fixed in every setting (as mobench run -o)")
    p.add_argument("--scale", default="tiny")
    p.add_argument("--grid-points", type=int, default=None, help="points per simplex edge (default: the task's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the device's)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the validation prompts")
    p.add_argument("--rule", choices=RULES, default="highest",
                   help="highest: the setting of highest validation HV; first-unless-separable: the first listed "
                        "setting (list the cheaper one first) unless another's HV is separably above it")
    p.add_argument("--plugins-dir", default=None)
    p.add_argument("--json", default=None, help="also write the full result (rows, responses, command, machine) here")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (default: a terminal table)")
    args = p.parse_args(argv)
    command = shlex.join(["python", "bench/validation_sweep.py", *(sys.argv[1:] if argv is None else argv)])
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.resamples < 1:
            raise MobenchError(f"--resamples must be at least 1, got {args.resamples}")
        if args.grid_points is not None and args.grid_points < 2:
            raise MobenchError(f"--grid-points must be at least 2, got {args.grid_points}")
        if args.dtype is not None and args.dtype not in DTYPES:
            raise MobenchError(f"unknown dtype {args.dtype!r}; choose one of {', '.join(DTYPES)}")
        bad = [o for o in args.option if "=" not in o]
        if bad:
            raise MobenchError(f"-o takes KEY=VALUE, got {bad[0]!r}")
        fixed = dict(o.split("=", 1) for o in args.option)
        registry = get_plugin_manager(args.plugins_dir).registry
        spec = registry.method(args.method)
        settings = settings_product(parse_sets(args.sets))
        options = build_settings(spec, args.scale, fixed, settings)  # every setting checked before anything loads
        context = RunContext(seed=args.seed, device=args.device, dtype=args.dtype)
        context.registry = registry
        task = load_task(registry, args.task, args.scale, context)
        started = time.perf_counter()
        result = sweep(spec, task, context, settings, options, args.grid_points, args.resamples, say=say,
                       rule=args.rule)
    except MobenchError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    result.update(command=command, fixed_options=fixed, wall_seconds=round(time.perf_counter() - started, 1),
                  git_revision=git_revision(), machine=machine(), versions=versions(),
                  device=args.device, dtype=args.dtype)
    if args.markdown:
        print(markdown(result))
    else:
        print_rich(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)


if __name__ == "__main__":
    main()
