"""Decoding tokens/s of each method against plain generate of the task's policy at the same batch; prints JSON.

Each method runs the way a user runs it, ``mobench run --method M --task T --limit N --grid G --results DIR``,
in its own subprocess, on the pieces already in the artifact cache (``MOBENCH_CACHE``). Its decoding figures
come from its run's store: seconds are the rows' ``generation_seconds`` (the runner times ``generate`` and
takes out the offline work a method records inside it, such as a policy trained per grid point); tokens are
its generations' responses re-encoded with the policy's tokenizer. ``prepare_seconds`` (the manifest's) and
``offline_seconds`` (the rows') are reported apart and never enter tokens/s. ``trained`` says whether the
method's process built anything into the artifact cache (the cache's build log, matched by process id):
a method whose pieces were not cached yet trains them in ``prepare`` and is marked, with what it built.

The baseline, in its own subprocess: the task's reference policy (``instance.policy``) loaded as methods load
it (same device and dtype), plain ``generate`` through ``mobench.decoding.generate_for_task`` with the task's
decoding settings (batch size, max_new_tokens, greedy or not), on the same prompts, once per grid point (the
work a per-point method does), timed without warm-up as the methods' runs are. Its responses are counted with
the same tokenizer and rule, so EOS ends a row in both. ``ratio`` is method tokens/s / baseline tokens/s from
the reported numbers. Nothing is rounded that a ratio is computed from.

    python bench/methods_decode.py --task hh --methods rewarded-soups,logit-ensemble --prompts 8 --points 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True)
    p.add_argument("--methods", default=None, help="comma-separated method names (default: every registered method)")
    p.add_argument("--scale", default="tiny")
    p.add_argument("--prompts", type=int, default=8, help="the first N evaluation prompts (mobench run --limit N)")
    p.add_argument("--points", type=int, default=3, help="grid points per simplex edge (mobench run --grid; 2 objectives: N points)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: mobench's: cuda when visible)")
    p.add_argument("--dtype", default=None, help="mobench run --dtype (default: the device's)")
    p.add_argument("--gen", action="append", default=[], help="mobench run --gen KEY=VALUE,... (applied to the baseline too)")
    p.add_argument("-o", "--option", dest="options", action="append", default=[],
                   help="KEY=VALUE for every method, METHOD:KEY=VALUE for one (as mobench sweep -o)")
    p.add_argument("--plugins-dir", default=None, help="mobench --plugins-dir")
    p.add_argument("--results", default=None, help="results store the runs write to (default: a temporary folder, removed)")
    p.add_argument("--baseline-only", action="store_true", help=argparse.SUPPRESS)
    return p


def _registry(args):
    from mobench.plugins import get_plugin_manager

    return get_plugin_manager(plugins_dir=args.plugins_dir).registry


def _builds_of(pid: int) -> list[dict]:
    """What process ``pid`` of this host built into the artifact cache (kind and seconds per build)."""
    from mobench.artifacts import build_log

    host = socket.gethostname()
    return [{"kind": b["kind"], "seconds": b["seconds"]} for b in build_log() if b.get("pid") == pid and b.get("host") == host]


def method_command(args, method: str, results: Path) -> list[str]:
    """The ``mobench run`` command of one method, as a user would type it."""
    from mobench.sweep import parse_sweep_options

    cmd = [sys.executable, "-m", "mobench.cli"]
    if args.plugins_dir:
        cmd += ["--plugins-dir", args.plugins_dir]
    cmd += ["run", "--method", method, "--task", args.task, "--scale", args.scale, "--limit", str(args.prompts),
            "--grid", str(args.points), "--seed", str(args.seed), "--results", str(results)]
    if args.device:
        cmd += ["--device", args.device]
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    for item in args.gen:
        cmd += ["--gen", item]
    options = parse_sweep_options(args.options)
    for key, value in {**options.get("*", {}), **options.get(method, {})}.items():
        cmd += ["-o", f"{key}={value}"]
    return cmd


def run_method(args, method: str, results: Path) -> dict:
    """Run one method into ``results``; its decoding seconds, texts, prepare seconds and builds (or its error)."""
    from mobench.store import MARKER, Store

    cmd = method_command(args, method, results)
    if (results / MARKER).exists() and any(r.read_manifest().get("method") == method for r in Store(results).runs(args.task)):
        return {"command": shlex.join(cmd), "error": f"{results} already holds a run of {method} on {args.task}: "
                                                     "its rows would be old ones; give an empty --results"}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    record = {"command": shlex.join(cmd), "wall_seconds": wall, "builds": _builds_of(proc.pid)}
    record["trained"] = bool(record["builds"])
    if proc.returncode != 0:
        return {**record, "error": f"exit {proc.returncode}: " + " | ".join((err or out).strip().splitlines()[-5:])}
    [run] = [r for r in Store(results).runs(args.task) if r.read_manifest().get("method") == method]
    manifest, rows, generations = run.read_manifest(), run.rows(), run.generations()
    return {
        **record,
        "run_id": run.run_id,
        "policy": manifest["policy"],
        "prompts_sha256": manifest["prompts_sha256"],
        "generation": manifest["generation"],
        "batch_size": manifest["generation"].get("batch_size"),
        "max_new_tokens": manifest["generation"].get("max_new_tokens"),
        "points": len(rows),
        "batched_points": max(r["batched_points"] for r in rows),
        "responses": len(generations),
        "prepare_seconds": manifest["prepare_seconds"],
        "offline_seconds": sum(r["offline_seconds"] for r in rows),
        "seconds": sum(r["generation_seconds"] for r in rows),
        "texts": [g["response"] for g in generations],
    }


def count_tokens(tokenizer, texts: list[str]) -> int:
    """Tokens of the responses, re-encoded with the policy's tokenizer (the one rule for methods and baseline)."""
    return sum(len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]) if texts else 0


def baseline(args) -> dict:
    """Plain generate of the task's policy on the first prompts, once per grid point (run in its own process)."""
    import torch

    from mobench.api import RunContext, prompts_sha256
    from mobench.cli import parse_option_items
    from mobench.decoding import generate_for_task
    from mobench.grid import simplex_grid
    from mobench.models import load_causal_lm
    from mobench.training import context_dtype, resolve_device

    registry = _registry(args)
    context = RunContext(seed=args.seed, device=args.device, registry=registry, dtype=args.dtype)
    spec = registry.task(args.task)
    task = spec.load(args.scale, context)
    if args.gen:  # as mobench run --gen
        task.generation = task.generation.with_overrides(
            parse_option_items([part for item in args.gen for part in item.split(",") if part.strip()], flag="--gen"))
    prompts = list(task.prompts[: args.prompts])
    points = len(simplex_grid(len(task.objectives), args.points))
    device = resolve_device(context)
    started = time.perf_counter()
    model, tokenizer = load_causal_lm(task.policy, device=device, dtype=context_dtype(context))
    load_seconds = time.perf_counter() - started
    texts, seconds = [], 0.0
    for point in range(points):
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        texts += generate_for_task(model, tokenizer, prompts, task.generation, context, f"plain generate {point}")
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
    return {
        "policy": task.policy,
        "prompts_sha256": prompts_sha256(prompts),
        "generation": task.generation.to_dict(),
        "batch_size": task.generation.batch_size,
        "max_new_tokens": task.generation.max_new_tokens,
        "do_sample": task.generation.do_sample,
        "prompts": len(prompts),
        "passes": points,
        "load_seconds": load_seconds,
        "seconds": seconds,
        "texts": texts,
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype),
        "torch_threads": torch.get_num_threads(),
    }


def _baseline_in_subprocess(argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, *argv, "--baseline-only"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    if proc.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-15:])
        sys.exit(f"bench/methods_decode.py: the plain-generate baseline failed (exit {proc.returncode}):\n{tail}")
    figures = json.loads(out.strip().splitlines()[-1])
    builds = _builds_of(proc.pid)
    return {**figures, "command": shlex.join(cmd), "builds": builds}


def report(args, argv: list[str], results: Path) -> dict:
    """Every method's run and the baseline, as one JSON-ready object."""
    from mobench.models import load_tokenizer
    from mobench.provenance import git_revision, machine

    load_before = os.getloadavg()
    methods = args.methods.split(",") if args.methods else sorted(_registry(args).methods)
    base = _baseline_in_subprocess(argv)
    tokenizer = load_tokenizer(base["policy"])
    base_texts = base.pop("texts")
    base["tokens"] = count_tokens(tokenizer, base_texts)
    base["tokens_per_s"] = base["tokens"] / base["seconds"]
    out_methods = {}
    for method in methods:
        record = run_method(args, method, results)
        texts = record.pop("texts", None)
        if texts is not None:
            differs = [k for k in ("policy", "prompts_sha256", "generation") if record.pop(k) != base[k]]
            if differs:  # not the same work as the baseline: no ratio to trust
                record["error"] = f"its run's {', '.join(differs)} differ from the baseline's"
            record["tokens"] = count_tokens(tokenizer, texts)
            record["tokens_per_s"] = record["tokens"] / record["seconds"]
            record["ratio"] = record["tokens_per_s"] / base["tokens_per_s"]
        out_methods[method] = record
    return {
        "bench": "methods_decode",
        "command": shlex.join([sys.executable, os.path.relpath(__file__), *argv]),
        "config": {k: v for k, v in vars(args).items() if k != "baseline_only"},
        "results_store": str(results) if args.results else None,
        "machine": {**machine(), "torch_threads": base["torch_threads"], "device": base["device"], "dtype": base["dtype"],
                    "load_average_before": list(load_before), "load_average_after": list(os.getloadavg())},
        "git_revision": git_revision(),
        "token_rule": "responses as stored, re-encoded with the policy's tokenizer without special tokens",
        "baseline": base,
        "methods": out_methods,
        "ratio": {m: r["ratio"] for m, r in out_methods.items() if "ratio" in r},
    }


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.prompts < 1 or args.points < 2:
        sys.exit("bench/methods_decode.py: --prompts must be at least 1 and --points at least 2")
    if args.baseline_only:
        print(json.dumps(baseline(args)))
        return
    if args.results:
        result = report(args, argv, Path(args.results))
    else:
        with tempfile.TemporaryDirectory(prefix="mobench-methods-decode-") as tmp:
            result = report(args, argv, Path(tmp))
    print(json.dumps(result, indent=2))
    if any("error" in r for r in result["methods"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
