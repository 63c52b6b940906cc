"""The runner's own arithmetic: z-scores with direction -1 and a non-trivial mean and std, attempt tagging."""

from __future__ import annotations

import json

import pytest

from mobench.api import Normalisation, RunContext, TaskInstance
from mobench.plugins import get_plugin_manager
from mobench.runner import RunConfig, execute, score_point
from mobench.store import Store


class Words:
    """Counts words: direction -1 (fewer is better), like summarize's brevity."""

    name, direction = "words", -1

    def score(self, prompts, responses):
        return [float(len(r.split())) for r in responses]

    def provenance(self):
        return {"kind": "word count"}


class Letters:
    name, direction = "letters", 1

    def score(self, prompts, responses):
        return [float(len(r)) for r in responses]

    def provenance(self):
        return {"kind": "characters"}


def _task() -> TaskInstance:
    return TaskInstance(name="t", scale="tiny", policy="none", objectives=[Words(), Letters()], prompts=["p0", "p1"],
                        normalisation={"words": Normalisation(3.0, 2.0), "letters": Normalisation(10.0, 4.0)},
                        reference_point=(-1.0, -1.0))


def _run_three_points(tmp_path, name, method_cls):
    """A 3-point run of ``method_cls`` registered as ``name`` on the task ``t`` of :func:`_task`, into a store at tmp_path."""
    from mobench import hookimpl
    from mobench.plugins import _fill

    class Plugin:
        @hookimpl
        def register_tasks(self, register):
            register.task("t", lambda scale, context: _task(), objectives=("words", "letters"))

        @hookimpl
        def register_methods(self, register):
            register.method(name, method_cls)

    pm = get_plugin_manager(entry_points=False)
    pm.register(Plugin(), name="test-plugin")
    _fill(pm, pm.registry)
    return execute(RunConfig(method=name, task="t", grid=3), pm.registry, Store(tmp_path), RunContext())


def test_score_point_applies_each_objectives_direction_mean_and_std():
    means, stderrs, z, items = score_point(_task(), ["p0", "p1"], ["a b c d e", "a"])
    assert means == {"words": 3.0, "letters": 5.0}
    # words: -(3 - 3) / 2 = 0; letters: (5 - 10) / 4 = -1.25
    assert z == {"words": pytest.approx(0.0), "letters": pytest.approx(-1.25)}
    assert items == [{"words": 5.0, "letters": 9.0}, {"words": 1.0, "letters": 1.0}]
    means, _, z, items = score_point(_task(), ["p0", "p1"], ["a b c d e f g", "a b c d e f g h i"])
    assert means["words"] == 8.0 and z["words"] == pytest.approx(-(8.0 - 3.0) / 2.0)
    assert stderrs["words"] == pytest.approx(2.0)  # sample std of (5, 1) is 2*sqrt(2); / sqrt(2)
    assert items == [{"words": 7.0, "letters": 13.0}, {"words": 9.0, "letters": 17.0}]
    assert means["letters"] == 15.0 and z["letters"] == pytest.approx((15.0 - 10.0) / 4.0)


def test_score_point_hands_each_objective_the_prompts_with_their_responses():
    class PromptLength:
        name, direction = "prompt-length", 1

        def score(self, prompts, responses):
            return [float(len(p)) for p in prompts]

        def provenance(self):
            return {}

    task = TaskInstance(name="t", scale="tiny", policy="none", objectives=[PromptLength()], prompts=["ab", "abcd"],
                        normalisation={"prompt-length": Normalisation(0.0, 1.0)}, reference_point=(-1.0,))
    means, _, _, items = score_point(task, ["ab", "abcd"], ["x", "y"])
    assert means == {"prompt-length": 3.0} and items == [{"prompt-length": 2.0}, {"prompt-length": 4.0}]


def test_score_point_refuses_bad_scores_with_one_line_naming_the_objective():
    from mobench.api import MobenchError

    def task_with(scores):
        class Bad:
            name, direction = "bad", 1

            def score(self, prompts, responses):
                return scores

            def provenance(self):
                return {}

        return TaskInstance(name="t", scale="tiny", policy="none", objectives=[Letters(), Bad()], prompts=["p0", "p1"],
                            normalisation={"letters": Normalisation(0.0, 1.0), "bad": Normalisation(0.0, 1.0)},
                            reference_point=(-1.0, -1.0))

    cases = [
        (["1", "two  words"], r"^objective 'bad' returned a score that is not a number \(could not convert string to float: 'two words'\)$"),
        # the error's text on one line, cut at 120 characters: 117 of them and an ellipsis
        (["1", "ab " * 60], r"^objective 'bad' returned a score that is not a number \(could not convert string to float: 'ab( ab){26} \.\.\.\)$"),
        ([1.0, None], r"^objective 'bad' returned a score that is not a number \(float\(\) argument must be a string or a (real )?number, not 'NoneType'\)$"),
        ([1.0], r"^objective 'bad' returned 1 scores for 2 responses$"),
        ([1.0, 2.0, 3.0], r"^objective 'bad' returned 3 scores for 2 responses$"),
        ([1.0, float("nan")], r"^objective 'bad' returned a non-finite score \(nan\) for prompt 1$"),
        ([float("-inf"), 1.0], r"^objective 'bad' returned a non-finite score \(-inf\) for prompt 0$"),
    ]
    for scores, message in cases:
        with pytest.raises(MobenchError, match=message):
            score_point(task_with(scores), ["p0", "p1"], ["a", "b"])
    # integers and numeric strings are numbers
    means, _, _, _ = score_point(task_with([1, "2.5"]), ["p0", "p1"], ["a", "b"])
    assert means == {"letters": 1.0, "bad": 1.75}


def test_a_run_writes_direction_aware_z_scores(tmp_path):
    class Fixed:
        def prepare(self, task, context):
            pass

        def generate(self, prompts, preferences):
            return [["word " * round(1 + 8 * p[0]) for _ in prompts] for p in preferences]

        def provenance(self):
            return {}

    result = _run_three_points(tmp_path, "fixed", Fixed)
    rows = {tuple(r["weights"]): r for r in result.run.rows()}
    words = {w: r["mean"]["words"] for w, r in rows.items()}
    assert words == {(0.0, 1.0): 1.0, (0.5, 0.5): 5.0, (1.0, 0.0): 9.0}
    for w, r in rows.items():
        assert r["normalised"]["words"] == pytest.approx(-(words[w] - 3.0) / 2.0)
    manifest = json.loads(result.run.manifest_path.read_text())
    assert manifest["directions"] == {"words": -1, "letters": 1}


def test_generations_of_an_attempt_killed_before_its_row_are_dropped(tmp_path):
    store = Store(tmp_path)
    store.ensure()
    run = store.run("t", "m", "r")
    # attempt A wrote its generations for point k and died before the row; attempt B then committed k
    from mobench.store import _append, _json_line

    run.path.mkdir(parents=True)
    _append(run.generations_path, _json_line({"preference_key": "k", "attempt": "A", "prompt_index": 0, "response": "orphan"}))
    assert run.append_point({"preference_key": "k", "attempt": "B"},
                            [{"preference_key": "k", "attempt": "B", "prompt_index": 0, "response": "kept"}])
    assert [g["response"] for g in run.generations()] == ["kept"]
    # the reader matches (point, attempt), not the point alone: the orphan is still on disk
    assert "orphan" in run.generations_path.read_text()


def test_offline_work_inside_generate_is_recorded_apart_from_decoding(tmp_path):
    """A method that trains per preference inside generate: that time is offline cost, not decoding."""
    import time

    from mobench.api import Method
    from mobench.leaderboard import leaderboard

    class TrainsPerPoint(Method):
        def prepare(self, task, context):
            super().prepare(task, context)
            self.offline_evaluations += 2  # e.g. two calibration passes in prepare

        def generate(self, prompts, preferences):
            for _ in preferences:
                with self.offline(evaluations=3):
                    time.sleep(0.05)  # "training" the point's policy
            return [["word " * round(1 + 8 * p[0]) for _ in prompts] for p in preferences]

    result = _run_three_points(tmp_path, "trains", TrainsPerPoint)
    rows = result.run.rows()
    assert len(rows) == 3
    for r in rows:
        assert r["offline_seconds"] >= 0.05  # sleep guarantees at least this much (a lower bound, not a timing race)
        assert r["generation_seconds"] >= 0
        assert r["wall_seconds"] == pytest.approx(r["offline_seconds"] + r["generation_seconds"] + r["scoring_seconds"])
    manifest = json.loads(result.run.manifest_path.read_text())
    assert manifest["offline_evaluations"] == 2 + 3 * 3
    entry = leaderboard(Store(tmp_path), "t")[0]
    assert entry.offline_evaluations == 11
    assert entry.offline_seconds == pytest.approx(manifest["prepare_seconds"] + sum(r["offline_seconds"] for r in rows))
    assert entry.decode_seconds == pytest.approx(sum(r["generation_seconds"] + r["scoring_seconds"] for r in rows))
