"""Validation prompts: held out like the evaluation prompts, disjoint from them and from everything trained on.

MAGE's constants (Bone-Soup k, the sweep's alpha and candidate rule) are chosen on these prompts only.
"""

from __future__ import annotations

import pytest

from mobench import calibration
from mobench.api import MobenchError, RunContext, TaskInstance, prompts_sha256
from mobench.plugins import get_plugin_manager
from mobench.training import training_prompts


@pytest.mark.parametrize("name", ["hh", "summarize"])
def test_builtin_validation_prompts_are_disjoint_from_evaluation_and_training(data_dir, name):
    spec = get_plugin_manager(entry_points=False).registry.task(name)
    task = spec.load("tiny", RunContext())
    val = task.validation_prompts
    assert len(val) == 16 and len(set(val)) == 16
    # the evaluation prompts are exactly the committed calibration's (adding validation changed none of them)
    record = calibration.calibration_path(spec).read_text()
    assert prompts_sha256(task.prompts) in record
    assert not set(val) & set(task.prompts)
    assert not set(val) & {p.prompt for ps in task.pairs.values() for p in ps}
    assert not set(val) & set(training_prompts(task, 10**6, 0))  # RL and value-model rollout prompts
    assert task.provenance["validation"] == {"n": 16, "sha256": prompts_sha256(val)}
    if name == "hh":  # both halves of the evaluation set have validation counterparts: 8 red-team, 8 helpful
        from mobench.tasks import hh
        from mobench.tasks.data import helpful_eval_instructions, in_eval_pool

        chats = hh.validation_chats(hh.TASK.config("tiny"))
        assert all(in_eval_pool(c[0]["content"]) for c in chats[:8])
        assert [len(c) for c in chats[8:]] == [1] * 8 and {c[0]["content"] for c in chats[8:]} <= set(helpful_eval_instructions())


@pytest.mark.parametrize("name", ["hh", "summarize"])
def test_paper_scale_validation_chats_are_disjoint_too(data_dir, name):
    """The paper scale's chats (no policy download: the chats before templating) keep the same rule."""
    from mobench.tasks import hh, summarize

    task = {"hh": hh, "summarize": summarize}[name].TASK
    cfg = task.config("paper")
    ev, val = task.chats(cfg), task.validation(cfg)
    assert len(val) == sum(cfg.n_validation.values())
    key = lambda chat: tuple((m["role"], m["content"]) for m in chat)  # noqa: E731
    assert not {key(c) for c in val} & {key(c) for c in ev}
    pair_chats = {key(p.chat) for ps in task.pairs().values() for p in ps}
    assert not {key(c) for c in val} & pair_chats


def test_a_task_instance_refuses_validation_prompts_that_are_evaluation_prompts():
    with pytest.raises(MobenchError, match="validation prompts are also evaluation prompts"):
        TaskInstance(name="t", scale="tiny", policy="p", objectives=[], prompts=["a", "b"], validation_prompts=["b", "c"])
    assert TaskInstance(name="t", scale="tiny", policy="p", objectives=[], prompts=["a"]).validation_prompts == []
