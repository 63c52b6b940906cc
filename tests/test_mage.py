"""MAGE: tree-masked candidate values are exact, the merged proxy at e_i is value model i, alpha = 0 is the base."""

from __future__ import annotations

import pytest
import torch

from mobench.api import Preference

PROMPTS = ["Hello there, how", "A much longer prompt with many words in it, so padding matters"]


@pytest.fixture()
def rig(micro_lm):
    """A micro PeftModel with random backbone, DPO and value adapters (non-zero B) and random value heads."""
    from peft import LoraConfig, get_peft_model

    model, tok = micro_lm
    torch.manual_seed(7)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    names = ["bone0", "bone1", "dpo_a", "dpo_b", "value_a", "value_b"]
    model = get_peft_model(model, cfg, adapter_name=names[0])
    for n in names[1:]:
        model.add_adapter(n, cfg)
    model.eval()
    heads = (torch.randn(2, model.config.hidden_size), torch.randn(2))
    return model, tok, heads


def _value_by_recompute(model, tok, prompt, suffix, adapters, coef, heads):
    from mobench.mage.rowmerge import row_merged
    from mobench.mage.value import hidden_states

    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    full = torch.cat([ids, torch.tensor([suffix])], 1)
    with row_merged(model, adapters, coef[None]):
        h = hidden_states(model, full, torch.ones_like(full)).last_hidden_state[0, -1]
    return float((coef @ heads[0]) @ h + coef @ heads[1])


def test_candidate_values_equal_full_recompute(rig):
    from mobench.mage.guidance import MergedScorer, ValueScorer

    model, tok, heads = rig
    base = MergedScorer(model, [])
    value = ValueScorer(model, ["value_a", "value_b"], heads, base, top_k=4)
    value.coefficients = torch.tensor([[0.3, 0.7], [1.0, 0.0]])
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    mask, pos = enc["attention_mask"], (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    chosen = []
    for step in range(3):  # prefill, then two one-token steps (cache reuse after cropping the candidates)
        ids = enc["input_ids"] if step == 0 else chosen[-1][:, None]
        lp = base(ids, mask, pos)
        v = value(ids, mask, pos)
        top = lp.topk(4, dim=-1).indices
        for r in range(2):
            for j in range(4):
                suffix = [int(c[r]) for c in chosen] + [int(top[r, j])]
                want = _value_by_recompute(model, tok, PROMPTS[r], suffix, ["value_a", "value_b"], value.coefficients[r], heads)
                assert float(v[r, top[r, j]]) == pytest.approx(want, abs=1e-4)
        assert value.cache.get_seq_length() == mask.shape[1]
        chosen.append(top[:, 1])  # not the argmax: the value cache must follow whatever was chosen
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        pos = pos[:, -1:] + 1


@pytest.mark.parametrize("i", [0, 1])
def test_merged_proxy_at_e_i_is_value_model_i(rig, i):
    from mobench.mage.guidance import MergedScorer, ValueScorer
    from mobench.merging import lora_deltas, merge_lora_adapters

    model, tok, heads = rig
    names = ["value_a", "value_b"]
    mu = torch.zeros(2)
    mu[i] = 1.0
    # weights: the weight-space merge at e_i is value model i (LoRA deltas and head)
    merge_lora_adapters(model, names, mu.tolist(), name="value_mu")
    merged, alone = lora_deltas(model, "value_mu"), lora_deltas(model, names[i])
    for name in alone:
        torch.testing.assert_close(merged[name], alone[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mu @ heads[0], heads[0][i])
    torch.testing.assert_close(mu @ heads[1], heads[1][i])
    # outputs: the merged proxy scorer at e_i gives value model i's values on the same candidates
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    mask, pos = enc["attention_mask"], (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    base = MergedScorer(model, [])
    proxy = ValueScorer(model, names, heads, base, top_k=5)
    proxy.coefficients = mu.repeat(2, 1)
    single = ValueScorer(model, [names[i]], (heads[0][i : i + 1], heads[1][i : i + 1]), base, top_k=5)
    single.coefficients = torch.ones(2, 1)
    base(enc["input_ids"], mask, pos)
    torch.testing.assert_close(proxy(enc["input_ids"], mask, pos), single(enc["input_ids"], mask, pos), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("proxy", ["merged", "ensemble"])
def test_alpha_zero_reproduces_the_bone_soup_base(rig, proxy):
    from mobench.bonesoup import bone_soup_coefficients
    from mobench.decoding.generate import generate_responses
    from mobench.mage.decoder import MageDecoder, MageSettings
    from mobench.merging import merge_lora_adapters

    model, tok, heads = rig
    settings = MageSettings(guidance="both", proxy=proxy, alpha=0.0, top_k=4)
    decoder = MageDecoder(model, tok, settings, ["bone0", "bone1"], ["dpo_a", "dpo_b"], ["value_a", "value_b"], heads)
    prefs = [Preference((1.0, 0.0)), Preference((0.3, 0.7))]
    gen = {"max_new_tokens": 8, "do_sample": False, "batch_size": 3}  # chunks mix preferences
    got = decoder.generate(PROMPTS, prefs, gen)
    for pref, texts in zip(prefs, got):
        merge_lora_adapters(model, ["bone0", "bone1"], bone_soup_coefficients(pref.weights, 0.7), name="base")
        want = generate_responses(model, tok, PROMPTS, max_new_tokens=8, batch_size=2)
        assert texts == want
        model.set_adapter("bone0")
        model.delete_adapter("base")


def test_first_token_follows_the_formula(rig):
    from mobench.mage.decoder import MageDecoder, MageSettings
    from mobench.mage.rowmerge import row_merged
    from mobench.bonesoup import bone_soup_coefficients

    model, tok, heads = rig
    settings = MageSettings(alpha=0.5, top_k=6)
    decoder = MageDecoder(model, tok, settings, ["bone0", "bone1"], ["dpo_a", "dpo_b"], ["value_a", "value_b"], heads)
    mu = (0.3, 0.7)
    got = decoder.generate(PROMPTS[:1], [Preference(mu)], {"max_new_tokens": 1, "batch_size": 1})[0][0]
    ids = tok(PROMPTS[0], return_tensors="pt", add_special_tokens=False)["input_ids"]
    m = torch.tensor([mu])

    def logprobs(adapters, coef):
        with row_merged(model, adapters, coef):
            return torch.log_softmax(model(ids).logits[0, -1], -1)

    base = logprobs(["bone0", "bone1"], torch.tensor([bone_soup_coefficients(mu, 0.7)]))
    implicit = logprobs(["dpo_a", "dpo_b"], m) - logprobs([], None)
    top = base.topk(6).indices
    scores = []
    for v in top.tolist():
        value = _value_by_recompute(model, tok, PROMPTS[0], [v], ["value_a", "value_b"], m[0], heads)
        scores.append(float(base[v]) + 0.5 * (float(implicit[v]) + value))  # w_imp * beta = 1, w_exp = 1
    want = tok.decode([top[max(range(6), key=scores.__getitem__)]], skip_special_tokens=True)
    assert got == want


def test_mage_plugin_end_to_end_on_a_micro_policy(smol_tokenizer, data_dir, tmp_path, monkeypatch):
    import json

    from test_morlhf import NORM, Brevity, Positivity, _real_pairs

    from mobench.api import RunContext, TaskInstance
    from mobench.mage.value import TRAIN_INFO, train_value_model
    from mobench.methods.mage import Mage
    from mobench.models import micro_causal_lm
    from mobench.training.dpo import load_experts

    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
    policy = tmp_path / "policy"
    micro_causal_lm(smol_tokenizer, seed=0).save_pretrained(policy)
    smol_tokenizer.save_pretrained(policy)
    pairs = _real_pairs(data_dir, 10)
    task = TaskInstance(
        name="micro", scale="tiny", policy=str(policy), objectives=[Brevity(), Positivity()],
        prompts=[p.prompt for p in pairs[:2]], normalisation=NORM, reference_point=(-3.0, -3.0),
        pairs={"brevity": pairs[2:], "positivity": pairs[2:]},
        generation={"max_new_tokens": 4, "do_sample": False, "batch_size": 4},
        budgets={
            "rl": {"steps": 1, "batch_size": 2, "num_generations": 2, "max_new_tokens": 4, "n_prompts": 4, "lora_r": 4},
            "dpo": {"steps": 1, "batch_size": 2, "n_pairs": 4, "max_length": 64, "lora_r": 4},
            "value_head": {"n_rollouts": 4, "max_new_tokens": 4, "steps": 2, "batch_size": 2, "lora_r": 4},
            "mage": {"top_k": 4},
        },
    )
    context = RunContext(seed=0, device="cpu")
    method = Mage()
    method.prepare(task, context)
    prefs = [Preference((1.0, 0.0)), Preference((0.5, 0.5))]
    out = method.generate(task.prompts, prefs)
    assert len(out) == 2 and all(len(r) == 2 and all(isinstance(t, str) for t in r) for r in out)
    adapters = method.provenance()["adapters"]
    assert sorted(adapters) == ["bone0", "bone1", "dpo_brevity", "dpo_positivity", "value_brevity", "value_positivity"]
    # The DPO experts are the shared cached ones (rewarded-soups' keys); value models record real losses.
    assert {f"dpo_{k}": str(v) for k, v in load_experts(task, context).items()}.items() <= adapters.items()
    record = json.loads((train_value_model(task, "brevity", context) / TRAIN_INFO).read_text())
    assert record["n_rollouts"] == 4 and len(record["losses"]) == 2
    # The reference-base ablation needs no backbones and decodes the same rows.
    ref = Mage(base="reference", variant="mage-refbase")
    ref.prepare(task, context)
    assert "bone0" not in ref.provenance()["adapters"]
    assert len(ref.generate(task.prompts, prefs[:1])[0]) == 2
