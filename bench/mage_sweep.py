"""MAGE's decoding-only sweep on a task's VALIDATION prompts: HV per (alpha, candidate rule), and the chosen default.

The trained pieces (backbones, DPO experts, value models, the Bone-Soup k) come from the artifact cache, built
once by the method's own ``prepare``; each setting only decodes. Every setting decodes the task's validation
prompts (disjoint from its evaluation prompts and from every training prompt) at the task's grid, is scored by
the task's objectives, normalised by its calibration and summarised by the hypervolume against its reference
point (mobench.metrics, as the leaderboard does) and the grid's Spearman controllability. The default is the
setting of highest HV (ties: the first listed). Evaluation prompts are never decoded. Examples:
    python bench/mage_sweep.py --task hh                       # alpha in {0.25, 0.5, 1, 2} x {top-k, top-p}
    python bench/mage_sweep.py --task summarize --method mage-implicit --rules top-k,vocabulary --json out.json
    python bench/mage_sweep.py --task hh --alphas 1 --rules top-k --ks "rule;1,1" -o k_rule=search  # searched k vs none
A setting's ``k`` (``--ks``: ``rule`` = the prepared k, by the options' k_rule or k; or explicit factors)
sets only the decoder's Bone-Soup rescaling, so k values compare paired on the same pieces and prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the generic sweep beside this script
from validation_sweep import add_differences, choose, draw_resamples, score_grid, summarise, validation_prompts  # noqa: E402
from validation_sweep import ci_text as interval  # noqa: E402

ALPHAS = (0.25, 0.5, 1.0, 2.0)
RULES = ("top-k", "top-p")


def settings_grid(alphas: Sequence[float], rules: Sequence[str], ks: Sequence[Sequence[float] | None] | None = None
                  ) -> list[dict[str, Any]]:
    """The settings swept: every (alpha, candidate rule), alpha varying fastest; with ``ks``, each of those per k
    (None: the prepared k), k varying slowest."""
    if ks is None:
        return [{"alpha": float(a), "candidates": r} for r in rules for a in alphas]
    return [{"alpha": float(a), "candidates": r, "k": None if k is None else [float(x) for x in k]}
            for k in ks for r in rules for a in alphas]


def parse_ks(text: str) -> list[list[float] | None]:
    """``--ks``: ';'-separated k settings, each ``rule`` (the prepared k) or comma-separated positive factors."""
    from mobench.api import MobenchError

    out: list[list[float] | None] = []
    for part in (p.strip() for p in text.split(";") if p.strip()):
        if part == "rule":
            out.append(None)
            continue
        try:
            k = [float(x) for x in part.split(",") if x.strip()]
        except ValueError:
            raise MobenchError(f"--ks takes 'rule' or factors like 1,1 separated by ';', got {part!r}") from None
        if not k or any(not x > 0 for x in k):
            raise MobenchError(f"--ks factors must be positive, got {part!r}")
        out.append(k)
    return out


def sweep(method, task, context, settings: Sequence[dict[str, Any]], grid_points: int | None = None,
          progress=None, resamples: int = 1000, bootstrap_seed: int = 0, on_row=None) -> dict[str, Any]:
    """Decode ``task.validation_prompts`` at the grid under each setting with a prepared Mage ``method``.

    Returns {"rows": [{setting, hv, hv_ci, spearman, spearman_ci, points, corners, seconds, ...}], "default": the
    best row's setting, ...}; the scoring, the paired bootstrap over validation prompts and the choice are
    bench/validation_sweep.py's (the generic sweep, which re-prepares per setting; here only the decoder changes).
    ``on_row(row)`` is called with each setting's row as soon as it is scored (a long sweep keeps what it did).
    """
    from mobench.grid import simplex_grid

    prompts = validation_prompts(task)
    preferences = simplex_grid(len(task.objective_names), grid_points or task.grid_points)
    chosen = [method.options.replace({key: v for key, v in setting.items() if key != "k"}) for setting in settings]
    for options in chosen:  # every setting checked before the first one decodes
        options.check_all()
    for setting in settings:
        k = setting.get("k")
        if k is not None and (len(k) != len(task.objective_names) or any(not float(x) > 0 for x in k)):
            from mobench.api import MobenchError

            raise MobenchError(f"k {list(k)}: {len(task.objective_names)} positive factors needed, one per objective")
    draw = draw_resamples(len(prompts), resamples, bootstrap_seed)
    rows, boots = [], []
    for setting, options in zip(settings, chosen):
        start = time.perf_counter()
        decoder = method.decoder_for(options)
        if setting.get("k") is not None:  # the Bone-Soup rescaling alone: the base's per-row merge reads decoder.k
            decoder.k = tuple(float(x) for x in setting["k"])
        outputs = decoder.generate(prompts, preferences, task.generation, context.seed, progress)
        summary = summarise(task, preferences, *score_grid(task, prompts, preferences, outputs), draw)
        boots.append(summary.pop("boot_hv"))
        rows.append({"setting": dict(setting), **summary, "seconds": round(time.perf_counter() - start, 2)})
        if on_row is not None:
            on_row(rows[-1])
    best = choose(rows)
    add_differences(rows, boots, best)
    return {
        "task": task.name, "scale": task.scale, "method": method.name, "objectives": task.objective_names,
        "n_validation_prompts": len(prompts), "grid": [list(p.weights) for p in preferences],
        "reference_point": list(task.reference_point), "bone_soup_k": method.pieces.get("bone_soup_k"),
        "value_fit": method.pieces.get("value_fit"), "rows": rows, "default": rows[best]["setting"],
    }


def markdown(result: dict[str, Any]) -> str:
    """The sweep as a Markdown table (one row a setting, the chosen default marked) and the default's line."""
    names = result["objectives"]
    with_k = any("k" in row["setting"] for row in result["rows"])
    prepared = (result.get("bone_soup_k") or {}).get("k")
    head = ["alpha", "candidates"] + (["Bone-Soup k"] if with_k else []) + ["HV [95% CI]", "Spearman [95% CI]"] + [f"z {n} at e_{n}" for n in names] + ["HV - default [95% CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        s = row["setting"]
        mark = " **(default)**" if s == result["default"] else ""
        zs = [row["corners"][n] for n in names]
        k_cell = ""
        if with_k:
            k = s.get("k")
            k_cell = (f"rule ({', '.join(f'{x:.3g}' for x in prepared)})" if k is None and prepared else
                      "rule" if k is None else ", ".join(f"{x:g}" for x in k)) + " | "
        lines.append(f"| {s['alpha']:g} | {s['candidates']}{mark} | {k_cell}{interval(row['hv'], row['hv_ci'], 4)} | "
                     f"{interval(row['spearman'], row['spearman_ci'], 2)} | "
                     + " | ".join("n/a" if z is None else f"{z:+.3f}" for z in zs)
                     + f" | {interval(row['hv_minus_chosen'], row['hv_minus_chosen_ci'], 4)} |")
    lines.append("")
    lines.append(f"{result['method']} on {result['task']} ({result['scale']}), {result['n_validation_prompts']} validation "
                 f"prompts, grid of {len(result['grid'])}: default alpha={result['default']['alpha']:g}, "
                 f"candidates={result['default']['candidates']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from mobench.api import MobenchError, RunContext
    from mobench.calibration import attach
    from mobench.plugins import get_plugin_manager
    from mobench.runner import build_method, build_options

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True)
    p.add_argument("--method", default="mage", help="mage or one of its ablations (mage-implicit, ...)")
    p.add_argument("--scale", default="tiny")
    p.add_argument("--alphas", default=",".join(f"{a:g}" for a in ALPHAS))
    p.add_argument("--rules", default=",".join(RULES), help="candidate rules: top-k, top-p, vocabulary (implicit only)")
    p.add_argument("--ks", default=None, help="Bone-Soup k settings, ';'-separated: rule (the prepared k) or factors "
                   "like 1,1 (default: the prepared k only)")
    p.add_argument("--grid-points", type=int, default=None, help="points per simplex edge (default: the task's)")
    p.add_argument("-o", "--option", action="append", default=[], help="a method option KEY=VALUE (as mobench run -o)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="also write the full result here")
    args = p.parse_args(argv)
    try:
        registry = get_plugin_manager().registry
        bad = [o for o in args.option if "=" not in o]
        if bad:
            raise MobenchError(f"-o takes KEY=VALUE, got {bad[0]!r}")
        overrides = dict(o.split("=", 1) for o in args.option)
        spec = registry.method(args.method)
        if spec.factory.__name__ != "Mage":
            raise MobenchError(f"{args.method!r} is not MAGE or one of its ablations")
        context = RunContext(seed=args.seed, device=args.device)
        context.registry = registry
        task_spec = registry.task(args.task)
        task = attach(task_spec, task_spec.load(args.scale, context))
        method = build_method(spec, build_options(spec, args.scale, overrides))
        method.prepare(task, context)
        ks = parse_ks(args.ks) if args.ks is not None else None
        settings = settings_grid([float(a) for a in args.alphas.split(",")], args.rules.split(","), ks)
        partial = Path(args.json).with_suffix(".partial.jsonl") if args.json else None
        if partial is not None:
            partial.write_text("")

        def on_row(row: dict[str, Any]) -> None:  # every setting's row, as it comes (for a sweep cut short)
            print(f"{row['setting']}: validation HV {row['hv']:.4f} {row['hv_ci']}, Spearman {row['spearman']:.2f}, "
                  f"{row['seconds']:.0f} s", file=sys.stderr, flush=True)
            if partial is not None:
                with partial.open("a") as f:
                    f.write(json.dumps(row) + "\n")

        result = sweep(method, task, context, settings, args.grid_points, on_row=on_row)
    except MobenchError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
