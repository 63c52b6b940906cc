"""Rewarded Soups end to end on a micro policy with real pairs: one-hot soups are the experts."""

from __future__ import annotations

import pytest
import torch

from mobench.api import MobenchError, Preference, RunContext
from test_experts import micro_budget, micro_task, save_micro_policy
from helpers import TEST_DEVICE, TEST_DTYPE


def test_one_hot_soup_is_the_expert(tmp_path, monkeypatch, data_dir, smol_tokenizer):
    from mobench.decoding import generate_responses
    from mobench.methods.rewarded_soups import RewardedSoups

    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
    task = micro_task(data_dir, save_micro_policy(smol_tokenizer, tmp_path / "policy"))
    method = RewardedSoups(RewardedSoups.Options(experts=micro_budget(lr=5e-2)))
    method.prepare(task, RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE))
    model, tok = method.model, method.tokenizer
    assert list(method.experts) == ["harmless", "helpful"]

    # logits: the soup at w = e_i is expert i on real text (trained DPO experts, not random adapters)
    enc = tok(task.prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    expert_logits = {}
    for name in method.experts:
        model.set_adapter(name)
        with torch.no_grad():
            expert_logits[name] = model(**enc).logits
    assert (expert_logits["harmless"] - expert_logits["helpful"]).abs().max() > 1e-2
    out = method.generate(task.prompts, [Preference((1.0, 0.0)), Preference((0.0, 1.0)), Preference((0.5, 0.5))])
    for i, name in enumerate(method.experts):
        from mobench.merging import merge_lora_adapters

        merge_lora_adapters(model, list(method.experts), [1.0 if j == i else 0.0 for j in range(2)])
        with torch.no_grad():
            torch.testing.assert_close(model(**enc).logits, expert_logits[name], rtol=1e-4, atol=1e-3)
        # responses: the one-hot soup decodes exactly what the expert alone decodes
        model.set_adapter(name)
        alone = generate_responses(model, tok, task.prompts, max_new_tokens=8, batch_size=4)
        assert out[i] == alone
    assert len(out) == 3 and all(len(r) == len(task.prompts) for r in out)

    prov = method.provenance()
    assert prov["experts"]["harmless"]["train"]["steps"] == 2
    assert prov["options"]["experts"]["steps"] == 2 and prov["options"] == method.options.to_dict()
    with pytest.raises(MobenchError, match="has 3 weights for 2 experts"):
        method.generate(task.prompts, [Preference((0.2, 0.3, 0.5))])
    with pytest.raises(MobenchError, match="before prepare"):
        RewardedSoups().generate(task.prompts, [Preference((1.0, 0.0))])
