"""Per-task, per-scale normalisation statistics and hypervolume reference point, stored in tasks/<task>.json.

Rule (documented, fixed): the reference policy (the scale's own policy, no steering) answers the
task's evaluation prompts with the scale's generation settings; for each objective, mean and std
(population, ddof=0) of its raw scores give z = direction * (score - mean) / std, so the reference
policy sits at z = 0 and higher z is better. The hypervolume reference point is z = -1 on every
objective: one reference standard deviation below the reference policy's mean.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from mobench.api import MobenchError, Normalisation

TASKS_DIR = Path(__file__).resolve().parent
REFERENCE_Z = -1.0
RULE = (
    "mean/std (ddof=0) of each objective's raw scores on the reference policy's own responses to the "
    "evaluation prompts; z = direction*(score-mean)/std; reference point z = -1 per objective"
)


def calibration_path(task: str) -> Path:
    """The committed calibration file of a built-in task."""
    return TASKS_DIR / f"{task}.json"


def digest(items: Sequence[str]) -> str:
    """sha256 of a list of strings (prompts, objective names), to detect a stale calibration."""
    return hashlib.sha256(json.dumps(list(items)).encode()).hexdigest()


def read(task: str, scale: str, prompts: Sequence[str], objectives: Sequence[str]) -> tuple[dict[str, Normalisation], tuple[float, ...], dict[str, Any]]:
    """The stored ``(normalisation, reference_point, record)``; MobenchError naming the command when missing or stale."""
    command = f"mobench calibrate --task {task} --scale {scale}"
    path = calibration_path(task)
    record = json.loads(path.read_text()).get("scales", {}).get(scale) if path.exists() else None
    if record is None:
        raise MobenchError(f"task {task!r} has no calibration for scale {scale!r}; run `{command}`")
    if record["prompts_sha256"] != digest(prompts) or record.get("objective_names") != list(objectives):
        raise MobenchError(f"the calibration of task {task!r} at scale {scale!r} is stale (prompts or objectives changed); run `{command}`")
    norm = {name: Normalisation(record["objectives"][name]["mean"], record["objectives"][name]["std"]) for name in objectives}
    return norm, tuple(record["reference_point"]), record


def statistics(scores: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Mean and population std of each objective's scores; a zero std is an error (z undefined)."""
    out = {}
    for name, values in scores.items():
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        if not std > 0:
            raise MobenchError(f"objective {name!r} gave the same score to every reference response; cannot normalise")
        out[name] = {"mean": mean, "std": std}
    return out


def generate(policy: str, prompts: Sequence[str], generation: dict[str, Any], device: str | None = None, seed: int = 0) -> list[str]:
    """The reference policy's responses to ``prompts`` (batched ``model.generate``, left padding)."""
    import torch

    from mobench.models import load_causal_lm

    model, tok = load_causal_lm(policy, device=device)
    torch.manual_seed(seed)
    out: list[str] = []
    bs = int(generation.get("batch_size", 8))
    kwargs = {"max_new_tokens": int(generation["max_new_tokens"]), "do_sample": bool(generation.get("do_sample", False)),
              "pad_token_id": tok.pad_token_id}
    if kwargs["do_sample"]:
        kwargs["temperature"] = float(generation.get("temperature", 1.0))
    for i in range(0, len(prompts), bs):
        # The prompts already carry the chat template and its special tokens.
        enc = tok(list(prompts[i : i + bs]), return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            ids = model.generate(**enc, **kwargs)
        out.extend(t.strip() for t in tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def calibrate(instance, device: str | None = None) -> dict[str, Any]:
    """Compute a task instance's calibration record from its reference policy's responses."""
    import time

    start = time.perf_counter()
    responses = generate(instance.policy, instance.prompts, instance.generation, device=device)
    gen_s = time.perf_counter() - start
    scores = {o.name: o.score(instance.prompts, responses) for o in instance.objectives}
    stats = statistics(scores)
    for o in instance.objectives:
        stats[o.name]["direction"] = o.direction
    return {
        "policy": instance.policy,
        "n_prompts": len(instance.prompts),
        "prompts_sha256": digest(instance.prompts),
        "generation": instance.generation,
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


def write(task: str, scale: str, record: dict[str, Any]) -> Path:
    """Store ``record`` as the calibration of ``task`` at ``scale`` (other scales kept)."""
    path = calibration_path(task)
    content = json.loads(path.read_text()) if path.exists() else {"task": task, "scales": {}}
    content["scales"][scale] = record
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    return path
