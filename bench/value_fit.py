"""MAGE's value models: held-out fit against the number of training rollouts, on one common held-out set; prints JSON.

For each n in ``--n-rollouts`` it trains (or loads from the artifact cache) the task's value models exactly as MAGE
does (``train_value_models`` on the first n + n_heldout training prompts, MAGE's value budget otherwise, so the
optimiser steps stay the same: more rollouts is more distinct data at the same training compute). MAGE's own n
(64 at tiny) reuses MAGE's cached value models. Each model is then measured on one **common** held-out set:
rollouts of the task policy, sampled as MAGE's are, on the ``--heldout`` training prompts that come after the
largest n's prompts (no n trains on them). The figures, each with a 95% percentile-bootstrap CI over held-out
rollouts (a rollout is resampled whole, so its prefixes move together; ``scipy.stats.bootstrap``):
- ``spearman_final``: V at the response's last token (its EOS when one was sampled) against the rollout's z;
- ``spearman_prefixes``: V at every regressed position (the prompt's last token onwards) against the final z;
- ``length_baseline``: the response's token count against z, a predictor that needs no training;
- per objective, the paired difference of ``spearman_final`` between each n and the first (same resamples).

    python bench/value_fit.py --task hh --n-rollouts 64,256 --heldout 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Sequence

import numpy as np


def _rho(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def values_at_positions(model, tokenizer, head, rows: Sequence[dict[str, Any]], device, batch: int = 8) -> list[list[float]]:
    """V at every regressed position of each rollout: the prompt's last token, then each response token (EOS kept).

    The positions and the forward are value.heldout_fit's; that function returns only the two aggregate Spearmans
    (no per-rollout values to resample), and changing it would change every cached value model's key (a build's
    code is hashed), so the per-rollout values are read here.
    """
    import torch

    from mobench.methods.mage.value import hidden_states

    out: list[list[float]] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        seqs, firsts = [], []
        for r in chunk:
            p = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
            seqs.append(p + list(r["response_ids"]))
            firsts.append(len(p) - 1)
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):  # right padding, as the value regression trains
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.no_grad():
            h = hidden_states(model, ids.to(device), mask.to(device)).last_hidden_state.float()
            v = (h @ head[0].float().to(h.device).T).squeeze(-1) + head[1].float().to(h.device)
        v = v.cpu()
        out += [v[i, f : len(s)].tolist() for i, (s, f) in enumerate(zip(seqs, firsts))]
    return out


def _interval(stat, n: int, resamples: int, seed: int) -> dict[str, Any]:
    """The statistic on all n rollouts and its 95% percentile interval over rollout resamples (scipy's bootstrap
    distribution; a resample where the statistic is undefined, e.g. a constant input, is left out and counted)."""
    from scipy.stats import bootstrap

    index = (np.arange(n),)
    res = bootstrap(index, stat, vectorized=False, n_resamples=resamples, method="percentile",
                    random_state=np.random.default_rng(seed))
    dist = np.asarray(res.bootstrap_distribution, float)
    undefined = int(np.isnan(dist).sum())
    low, high = (np.percentile(dist[~np.isnan(dist)], [2.5, 97.5]) if undefined < len(dist) else (np.nan, np.nan))
    return {"value": stat(index[0]), "ci": [float(low), float(high)], "undefined_resamples": undefined}


def fit(values: Sequence[Sequence[float]], z: Sequence[float], lengths: Sequence[int], resamples: int, seed: int) -> dict[str, Any]:
    """Spearman of V (final and every prefix) and of length against z, each with a rollout-bootstrap 95% CI."""
    values, z, lengths = [list(v) for v in values], np.asarray(z, float), np.asarray(lengths, float)

    def final(idx):
        idx = np.asarray(idx, int)
        return _rho([values[i][-1] for i in idx], z[idx])

    def prefixes(idx):
        idx = np.asarray(idx, int)
        return _rho([x for i in idx for x in values[i]], [z[i] for i in idx for _ in values[i]])

    def length(idx):
        idx = np.asarray(idx, int)
        return _rho(lengths[idx], z[idx])

    out: dict[str, Any] = {"n_heldout": len(z)}
    for name, stat in (("spearman_final", final), ("spearman_prefixes", prefixes), ("length_baseline", length)):
        out[name] = _interval(stat, len(z), resamples, seed)
    return out


def paired_difference(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], z: Sequence[float], resamples: int,
                      seed: int) -> dict[str, Any]:
    """spearman_final(b) - spearman_final(a) on the same held-out rollouts, CI from the same resampled rollouts."""
    z = np.asarray(z, float)

    def diff(idx):
        idx = np.asarray(idx, int)
        return _rho([b[i][-1] for i in idx], z[idx]) - _rho([a[i][-1] for i in idx], z[idx])

    out = _interval(diff, len(z), resamples, seed)
    return {**out, "separable": bool(out["ci"][0] > 0 or out["ci"][1] < 0)}


def main(argv: Sequence[str] | None = None) -> None:
    from mobench.api import MobenchError, RunContext
    from mobench.calibration import attach
    from mobench.plugins import get_plugin_manager
    from mobench.runner import build_options
    from mobench.training import context_dtype, load_policy_with_adapters, resolve_device, training_prompts

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True)
    p.add_argument("--method", default="mage", help="the MAGE variant whose value budget is used (default mage)")
    p.add_argument("--scale", default="tiny")
    p.add_argument("--n-rollouts", default=None, help="comma-separated training rollout counts (default: MAGE's n)")
    p.add_argument("--heldout", type=int, default=64, help="rollouts in the common held-out set")
    p.add_argument("-o", "--option", action="append", default=[], help="a method option KEY=VALUE (as mobench run -o)")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--plugins-dir", default=None, help="a folder of extra plugin modules (as mobench --plugins-dir)")
    args = p.parse_args(argv)
    try:
        from mobench.methods.mage import value as V

        if args.heldout < 3:
            raise MobenchError(f"--heldout must be at least 3 rollouts, not {args.heldout}")
        bad = [o for o in args.option if "=" not in o]
        if bad:
            raise MobenchError(f"-o takes KEY=VALUE, got {bad[0]!r}")
        registry = get_plugin_manager(args.plugins_dir).registry
        spec = registry.method(args.method)
        opts = build_options(spec, args.scale, dict(o.split("=", 1) for o in args.option))
        if not hasattr(opts, "value"):
            raise MobenchError(f"{args.method!r} has no value budget (not MAGE or one of its ablations)")
        context = RunContext(seed=args.seed, device=args.device)
        context.registry = registry
        task_spec = registry.task(args.task)
        task = attach(task_spec, task_spec.load(args.scale, context))
        base = V.for_task(opts.value, task.generation.max_new_tokens)
        ns = [int(x) for x in args.n_rollouts.split(",")] if args.n_rollouts else [int(base.n_rollouts)]
        if any(n < 1 for n in ns):
            raise MobenchError(f"--n-rollouts must be positive, got {args.n_rollouts!r}")
        used = max(ns) + int(base.n_heldout)
        prompts = training_prompts(task, used + args.heldout, context.seed, base.max_prompt_chars)
        if len(prompts) < used + args.heldout:
            raise MobenchError(f"task {task.name!r} has {len(prompts)} training prompts of at most {base.max_prompt_chars} "
                               f"characters; {used + args.heldout} are needed (lower --n-rollouts or --heldout)")
        started = time.perf_counter()
        held = V.rollouts(task.policy, prompts[used:], base, context)
        lengths = [len(r["response_ids"]) for r in held]
        z = {o.name: [task.normalisation[o.name].apply(float(s), o.direction)
                      for s in o.score([r["prompt"] for r in held], [r["response"] for r in held])]
             for o in task.objectives}
        result: dict[str, Any] = {"task": task.name, "method": args.method, "scale": args.scale, "heldout": args.heldout,
                                  "heldout_rollout_seconds": round(time.perf_counter() - started, 1), "runs": []}
        device, dtype = resolve_device(context), context_dtype(context)
        per_n: dict[int, dict[str, list[list[float]]]] = {}
        for n in ns:
            budget = base.replace({"n_rollouts": n})
            t0 = time.perf_counter()
            paths = V.train_value_models(task.policy, task.objectives, task.normalisation,
                                         prompts[: n + int(budget.n_heldout)], budget, context)
            train_s = time.perf_counter() - t0
            model, tok = load_policy_with_adapters(task.policy, {f"value_{k}": str(v) for k, v in paths.items()}, device, dtype)
            run: dict[str, Any] = {"n_rollouts": n, "seconds": round(train_s, 1), "objectives": {}}
            per_n[n] = {}
            for o in task.objectives:
                model.set_adapter(f"value_{o.name}")
                values = values_at_positions(model, tok, V.load_head(paths[o.name]), held, device)
                per_n[n][o.name] = values
                record = V.fit_record(paths[o.name])
                run["objectives"][o.name] = {**fit(values, z[o.name], lengths, args.resamples, args.seed),
                                             "own_heldout_fit": record.get("heldout_fit"),
                                             "train_seconds": record.get("train_seconds"), "folder": paths[o.name].name}
            if n != ns[0]:
                run["difference_vs_first"] = {o.name: paired_difference(per_n[ns[0]][o.name], per_n[n][o.name], z[o.name],
                                                                        args.resamples, args.seed) for o in task.objectives}
            print(f"n={n}: " + ", ".join(f"{k} final {v['spearman_final']['value']:.2f} {v['spearman_final']['ci']}"
                                           for k, v in run["objectives"].items()), file=sys.stderr, flush=True)
            result["runs"].append(run)
            del model
    except MobenchError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
