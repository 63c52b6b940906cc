"""Logit ensemble end to end on a micro policy with real pairs: corners are the experts, experts are reused."""

from __future__ import annotations

import pytest

from mobench.api import MobenchError, Preference, RunContext
from test_experts import micro_budget, micro_task, save_micro_policy
from helpers import TEST_DEVICE, TEST_DTYPE


def test_corners_decode_as_experts_and_experts_are_shared(tmp_path, monkeypatch, data_dir, smol_tokenizer):
    from mobench.decoding import generate_responses
    from mobench.methods.logit_ensemble import LogitEnsemble
    from mobench.methods.rewarded_soups import RewardedSoups
    from mobench.training import dpo

    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
    task = micro_task(data_dir, save_micro_policy(smol_tokenizer, tmp_path / "policy"))
    experts = micro_budget(lr=5e-2)
    method = LogitEnsemble(LogitEnsemble.Options(experts=experts))
    assert method.batch_preferences is True
    method.prepare(task, RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE))
    grid = [Preference((1.0, 0.0)), Preference((0.5, 0.5)), Preference((0.0, 1.0))]
    out = method.generate(task.prompts, grid)
    assert len(out) == 3 and all(len(r) == len(task.prompts) for r in out)

    # w = e_i decodes exactly expert i's greedy output (HF generate), though all points share batches
    model, tok = method.model, method.tokenizer
    for corner, name in ((0, "harmless"), (2, "helpful")):
        model.set_adapter(name)
        assert out[corner] == generate_responses(model, tok, task.prompts, max_new_tokens=8, batch_size=4)
    assert out[0] != out[2]  # the experts differ, so the check above has teeth

    # a second method on the same task reuses the experts: nothing is trained
    def no_training(*args, **kwargs):
        raise AssertionError("an expert was retrained")

    # trl is patched, not mobench's _train: the cache key holds the code version of mobench's build code,
    # so replacing _train would (rightly) be a different artifact
    import trl

    monkeypatch.setattr(trl, "DPOTrainer", no_training)
    soups = RewardedSoups(RewardedSoups.Options(experts=experts))
    soups.prepare(task, RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE))
    assert soups.experts == method.experts
    # greedy Rewarded Soups at a corner is the same expert, so the two methods agree there
    assert soups.generate(task.prompts, [grid[0]]) == [out[0]]


def test_bad_options_and_preferences(tmp_path, monkeypatch):
    from mobench.methods.logit_ensemble import LogitEnsemble

    tiny = LogitEnsemble.Options.preset("tiny")
    with pytest.raises(MobenchError, match="no option"):
        tiny.replace({"top_k": 3})
    assert LogitEnsemble(tiny.replace({"steps": "3"}, parse=True)).options.experts.steps == 3
    with pytest.raises(MobenchError, match="max_rows must be >= 1"):
        tiny.replace({"max_rows": 0})
    with pytest.raises(MobenchError, match="before prepare"):
        LogitEnsemble().generate(["hi"], [Preference((1.0, 0.0))])
