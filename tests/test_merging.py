"""Exact LoRA-delta merging: hand-computed sum_i c_i s_i B_i A_i, negative coefficients, w = e_i logits."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from mobench.api import MobenchError
from helpers import TEST_DEVICE


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

    model, tok = load_causal_lm(SMOLLM2_ALIAS, device=TEST_DEVICE)
    _assert_one_hot_logits(two_adapters(model), tok, real_text(data_dir))


def _tiny_experts(**extra):
    """Two random LoRA experts e0, e1 on a two-layer MLP (and a third, ``odd``, with the LoRA options ``extra``)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(5)
    base = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4))
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"], init_lora_weights=False)
    model = get_peft_model(base, cfg, adapter_name="e0")
    model.add_adapter("e1", LoraConfig(r=3, lora_alpha=3, target_modules=["0", "2"], init_lora_weights=False))
    if extra:
        model.add_adapter("odd", LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"], init_lora_weights=False, **extra))
    return model


def test_merge_refuses_what_it_cannot_merge_exactly():
    from mobench.merging import lora_deltas, merge_lora_adapters

    model = _tiny_experts()
    with pytest.raises(MobenchError, match=r"^need one coefficient per adapter, got 0 for 0 adapters$"):
        merge_lora_adapters(model, [], [])
    with pytest.raises(MobenchError, match=r"^need one coefficient per adapter, got 3 for 2 adapters$"):
        merge_lora_adapters(model, ["e0", "e1"], [1.0, 0.0, 0.0])
    with pytest.raises(MobenchError, match=r"^adapter 'e2' is not loaded \(loaded: e0, e1\)$"):
        merge_lora_adapters(model, ["e0", "e2"], [0.5, 0.5])
    with pytest.raises(MobenchError, match=r"^the merged adapter's name 'e1' clashes with an expert's$"):
        merge_lora_adapters(model, ["e0", "e1"], [0.5, 0.5], name="e1")
    with pytest.raises(MobenchError, match=r"^adapter 'zz' wraps no module$"):
        lora_deltas(model, "zz")
    assert set(model.peft_config) == {"e0", "e1"}  # nothing was added by the refused merges
    for extra in ({"use_rslora": True}, {"use_dora": True}):
        odd = _tiny_experts(**extra)
        with pytest.raises(MobenchError, match=r"^adapter 'odd' uses rsLoRA or DoRA; the exact delta merge supports plain LoRA only$"):
            merge_lora_adapters(odd, ["e0", "odd"], [0.5, 0.5])
        with pytest.raises(MobenchError, match="rsLoRA or DoRA"):
            merge_lora_adapters(odd, ["odd", "e1"], [0.5, 0.5])
    from peft import IA3Config

    model.peft_config["ia3"] = IA3Config(target_modules=["q_proj"])  # only its config is read before the refusal
    with pytest.raises(MobenchError, match=r"^adapter 'ia3' is not LoRA \(IA3Config\); the exact delta merge supports plain LoRA only$"):
        merge_lora_adapters(model, ["e0", "ia3"], [0.5, 0.5])


def test_merge_takes_integer_coefficients_and_replaces_a_soup_that_is_not_active():
    from mobench.merging import MERGED_ADAPTER, lora_deltas, merge_lora_adapters

    model = _tiny_experts()
    assert merge_lora_adapters(model, ["e0", "e1"], [2, -1]) == MERGED_ADAPTER == "soup"
    e0, e1 = lora_deltas(model, "e0"), lora_deltas(model, "e1")
    soup = lora_deltas(model, "soup")
    assert set(soup) == set(e0) == {"base_model.model.0", "base_model.model.2"}
    for key in e0:
        torch.testing.assert_close(soup[key], 2 * e0[key] - e1[key], rtol=1e-5, atol=1e-6)
    model.set_adapter("e1")
    merge_lora_adapters(model, ["e0", "e1"], [0.25, 0.5])
    assert model.active_adapter == "soup"
    soup = lora_deltas(model, "soup")
    for key in e0:
        torch.testing.assert_close(soup[key], 0.25 * e0[key] + 0.5 * e1[key], rtol=1e-5, atol=1e-6)
    x = torch.randn(3, 6)
    with torch.no_grad():
        got = model(x)
        base = model.base_model.model
        with model.disable_adapter():
            plain = model(x)
    # the active soup adds exactly its delta to each layer's output: layer 0 by hand
    h = torch.relu(base[0].base_layer(x) + x @ soup["base_model.model.0"].T)
    want = base[2].base_layer(h) + h @ soup["base_model.model.2"].T
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (got - plain).abs().max() > 1e-3
