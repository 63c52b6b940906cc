"""A third-party task, installed through an entry point, calibrated by the core's `mobench calibrate`.

The package is written by the test, as its author would: public names only (mobench.api, mobench.toolkit),
objectives from the registry by name, no normalisation of its own. Its policy is the micro model saved
to a folder. It is pip-installed into a private folder (PYTHONPATH), so nothing is left installed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import mobench

EXAMPLE = Path(__file__).resolve().parent / "example_plugin"

TASK_MODULE = '''
"""A third-party mobench task: six questions, answered briefly and politely."""

import os

from mobench import hookimpl
from mobench.api import TaskInstance
from mobench.toolkit import chat_prompts

QUESTIONS = ["How do I boil an egg?", "What is the capital of France?", "Why is the sky blue?",
             "How do plants grow?", "What is a prime number?", "How far away is the moon?"]


def load(scale, context):
    policy = os.environ["TINYTASK_POLICY"]  # a folder, an alias (mobench.toolkit.policy_aliases()) or a hub id
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    return TaskInstance(
        name="tinytask", scale=scale, policy=policy,
        objectives=[context.objective(name, scale) for name in ("brevity", "toxicity")],
        prompts=chat_prompts(policy, chats), chats=chats, grid_points=3,
        # Sampled (seeded by the core): a random micro model's greedy reply is the same run of newlines.
        generation={"max_new_tokens": 16, "do_sample": True, "batch_size": 6},
    )


@hookimpl
def register_tasks(register):
    # No calibration= : the file goes to $MOBENCH_CACHE/calibration/tinytask.json.
    register.task("tinytask", load, objectives=("brevity", "toxicity"), description="six questions (a test)")
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "mobench-tinytask"
version = "0.2.0"
dependencies = ["mobench"]

[project.entry-points.mobench]
tinytask = "mobench_tinytask"
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory, smol_tokenizer):
    """The task package and the README's example method plugin in a private site folder; the micro policy."""
    from mobench.models import micro_causal_lm

    root = tmp_path_factory.mktemp("tinytask")
    pkg = root / "pkg"
    (pkg / "mobench_tinytask").mkdir(parents=True)
    (pkg / "mobench_tinytask" / "__init__.py").write_text(textwrap.dedent(TASK_MODULE).lstrip())
    (pkg / "pyproject.toml").write_text(PYPROJECT.lstrip())
    site = root / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(pkg), str(EXAMPLE)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    policy = root / "micro"
    micro_causal_lm(smol_tokenizer, seed=0).save_pretrained(policy)
    smol_tokenizer.save_pretrained(policy)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
            "TINYTASK_POLICY": str(policy), "MOBENCH_CACHE": str(root / "cache")}


def test_third_party_task_is_calibrated_by_the_core_and_runs(installed, tmp_path):
    listed = mobench("list", "tasks", env=installed, check=True).stdout
    assert "tinytask" in listed
    proc = mobench("calibrate", "--task", "tinytask", "--device", "cpu", env=installed)
    assert proc.returncode == 0, proc.stderr
    path = Path(installed["MOBENCH_CACHE"]) / "calibration" / "tinytask.json"
    assert path.is_file() and str(path) in proc.stdout
    record = json.loads(path.read_text())["scales"]["tiny"]
    assert record["objective_names"] == ["brevity", "toxicity"] and record["n_prompts"] == 6
    for name, stat in record["objectives"].items():
        assert math.isfinite(stat["mean"]) and math.isfinite(stat["std"]) and stat["std"] > 0, (name, stat)
        assert stat["direction"] == -1  # as registered by the built-in objective plugin
    # the core's rule: two robust units below the low end of the observed range, on every objective
    margin = record["rule_parameters"]["margin_z"]
    expected = [record["objectives"][n]["range_z"][0] - margin for n in record["objective_names"]]
    assert record["reference_point"] == pytest.approx(expected) and all(math.isfinite(x) for x in expected)

    # The runner attaches that calibration: a method (the README's example plugin) runs on the task.
    results = tmp_path / "results"
    proc = mobench("run", "--method", "prompted", "--task", "tinytask", "--device", "cpu", "-o", "max_new_tokens=8",
                   "--results", str(results), env=installed)
    assert proc.returncode == 0, proc.stderr
    [run] = list((results / "tinytask" / "prompted").iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["reference_point"] == pytest.approx(record["reference_point"])
    assert manifest["normalisation"] == {name: {"mean": s["mean"], "std": s["std"]} for name, s in record["objectives"].items()}
    assert manifest["task_provenance"]["calibration_file"] == str(path)
    assert manifest["plugins"]["versions"]["tinytask"] == "0.2.0"
    rows = [json.loads(x) for x in (run / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["n"] == 6 for r in rows)
