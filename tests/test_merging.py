"""Exact LoRA-delta merging: hand-computed sum_i c_i s_i B_i A_i, negative coefficients, w = e_i logits."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from mobench.api import MobenchError


def two_adapters(model):
    """Wrap ``model`` with two random (non-zero B) LoRA adapters of different rank and alpha."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    a = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    b = LoraConfig(r=2, lora_alpha=7, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, a, adapter_name="harmless")
    peft_model.add_adapter("helpful", b)
    peft_model.eval()
    return peft_model


def real_text(data_dir, n=2):
    with gzip.open(data_dir / "hh-rlhf/harmless-base/test.jsonl.gz", "rt") as fh:
        return [json.loads(next(fh))["chosen"][:300] for _ in range(n)]


@pytest.mark.parametrize("coefficients", [(0.3, 0.7), (1.7, -0.6), (-0.25, 0.0)])
def test_merged_delta_is_exact_weighted_sum(micro_lm, coefficients):
    from peft.tuners.lora import LoraLayer

    from mobench.merging import lora_deltas, merge_lora_adapters

    model = two_adapters(micro_lm[0])
    merge_lora_adapters(model, ["harmless", "helpful"], coefficients)
    merged = lora_deltas(model, "soup")
    checked = 0
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        # by hand from the raw factors: sum_i c_i * (alpha_i / r_i) * B_i @ A_i
        expected = sum(
            c * (alpha / r) * (module.lora_B[a].weight @ module.lora_A[a].weight)
            for a, c, alpha, r in (("harmless", coefficients[0], 8, 4), ("helpful", coefficients[1], 7, 2))
        )
        torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked == 2 * 7  # 7 linear layers per Llama block, 2 blocks


def test_remerging_replaces_the_soup(micro_lm):
    from mobench.merging import lora_deltas, merge_lora_adapters

    model = two_adapters(micro_lm[0])
    merge_lora_adapters(model, ["harmless", "helpful"], [1.0, 0.0])
    merge_lora_adapters(model, ["harmless", "helpful"], [0.0, 1.0])
    merged, helpful = lora_deltas(model, "soup"), lora_deltas(model, "helpful")
    for name in helpful:
        torch.testing.assert_close(merged[name], helpful[name], rtol=1e-5, atol=1e-6)
    assert model.active_adapter == "soup"


def test_bad_merges_are_clear_errors(micro_lm):
    from mobench.merging import merge_lora_adapters

    model = two_adapters(micro_lm[0])
    with pytest.raises(MobenchError, match="one coefficient per adapter"):
        merge_lora_adapters(model, ["harmless", "helpful"], [1.0])
    with pytest.raises(MobenchError, match="adapter 'honest' is not loaded"):
        merge_lora_adapters(model, ["harmless", "honest"], [0.5, 0.5])


def _assert_one_hot_logits(model, tokenizer, texts):
    from mobench.merging import merge_lora_adapters

    enc = tokenizer(texts, return_tensors="pt", padding=True)
    for i, expert in enumerate(["harmless", "helpful"]):
        model.set_adapter(expert)
        with torch.no_grad():
            want = model(**enc).logits
        merge_lora_adapters(model, ["harmless", "helpful"], [1.0 if j == i else 0.0 for j in range(2)])
        with torch.no_grad():
            got = model(**enc).logits
        # fp32 sums in another order (rank-6 soup vs rank-4 expert): ~1e-5 of logits that reach tens
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
        # and the experts really differ, so the check could fail
        model.set_adapter(["harmless", "helpful"][1 - i])
        with torch.no_grad():
            other = model(**enc).logits
        assert (other - want).abs().max() > 1e-2


def test_one_hot_preference_gives_expert_logits_micro(micro_lm, data_dir):
    model, tok = micro_lm
    _assert_one_hot_logits(two_adapters(model), tok, real_text(data_dir))


@pytest.mark.slow
def test_one_hot_preference_gives_expert_logits_smollm2(data_dir):
    from mobench.models import SMOLLM2_ALIAS, load_causal_lm

    model, tok = load_causal_lm(SMOLLM2_ALIAS, device="cpu")
    _assert_one_hot_logits(two_adapters(model), tok, real_text(data_dir))
