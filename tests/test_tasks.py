"""The hh and summarize tasks: real prompts, pairs apart from them, committed calibration, determinism."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mobench import calibration
from mobench.api import MobenchError, RunContext
from mobench.plugins import get_plugin_manager
from mobench.tasks import chats, hh
from helpers import TEST_DEVICE


def _spec(task: str):
    return get_plugin_manager(entry_points=False).registry.task(task)


def _loaded(task: str, context: RunContext, spec=None):
    """The task as the runner has it: loaded, then its calibration attached by the core."""
    spec = spec or _spec(task)
    return calibration.attach(spec, spec.load("tiny", context))


@pytest.fixture(scope="module")
def hh_tiny(data_dir):
    return _loaded("hh", RunContext())


def _assert_box_rule(task):
    """The committed calibration follows the rule: each objective's reference point lies MARGIN_Z below the
    worse end of its recorded range, which holds both sources' 5-95% ranges, and the z of the data's and
    the reference policy's 5% quantiles are inside the box."""
    path = calibration.calibration_path(_spec(task.name))
    record = json.loads(path.read_text())["scales"][task.scale]
    for name, ref in zip(task.objective_names, task.reference_point):
        stat, norm = record["objectives"][name], task.normalisation[name]
        d = stat["direction"]
        assert (norm.mean, norm.std) == (stat["mean"], stat["std"]) and norm.std > 0
        assert ref == pytest.approx(min(stat["range_z"]) - calibration.MARGIN_Z)
        for source in ("data", "reference"):
            q = stat["sources"][source]
            worse = q["q05"] if d == 1 else q["q95"]
            assert norm.apply(worse, d) > ref and q["n"] >= 32


@pytest.mark.slow
def test_hh_tiny_is_complete_and_consistent(hh_tiny):
    task = hh_tiny
    assert (task.name, task.scale, task.policy, task.grid_points) == ("hh", "tiny", "smollm2-135m-instruct", 5)
    assert task.objective_names == ["helpful", "harmless"]
    assert len(task.prompts) == 32 and len(set(task.prompts)) == 32
    assert all(p.startswith("<|im_start|>system") and p.endswith("<|im_start|>assistant\n") for p in task.prompts)
    assert set(task.normalisation) == {"helpful", "harmless"} and all(n.std > 0 for n in task.normalisation.values())
    _assert_box_rule(task)
    assert set(task.generation.to_dict()) == {"max_new_tokens", "do_sample", "temperature", "batch_size"}
    assert len(task.pairs["harmless"]) == 2070 and len(task.pairs["helpful"]) == 422
    train_prompts = {p.prompt for pairs in task.pairs.values() for p in pairs}
    assert not train_prompts & set(task.prompts)
    assert all(p.prompt.startswith("<|im_start|>") for p in task.pairs["harmless"][:50])
    assert task.provenance["data"][0]["origin"] == "data_dir"
    # The structured chats beside the templated prompts: every scorer context read from the chat the task
    # templated is the one the regex reads back from the text (the results do not depend on the table).
    assert len(task.chats) == 32 and task.chats[-1][-1]["content"] in task.prompts[-1]
    every = task.prompts + [p.prompt for pairs in task.pairs.values() for p in pairs]
    assert all(chats.messages(p) == chats.parse_prompt(p) for p in every)


@pytest.mark.slow
def test_two_loads_give_identical_prompts_statistics_and_reference_point(hh_tiny):
    again = _loaded("hh", RunContext(seed=123))  # the run's seed must not move the task
    assert again.prompts == hh_tiny.prompts
    assert again.normalisation == hh_tiny.normalisation and again.reference_point == hh_tiny.reference_point
    assert [p.prompt for p in again.pairs["helpful"][:20]] == [p.prompt for p in hh_tiny.pairs["helpful"][:20]]


@pytest.mark.slow
def test_calibration_is_reproducible_from_the_reference_policy(hh_tiny, monkeypatch):
    # 40 data responses per pair set instead of 300: the rule is the same, and the two calibrations score a
    # fifth of the texts (embedding them was most of this test's minute on a 2-core machine)
    monkeypatch.setattr(calibration, "MAX_DATA_RESPONSES", 40)
    mini = dataclasses.replace(hh_tiny, prompts=hh_tiny.prompts[:4], chats=hh_tiny.chats[:4],
                               generation=dataclasses.replace(hh_tiny.generation, max_new_tokens=12, batch_size=4))
    first, second = calibration.calibrate(mini, device=TEST_DEVICE), calibration.calibrate(mini, device=TEST_DEVICE)
    assert first["objectives"] == second["objectives"] and first["prompts_sha256"] == second["prompts_sha256"]
    # The reference policy's responses sit at z = 0 on average; the reference point below every source's 5% quantile.
    responses = calibration.reference_responses(mini, device=TEST_DEVICE)
    for o, ref in zip(mini.objectives, first["reference_point"]):
        stat = first["objectives"][o.name]
        z = [o.direction * (s - stat["mean"]) / stat["std"] for s in o.score(mini.prompts, responses)]
        assert sum(z) / len(z) == pytest.approx(0, abs=1e-9) and stat["std"] > 0
        assert ref < min(stat["range_z"]) and stat["sources"]["data"]["n"] == 2 * 40
    assert first["data_responses"]["n"] == 2 * 40 and first["rule_parameters"]["max_data_responses_per_pair_set"] == 40


@pytest.mark.slow
def test_summarize_tiny_loads_with_quality_and_brevity(data_dir):
    task = _loaded("summarize", RunContext())
    assert task.objective_names == ["quality", "brevity"] and [o.direction for o in task.objectives] == [1, -1]
    assert len(task.prompts) == 32 and all("TL;DR summary" in p for p in task.prompts)
    assert task.normalisation["brevity"].mean > 0
    _assert_box_rule(task)
    # Brevity is a word count with direction -1: fewer words give a higher z.
    brevity = task.normalisation["brevity"]
    assert brevity.apply(10.0, -1) > brevity.apply(30.0, -1)
    assert len(task.pairs["quality"]) == 1000 and len(task.pairs["brevity"]) > 300
    assert not {p.prompt for ps in task.pairs.values() for p in ps} & set(task.prompts)


def test_missing_calibration_names_the_command(data_dir, tmp_path):
    elsewhere = dataclasses.replace(_spec("summarize"), calibration=tmp_path / "summarize.json")
    with pytest.raises(MobenchError, match="run `mobench calibrate --task summarize --scale tiny`"):
        _loaded("summarize", RunContext(), elsewhere)


def test_stale_calibration_is_refused(data_dir, tmp_path):
    content = json.loads(calibration.calibration_path(_spec("summarize")).read_text())
    content["scales"]["tiny"]["prompts_sha256"] = "0" * 64
    (tmp_path / "summarize.json").write_text(json.dumps(content))
    elsewhere = dataclasses.replace(_spec("summarize"), calibration=tmp_path / "summarize.json")
    with pytest.raises(MobenchError, match="stale"):
        _loaded("summarize", RunContext(), elsewhere)


def test_calibration_files_are_committed_for_tiny():
    for task in ("hh", "summarize"):
        path = calibration.calibration_path(_spec(task))
        assert path.parent.name == "tasks" and path.name == f"{task}.json"
        record = json.loads(path.read_text())["scales"]["tiny"]
        assert record["n_prompts"] == 32 and record["rule"] == calibration.RULE
        assert len(record["reference_point"]) == len(record["objective_names"])


def test_unknown_scale_and_offline_paper_policy_are_clear_errors(data_dir):
    with pytest.raises(MobenchError, match="no scale 'huge'"):
        hh.load("huge", RunContext())
    # Paper scale needs its hub policy; offline and uncached it is an error, not a fallback.
    with pytest.raises(MobenchError, match="Qwen/Qwen2.5-7B-Instruct"):
        hh.load("paper", RunContext())


def test_tasks_are_registered_with_their_objectives():
    from mobench.plugins import get_plugin_manager

    registry = get_plugin_manager(entry_points=False).registry
    assert registry.task("hh").objectives == ("helpful", "harmless")
    assert registry.task("summarize").objectives == ("quality", "brevity")


@pytest.mark.slow
def test_objectives_eval_command_prints_held_out_accuracies(data_dir):
    import click
    from click.testing import CliRunner

    from mobench.tasks import commands

    cli = click.Group("mobench")
    commands.register_commands(cli)
    result = CliRunner().invoke(cli, ["objectives", "eval", "--task", "hh"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert "held-out" in lines["harmless"] and float(lines["harmless"].split()[2]) > 0.60
    # Beside it, the length-only baseline on the same held-out pairs and the correlation with length.
    assert "length-only" in lines["harmless"] and "spearman(words)" in lines["harmless"]
    for name in ("helpful", "harmless"):
        fields = lines[name].split()
        accuracy, baseline = float(fields[2]), float(fields[fields.index("length-only") + 1])
        assert 0.4 < baseline < accuracy - 0.05  # each hh head beats length alone by a clear margin
    from mobench.cli import cli as mobench_cli

    assert "calibrate" in mobench_cli.commands  # a core command now, for every task
