"""bench/validation_sweep.py: any method's knob swept on a task's validation prompts only, through the real CLI entry.

ReACT's ``beta`` on the micro task of tests/shared_pieces: every decode sees validation prompts only; each setting's
HV is pymoo's hypervolume of its grid points recomputed here from the responses with the objectives themselves; the
chosen setting is the first of highest HV; the calibration statistics (keyed without beta) are built once. A bad
``--set`` and a task without validation prompts are one line and exit 2.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import TEST_DEVICE, TEST_DTYPE

HERE = Path(__file__).resolve().parent
MICRO_REACT = ["experts.steps=2", "experts.batch_size=2", "experts.max_length=64", "experts.lora_r=4", "experts.n_pairs=2",
               "experts.learning_rate=1e-3", "calibration_pairs=2", "positions=all"]


def _script():
    path = HERE.parent / "bench" / "validation_sweep.py"
    spec = importlib.util.spec_from_file_location("validation_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _error_line(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_react_beta_on_validation_prompts_only_hv_recomputed_and_the_argmax_chosen(tmp_path, smol_tokenizer, monkeypatch, capsys):
    from test_experts import save_micro_policy

    from mobench.api import RunContext
    from mobench.methods.react import React
    from mobench.metrics import hypervolume
    from mobench.plugins import get_plugin_manager

    sweep = _script()
    monkeypatch.setenv("MOBENCH_MICRO_POLICY", save_micro_policy(smol_tokenizer, tmp_path / "micro"))
    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))  # a fresh cache: the build log is this test's alone
    decoded: list[list[str]] = []
    generate = React.generate
    monkeypatch.setattr(React, "generate", lambda self, prompts, prefs: decoded.append(list(prompts)) or generate(self, prompts, prefs))

    out = tmp_path / "sweep.json"
    argv = ["--plugins-dir", str(HERE / "shared_pieces"), "--method", "react", "--task", "micro-pairs", "--device", "cpu",
            "--set", "beta=0.01,1000", *[x for o in MICRO_REACT for x in ("-o", o)], "--resamples", "200",
            "--json", str(out), "--markdown"]
    sweep.main(argv)
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())

    registry = get_plugin_manager(HERE / "shared_pieces").registry
    context = RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE)
    context.registry = registry
    task = sweep.load_task(registry, "micro-pairs", "tiny", context)
    assert len(decoded) == 2 and all(p == task.validation_prompts for p in decoded)  # react batches the grid: one call a setting
    assert not set(task.prompts) & {p for call in decoded for p in call}  # never an evaluation prompt

    rows = result["rows"]
    assert [r["setting"] for r in rows] == [{"beta": "0.01"}, {"beta": "1000"}] and [r["options"]["beta"] for r in rows] == [0.01, 1000.0]
    keys = [",".join(f"{w:.6f}" for w in weights) for weights in result["grid"]]
    assert len(keys) == task.grid_points and result["validation_prompts"] == task.validation_prompts
    for row in rows:
        points = []
        for key in keys:  # the objectives' own scores, normalised by hand: independent of score_point
            responses = row["responses"][key]
            z = []
            for objective in task.objectives:
                scores = objective.score(task.validation_prompts, responses)
                norm = task.normalisation[objective.name]
                z.append(objective.direction * (math.fsum(scores) / len(scores) - norm.mean) / (norm.std or 1.0))
            points.append(z)
            assert [row["points"][key][n] for n in task.objective_names] == pytest.approx(z, abs=1e-12)
        assert row["hv"] == pytest.approx(hypervolume(points, task.reference_point), abs=1e-12)
        assert row["hv"] > 0  # the test has teeth: the points lie inside the reference box
        lo, hi = row["hv_ci"]
        assert lo <= hi and all(math.isfinite(x) for x in (lo, hi))
        first, second = task.objective_names  # the grid runs from (0, 1) to (1, 0)
        assert row["corners"] == {first: row["points"][keys[-1]][first], second: row["points"][keys[0]][second]}
    best = max(range(len(rows)), key=lambda i: (rows[i]["hv"], -i))
    assert result["chosen"] == rows[best]["setting"] and result["chosen_index"] == best
    assert rows[best]["hv_minus_chosen"] == 0 and rows[best]["hv_minus_chosen_ci"] == [0, 0]
    # beta changes the maps, not the trained pieces: the experts and the calibration are built by the first prepare only
    built = [{b["kind"] for b in r["built"]} for r in rows]
    assert "react-calibration" in built[0] and built[1] == set()
    assert rows[0]["method_provenance"]["calibration"]["computed_now"] is True
    assert rows[1]["method_provenance"]["calibration"]["computed_now"] is False
    assert [r["method_provenance"]["calibration"]["beta"] for r in rows] == [0.01, 1000.0]  # each prepare got its setting
    assert result["command"].startswith("python bench/validation_sweep.py --plugins-dir") and "machine" in result
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert len(table) == 3 and sum("(chosen)" in line for line in table) == 1 and f"beta={rows[best]['setting']['beta']} (chosen)" in printed


def test_a_bad_set_and_a_task_without_validation_prompts_are_one_line_and_exit_2(capsys):
    sweep = _script()
    toy = ["--plugins-dir", str(HERE / "toy"), "--method", "letters", "--task", "toy"]
    assert "no option 'nope'" in _error_line(capsys, sweep.main, [*toy, "--set", "nope=1,2"])
    assert "must be an integer, not 'abc'" in _error_line(capsys, sweep.main, [*toy, "--set", "unit=2,abc"])
    assert "cannot read the values" in _error_line(capsys, sweep.main, [*toy, "--set", "unit=1,,2"])
    assert "--set takes KEY=VALUE" in _error_line(capsys, sweep.main, [*toy, "--set", "unit"])
    assert "both swept (--set) and fixed (-o)" in _error_line(capsys, sweep.main, [*toy, "--set", "unit=1,2", "-o", "unit=3"])
    assert "no validation prompts" in _error_line(capsys, sweep.main, [*toy, "--set", "unit=2,10"])


def test_validation_prompts_that_are_evaluation_prompts_are_refused():
    from mobench.api import MobenchError, TaskInstance

    sweep = _script()
    task = TaskInstance(name="t", scale="tiny", policy="p", objectives=[], prompts=["a", "b"], validation_prompts=["c"])
    assert sweep.validation_prompts(task) == ["c"]
    task.validation_prompts = ["c", "b"]  # past the instance's own check, as a plugin could leave it
    with pytest.raises(MobenchError, match="1 of its 2 validation prompts are evaluation prompts"):
        sweep.validation_prompts(task)


def test_settings_are_the_cartesian_product_last_key_fastest_with_bracketed_lists():
    sweep = _script()
    sets = sweep.parse_sets(["a=1,2", "b=[1,2],[3, 4]"])
    assert sets == [("a", ["1", "2"]), ("b", ["[1,2]", "[3, 4]"])]
    assert sweep.settings_product(sets) == [{"a": "1", "b": "[1,2]"}, {"a": "1", "b": "[3, 4]"},
                                            {"a": "2", "b": "[1,2]"}, {"a": "2", "b": "[3, 4]"}]
    assert sweep.choose([{"hv": 0.5}, {"hv": 0.7}, {"hv": 0.7}]) == 1


def test_first_unless_separable_keeps_the_first_setting_until_another_is_separably_better():
    sweep = _script()
    rng = np.random.default_rng(0)
    base = rng.normal(10.0, 1.0, 1000)
    noise = np.linspace(-0.3, 0.9, 1000)  # a difference whose 95% interval holds 0
    rows = [{"hv": 10.0}, {"hv": 10.3}]
    boots = [base, base + noise]
    assert sweep.choose(rows, boots, "highest") == 1
    assert sweep.choose(rows, boots, "first-unless-separable") == 0
    # two settings separably above the first (every replicate of the difference > 0): the higher HV of them
    rows += [{"hv": 10.5}, {"hv": 10.8}]
    boots += [base + 0.5 + 0.01 * noise, base + 0.8 + 0.01 * noise]
    assert sweep.choose(rows, boots, "first-unless-separable") == 3
    # a setting separably BELOW the first does not move the choice
    assert sweep.choose([{"hv": 10.0}, {"hv": 9.0}], [base, base - 1.0], "first-unless-separable") == 0
    with pytest.raises(ValueError, match="unknown rule"):
        sweep.choose(rows, boots, "lowest")
    with pytest.raises(ValueError, match="bootstrap"):
        sweep.choose(rows, None, "first-unless-separable")
