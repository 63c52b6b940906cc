"""A task's normalisation statistics and hypervolume reference point, per scale, for any registered task.

The file is the task's own (``register.task(..., calibration=PATH)``; else ``$MOBENCH_CACHE/calibration/
NAME.json``) and holds one record per scale. ``mobench calibrate --task T`` writes it; the runner reads it
for every task instance that does not bring its own normalisation.

The rule (fixed before any method runs; it reads no method's output):

* Two sources of responses per objective. *Data*: the human-written (or data-set) responses of the
  task's preference pairs, chosen and rejected, leaving out every response a trained scorer was fitted
  on (a head scores its own training responses too well), at most :data:`MAX_DATA_RESPONSES` per pair
  set in a seeded order; the pairs never share a prompt with the evaluation prompts (by construction).
  *Reference*: the reference policy's (no steering) greedy responses to the evaluation prompts.
  *Prefixes*: those responses cut to their first 1/4, 1/2 and 3/4 of words: the length end of the
  trade-off (a policy steered to brevity, or one that gives up content, writes less; on summarize a
  10-word summary scores quality ~4.1 where the data's 5th percentile is 5.1, so without them the
  brevity corner of every method would fall outside the box).
* Per objective, with the direction applied (higher is better), the box's realistic range is the
  envelope of the sources' 5-95% ranges: ``lo = min(q05)``, ``hi = max(q95)`` over the three.
* z = direction * (score - mean_ref) / s with ``mean_ref`` the reference policy's mean (the reference
  policy stays at z = 0 on average) and ``s = (hi - lo) / (2 * 1.645)``: the standard deviation of a
  normal distribution whose 5-95% range is the envelope (one robust unit of the task's own spread,
  not the reference policy's, whose greedy answers can be 3x tighter than the data).
* The hypervolume reference point is ``z(lo) - MARGIN_Z`` per objective: :data:`MARGIN_Z` robust units
  below the worse end of the realistic range, so a point that gives up one objective down to (and
  beyond) the data's 5th percentile still adds volume through the other.

Why: the former rule (mean/std of 32 reference responses, reference point z = -1) measured distance
from the reference policy: on summarize the reference's quality std was 0.32, every brevity corner sat
at quality z -7 to -11 and added no volume. Quantiles are robust to a few degenerate answers; the
envelope of human data and the reference policy holds both the data's trade-off and the policy's own
region, and the prefixes its length end; a margin of 2 robust units below a 5% quantile is ~3.6 sd
below the middle of a normal range.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from mobench.api import MobenchError, Normalisation, TaskInstance, TaskSpec, prompts_sha256

LOW_Q, HIGH_Q = 0.05, 0.95  # the quantiles of each source that bound the realistic range
Z_PER_RANGE = 2 * 1.6448536269514722  # a normal's 5-95% range in standard deviations: 2 * Phi^-1(0.95)
MARGIN_Z = 2.0  # the reference point's distance below the worse end of the range, in robust units
PREFIX_FRACTIONS = (0.25, 0.5, 0.75)  # the reference responses cut short: the length end of the trade-off
MAX_DATA_RESPONSES = 300  # per pair set (seeded), to keep scoring cheap on a CPU
RULE = (
    "z = direction*(score - mean of the reference policy's responses)/s, s = (hi - lo)/(2*1.645) where "
    "[lo, hi] (direction applied) is the envelope of the 5-95% ranges of the task's held-out data responses "
    "(preference pairs' chosen and rejected, none a scorer trained on) and of the reference policy's "
    "responses and of those responses cut to 1/4, 1/2 and 3/4 of their words; reference point = z(lo) - 2 per objective"
)


def box(pools: dict[str, dict[str, Sequence[float]]], directions: dict[str, int], centres: dict[str, float]) -> tuple[dict[str, dict[str, Any]], list[float]]:
    """The rule itself, on raw scores: ``(stats, reference_point)``.

    ``pools[name][source]``: an objective's raw scores from each source ("data", "reference");
    ``centres[name]``: its raw score at z = 0 (the reference policy's mean). ``stats[name]`` has
    ``mean`` and ``std`` (z = direction * (score - mean) / std, as :class:`mobench.api.Normalisation`),
    the direction, each source's n and quantiles (raw) and the envelope (direction applied).
    """
    import numpy as np

    stats: dict[str, dict[str, Any]] = {}
    reference_point = []
    for name, sources in pools.items():
        d = directions[name]
        if d not in (1, -1):
            raise MobenchError(f"objective {name!r} has direction {d!r}; expected 1 or -1")
        summary, lows, highs = {}, [], []
        for source, values in sources.items():
            x = np.asarray(values, dtype=float)
            if x.size == 0:
                continue
            q = np.quantile(d * x, [LOW_Q, 0.5, HIGH_Q])  # direction applied: q[0] is the worse end
            lows.append(float(q[0]))
            highs.append(float(q[2]))
            raw = sorted(float(d * v) for v in q)
            summary[source] = {"n": int(x.size), "q05": raw[0], "median": float(d * q[1]), "q95": raw[2]}
        if not lows:
            raise MobenchError(f"objective {name!r} has no scores to calibrate on")
        lo, hi = min(lows), max(highs)
        std = (hi - lo) / Z_PER_RANGE
        if not std > 0:
            raise MobenchError(f"objective {name!r} gave the same score to (nearly) every response; cannot normalise")
        mean = float(centres[name])
        z_lo = (lo - d * mean) / std  # = direction * (raw(lo) - mean) / std
        stats[name] = {"mean": mean, "std": float(std), "direction": d, "sources": summary,
                       "range_directed": [lo, hi], "range_z": [z_lo, (hi - d * mean) / std]}
        reference_point.append(float(z_lo - MARGIN_Z))
    return stats, reference_point


def calibration_path(spec: TaskSpec) -> Path:
    """Where the calibration of a registered task lives: its declared file, else the cache folder."""
    if spec.calibration is not None:
        return Path(spec.calibration)
    from mobench.artifacts import cache_root

    return cache_root() / "calibration" / f"{spec.name}.json"


def read(path: Path, task: str, scale: str, prompts: Sequence[str], objectives: Sequence[str]) -> tuple[dict[str, Normalisation], tuple[float, ...], dict[str, Any]]:
    """The stored ``(normalisation, reference_point, record)``; MobenchError naming the command when missing or stale."""
    command = f"mobench calibrate --task {task} --scale {scale}"
    try:
        record = json.loads(path.read_text()).get("scales", {}).get(scale) if path.exists() else None
    except (ValueError, OSError, AttributeError) as err:
        raise MobenchError(f"the calibration file {path} of task {task!r} cannot be read ({err}); run `{command}`") from None
    if record is None:
        raise MobenchError(f"task {task!r} has no calibration for scale {scale!r} in {path}; run `{command}`")
    if record.get("prompts_sha256") != prompts_sha256(prompts) or record.get("objective_names") != list(objectives):
        raise MobenchError(f"the calibration of task {task!r} at scale {scale!r} is stale (prompts or objectives changed); run `{command}`")
    norm = {name: Normalisation(record["objectives"][name]["mean"], record["objectives"][name]["std"]) for name in objectives}
    return norm, tuple(record["reference_point"]), record


def attach(spec: TaskSpec, instance: TaskInstance) -> TaskInstance:
    """The instance with normalisation and reference point from the calibration file (kept if it brings its own)."""
    if instance.calibrated:
        return instance
    path = calibration_path(spec)
    norm, ref, record = read(path, instance.name, instance.scale, instance.prompts, instance.objective_names)
    provenance = {**instance.provenance, "calibration_file": str(path), "calibration_created": record.get("created"),
                  "calibration_rule": record.get("rule", RULE),
                  # how much of each objective is length, on the reference policy's responses (raw score vs words)
                  "objective_length_spearman": {name: (record["objectives"][name].get("spearman_with_words") or {}).get("reference")
                                                for name in instance.objective_names}}
    return dataclasses.replace(instance, normalisation=norm, reference_point=ref, provenance=provenance)


def data_responses(instance: TaskInstance, limit: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """``(prompt, response)`` of the task's preference pairs, chosen and rejected, that no objective's scorer
    was fitted on (its ``trained_on``); at most ``limit`` per pair set, in a seeded order, without repeats."""
    import random

    limit = MAX_DATA_RESPONSES if limit is None else limit
    seen = frozenset().union(*(getattr(o, "trained_on", None) or frozenset() for o in instance.objectives))
    out: list[tuple[str, str]] = []
    taken: set[tuple[str, str]] = set()
    for name in sorted(instance.pairs):
        candidates = sorted({(p.prompt, r) for p in instance.pairs[name] for r in (p.chosen, p.rejected)
                             if r.strip() and r not in seen} - taken)
        random.Random(seed).shuffle(candidates)
        for item in candidates[:limit]:
            taken.add(item)
            out.append(item)
    return out


def prefixes(responses: Sequence[str]) -> list[str]:
    """Each response cut to its first quarter, half and three quarters of words (:data:`PREFIX_FRACTIONS`, at
    least one word), fraction by fraction: what a policy that gives up content for length writes."""
    out = []
    for fraction in PREFIX_FRACTIONS:
        for r in responses:
            words = r.split()
            out.append(" ".join(words[: max(1, round(fraction * len(words)))]))
    return out


def length_correlations(scores: dict[str, list[float]], responses: Sequence[str]) -> dict[str, float | None]:
    """Spearman correlation of each objective's raw score with the response's length in words (None if undefined)."""
    import math

    from scipy.stats import spearmanr

    words = [len(r.split()) for r in responses]
    out: dict[str, float | None] = {}
    for name, values in scores.items():
        rho = float(spearmanr(values, words).statistic) if len(values) > 2 else float("nan")
        out[name] = None if math.isnan(rho) else rho
    return out


_GENERATION_SECONDS: dict[str, float | None] = {}  # prompts digest -> seconds the (cached) generation took


def reference_responses(instance: TaskInstance, device: str | None = None, seed: int = 0, dtype: str | None = None) -> list[str]:
    """The reference policy's responses to the instance's prompts with its generation settings.

    Kept in ``$MOBENCH_CACHE/reference-responses/`` under a key of policy, prompts, generation settings,
    seed, device, dtype (when not the device's default) and library versions: recalibrating after a scorer changed re-scores the same
    responses without regenerating them (greedy CPU generation of 32 responses takes ~10-30 minutes).
    """
    from mobench.artifacts import cache_root, key_digest, library_versions

    key = {"policy": instance.policy, "prompts_sha256": prompts_sha256(instance.prompts),
           "generation": instance.generation.to_dict(), "seed": seed, "device": device or "auto",
           "versions": library_versions("torch", "transformers")}
    if dtype not in (None, "auto"):
        key["dtype"] = dtype
    path = cache_root() / "reference-responses" / f"{key_digest(key)[:24]}.json"
    if path.exists():
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key and len(cached.get("responses", [])) == len(instance.prompts):
                _GENERATION_SECONDS[key["prompts_sha256"]] = cached.get("seconds")
                return list(cached["responses"])
        except (ValueError, OSError, AttributeError):
            pass  # a damaged cache file: generate again
    from mobench.decoding.generate import generate_responses
    from mobench.models import load_causal_lm, resolve_dtype

    model, tok = load_causal_lm(instance.policy, device=device, dtype=resolve_dtype(dtype))
    g = instance.generation
    start = time.perf_counter()
    responses = generate_responses(model, tok, instance.prompts, max_new_tokens=g.max_new_tokens, do_sample=g.do_sample,
                                   temperature=g.temperature, batch_size=g.batch_size, seed=seed, top_p=g.top_p)
    responses = [r.strip() for r in responses]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "responses": responses, "seconds": round(time.perf_counter() - start, 1)}, indent=1))
    tmp.replace(path)
    _GENERATION_SECONDS[key["prompts_sha256"]] = round(time.perf_counter() - start, 1)
    return responses


def calibrate(instance: TaskInstance, device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    """Compute a task instance's calibration record (the rule in the module docstring)."""
    start = time.perf_counter()
    responses = reference_responses(instance, device=device, dtype=dtype)
    gen_s = time.perf_counter() - start
    data = data_responses(instance)
    cut = prefixes(responses)
    ref_scores = {o.name: o.score(instance.prompts, responses) for o in instance.objectives}
    data_scores = {o.name: o.score([p for p, _ in data], [r for _, r in data]) if data else [] for o in instance.objectives}
    cut_scores = {o.name: o.score(instance.prompts * len(PREFIX_FRACTIONS), cut) for o in instance.objectives}
    stats, reference_point = box(
        {name: {"data": data_scores[name], "reference": ref_scores[name], "prefixes": cut_scores[name]}
         for name in ref_scores},
        {o.name: o.direction for o in instance.objectives},
        {name: sum(v) / len(v) for name, v in ref_scores.items()},
    )
    ref_rho = length_correlations(ref_scores, responses)
    data_rho = length_correlations(data_scores, [r for _, r in data]) if data else {}
    for name in stats:  # raw scores (not direction-applied) against words
        stats[name]["spearman_with_words"] = {"reference": ref_rho.get(name), "data": data_rho.get(name)}
    return {
        "policy": instance.policy,
        "n_prompts": len(instance.prompts),
        "prompts_sha256": prompts_sha256(instance.prompts),
        "generation": instance.generation.to_dict(),
        "objective_names": [o.name for o in instance.objectives],  # the weight order (the file sorts keys)
        "objectives": stats,
        "reference_point": reference_point,
        "rule": RULE,
        "rule_parameters": {"quantiles": [LOW_Q, HIGH_Q], "prefix_fractions": list(PREFIX_FRACTIONS), "z_per_range": Z_PER_RANGE, "margin_z": MARGIN_Z,
                            "max_data_responses_per_pair_set": MAX_DATA_RESPONSES, "centre": "reference policy mean"},
        "data_responses": {"n": len(data), "pair_sets": sorted(instance.pairs),
                           "sha256": hashlib.sha256(json.dumps(data).encode()).hexdigest()},
        # Machine-specific paths (artifact folder, data files) stay out of the committed file.
        "scorers": {o.name: {k: v for k, v in o.provenance().items() if k not in ("artifact", "data")}
                    for o in instance.objectives},
        # seconds the generation took when it ran (it may come from the cache: the record says so)
        "generation_seconds": _GENERATION_SECONDS.get(prompts_sha256(instance.prompts), round(gen_s, 1)),
        "responses_cached": gen_s < 1.0,
        "mean_response_words": sum(len(r.split()) for r in responses) / max(1, len(responses)),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": platform.machine(),
    }


def write(path: Path, task: str, scale: str, record: dict[str, Any]) -> Path:
    """Store ``record`` as the calibration of ``task`` at ``scale`` in ``path`` (other scales kept)."""
    path = Path(path)
    try:
        content = json.loads(path.read_text()) if path.exists() else {"task": task, "scales": {}}
    except ValueError:
        content = {"task": task, "scales": {}}
    content.setdefault("scales", {})[scale] = record
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def calibrate_task(registry, task: str, scale: str, device: str | None = None, context=None) -> tuple[Path, dict[str, Any]]:
    """Load any registered task without its calibration, calibrate it and write its file: (path, record)."""
    from mobench.api import RunContext

    spec = registry.task(task)
    context = context or RunContext(device=device, registry=registry)
    instance = spec.load(scale, context)
    record = calibrate(instance, device=device, dtype=context.dtype)
    return write(calibration_path(spec), task, scale, record), record
