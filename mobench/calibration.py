"""A task's normalisation statistics and hypervolume reference point, per scale, for any registered task.

The file is the task's own (``register.task(..., calibration=PATH)``; else ``$MOBENCH_CACHE/calibration/
NAME.json``) and holds one record per scale. ``mobench calibrate --task T`` writes it; the runner reads it
for every task instance that does not bring its own normalisation.

Rule (documented, fixed): the reference policy (the scale's own policy, no steering) answers the
task's evaluation prompts with the scale's generation settings; for each objective, mean and std
(population, ddof=0) of its raw scores give z = direction * (score - mean) / std, so the reference
policy sits at z = 0 and higher z is better. The hypervolume reference point is z = -1 on every
objective: one reference standard deviation below the reference policy's mean.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from mobench.api import MobenchError, Normalisation, TaskInstance, TaskSpec, prompts_sha256
from mobench.metrics import mean_and_std

REFERENCE_Z = -1.0
RULE = (
    "mean/std (ddof=0) of each objective's raw scores on the reference policy's own responses to the "
    "evaluation prompts; z = direction*(score-mean)/std; reference point z = -1 per objective"
)


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
                  "calibration_rule": record.get("rule", RULE)}
    return dataclasses.replace(instance, normalisation=norm, reference_point=ref, provenance=provenance)


def statistics(scores: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Mean and population std of each objective's scores; a zero std is an error (z undefined)."""
    out = {}
    for name, values in scores.items():
        mean, std = mean_and_std(values, ddof=0)
        if not std > 0:
            raise MobenchError(f"objective {name!r} gave the same score to every reference response; cannot normalise")
        out[name] = {"mean": mean, "std": std}
    return out


def reference_responses(instance: TaskInstance, device: str | None = None, seed: int = 0) -> list[str]:
    """The reference policy's responses to the instance's prompts with its generation settings."""
    from mobench.decoding.generate import generate_responses
    from mobench.models import load_causal_lm

    model, tok = load_causal_lm(instance.policy, device=device)
    g = instance.generation
    responses = generate_responses(model, tok, instance.prompts, max_new_tokens=g.max_new_tokens, do_sample=g.do_sample,
                                   temperature=g.temperature, batch_size=g.batch_size, seed=seed)
    return [r.strip() for r in responses]


def calibrate(instance: TaskInstance, device: str | None = None) -> dict[str, Any]:
    """Compute a task instance's calibration record from its reference policy's responses."""
    start = time.perf_counter()
    responses = reference_responses(instance, device=device)
    gen_s = time.perf_counter() - start
    scores = {o.name: o.score(instance.prompts, responses) for o in instance.objectives}
    stats = statistics(scores)
    for o in instance.objectives:
        stats[o.name]["direction"] = o.direction
    return {
        "policy": instance.policy,
        "n_prompts": len(instance.prompts),
        "prompts_sha256": prompts_sha256(instance.prompts),
        "generation": instance.generation.to_dict(),
        "objective_names": [o.name for o in instance.objectives],  # the weight order (the file sorts keys)
        "objectives": stats,
        "reference_point": [REFERENCE_Z] * len(instance.objectives),
        "rule": RULE,
        # Machine-specific paths (artifact folder, data files) stay out of the committed file.
        "scorers": {o.name: {k: v for k, v in o.provenance().items() if k not in ("artifact", "data")}
                    for o in instance.objectives},
        "generation_seconds": round(gen_s, 1),
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
    record = calibrate(instance, device=device)
    return write(calibration_path(spec), task, scale, record), record
