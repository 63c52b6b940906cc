"""MAGE: tree-masked candidate values are exact, the merged proxy at e_i is value model i, alpha = 0 is the base,
the reference base with implicit guidance at alpha = 1 over the vocabulary is Rewarded Soups, EOS is reachable."""

from __future__ import annotations

import pytest
import torch

from mobench.api import Preference
from helpers import TEST_DEVICE, TEST_DTYPE

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
    from mobench.methods.mage.rowmerge import row_merged
    from mobench.methods.mage.value import hidden_states

    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    full = torch.cat([ids, torch.tensor([suffix])], 1)
    with row_merged(model, adapters, coef[None]):
        h = hidden_states(model, full, torch.ones_like(full)).last_hidden_state[0, -1]
    return float((coef @ heads[0]) @ h + coef @ heads[1])


def test_candidate_values_equal_full_recompute(rig):
    from mobench.methods.mage.guidance import MergedScorer, ValueScorer

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
    from mobench.methods.mage.guidance import MergedScorer, ValueScorer
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


def _lora_state(model):
    from mobench.methods.mage.rowmerge import lora_layers

    return [(list(l.active_adapters), {a: float(v) for a, v in l.scaling.items()}, l.disable_adapters,
             l.get_base_layer().weight.data_ptr()) for l in lora_layers(model)]


def test_folded_weights_equal_the_per_row_merge_and_are_put_back(rig):
    """Every row the same c: W + sum_a c_a delta_a folded into the weights gives the per-row merge's logits (float
    error only) and peft's own merged adapter's; the weights, scalings and adapter switches are restored after."""
    from mobench.methods.mage.rowmerge import MergedWeights, row_merged, uniform_rows
    from mobench.merging import merge_lora_adapters

    model, tok, _ = rig
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    adapters, c = ["bone0", "bone1"], torch.tensor([1.75, -0.75])  # Bone-Soup-like: one negative coefficient
    coef = c.repeat(2, 1)
    before = _lora_state(model)
    weights = {id(p): p.detach().clone() for p in model.parameters()}

    def logits(merged=None, coefficients=coef):
        with row_merged(model, adapters, coefficients, merged):
            return model(**enc).logits

    per_row, cache = logits(), MergedWeights()
    assert uniform_rows(coef) and not uniform_rows(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    folded = logits(cache)
    assert len(cache.merged) == len(_lora_state(model)) and cache.key == (tuple(adapters), (1.75, -0.75))
    torch.testing.assert_close(folded, per_row, rtol=1e-4, atol=1e-4)
    assert not torch.equal(folded, logits(None, torch.zeros_like(coef)))  # the merge does something
    merge_lora_adapters(model, adapters, c.tolist(), name="peft_soup")
    with torch.no_grad():
        peft_soup = model(**enc).logits
    model.set_adapter("bone0")
    model.delete_adapter("peft_soup")
    torch.testing.assert_close(folded, peft_soup, rtol=1e-4, atol=1e-4)
    assert _lora_state(model) == before
    assert all(torch.equal(p, weights[id(p)]) for p in model.parameters())
    # a new c rebuilds; mixed rows never fold (the per-row path, bit for bit)
    other = torch.tensor([0.2, 0.8]).repeat(2, 1)
    torch.testing.assert_close(logits(cache, other), logits(None, other), rtol=1e-4, atol=1e-4)
    assert cache.key[1] == pytest.approx((0.2, 0.8))
    mixed = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    assert torch.equal(logits(cache, mixed), logits(None, mixed)) and cache.key[1] == pytest.approx((0.2, 0.8))
    assert _lora_state(model) == before


@pytest.mark.parametrize("proxy", ["merged", "ensemble"])
def test_chunk_merge_decodes_the_per_row_text(rig, proxy):
    """The decoder with chunk_merge (the default) writes the same greedy text as with per-row merges only, for
    chunks of one preference and chunks that mix two."""
    from mobench.methods.mage import MageOptions
    from mobench.methods.mage.decoder import MageDecoder

    model, tok, heads = rig
    prefs = [Preference((1.0, 0.0)), Preference((0.3, 0.7)), Preference((0.0, 1.0))]
    texts = {}
    for fold in (True, False):
        settings = MageOptions(proxy=proxy, alpha=0.5, top_k=4, chunk_merge=fold)
        decoder = MageDecoder(model, tok, settings, ["bone0", "bone1"], ["dpo_a", "dpo_b"], ["value_a", "value_b"], heads)
        assert all(getattr(s, "merged", None) is not None for s in decoder.scorers if s.adapters) == fold
        texts[fold] = [decoder.generate(PROMPTS, prefs, {"max_new_tokens": 8, "batch_size": b}) for b in (2, 3)]
    assert texts[True] == texts[False]


@pytest.mark.parametrize("proxy", ["merged", "ensemble"])
def test_alpha_zero_reproduces_the_bone_soup_base(rig, proxy):
    from mobench.methods.mage.bonesoup import bone_soup_coefficients
    from mobench.decoding import generate_responses
    from mobench.methods.mage import MageOptions
    from mobench.methods.mage.decoder import MageDecoder
    from mobench.merging import merge_lora_adapters

    model, tok, heads = rig
    settings = MageOptions(guidance="both", proxy=proxy, alpha=0.0, top_k=4)
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
    from mobench.methods.mage import MageOptions
    from mobench.methods.mage.decoder import MageDecoder
    from mobench.methods.mage.rowmerge import row_merged
    from mobench.methods.mage.bonesoup import bone_soup_coefficients

    model, tok, heads = rig
    settings = MageOptions(alpha=0.5, top_k=6)
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
    top = base.topk(6).indices.tolist() + [tok.eos_token_id]  # the base's top-6, and EOS always
    assert decoder.eos == [tok.eos_token_id]
    scores = []
    for v in top:
        value = _value_by_recompute(model, tok, PROMPTS[0], [v], ["value_a", "value_b"], m[0], heads)
        scores.append(float(base[v]) + 0.5 * (float(implicit[v]) + value))  # w_imp * beta = 1, w_exp = 1
    want = tok.decode([top[max(range(len(top)), key=scores.__getitem__)]], skip_special_tokens=True)
    assert got == want


def _mage_tokens(decoder, tok, prompts, mus, max_new_tokens):
    """The token ids MageDecoder's loop emits for (prompt, mu) rows (EOS included), greedy."""
    from mobench.decoding import DecodeSettings, decode_tokens

    decoder._set_rows(mus)
    settings = DecodeSettings(max_new_tokens, False, 1.0, len(prompts), 0)
    return decode_tokens(decoder.scorers, decoder.combiner, tok, prompts, mus, settings)


GRID5 = [(1.0, 0.0), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.0, 1.0)]


def test_reference_base_implicit_alpha_one_full_vocabulary_is_rewarded_soups(rig):
    """s = log pi_ref + 1 * (1/beta) beta (log pi_mu - log pi_ref) = log pi_mu over every token, and pi_mu is the
    exact LoRA soup sum_i mu_i delta_i: Rewarded Soups' greedy tokens at every preference, token for token.
    The per-row merge equals the merged adapter up to float error (asserted below 1e-4 on the log-probs)."""
    from mobench.methods.mage import MageOptions
    from mobench.methods.mage.decoder import MageDecoder
    from mobench.methods.mage.rowmerge import row_merged
    from mobench.merging import merge_lora_adapters

    model, tok, _ = rig
    settings = MageOptions(base="reference", guidance="implicit", alpha=1.0, candidates="vocabulary")
    decoder = MageDecoder(model, tok, settings, [], ["dpo_a", "dpo_b"], [], None)
    ids = tok(PROMPTS[:1], return_tensors="pt", add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    for mu in GRID5:
        merge_lora_adapters(model, ["dpo_a", "dpo_b"], list(mu), name="soup")
        side, tok.padding_side = tok.padding_side, "left"
        enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
        tok.padding_side = side
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
            soup = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
        want = [row[: row.index(eos) + 1] if eos in row else row for row in out[:, enc["input_ids"].shape[1] :].tolist()]
        model.set_adapter("bone0")
        model.delete_adapter("soup")
        got = _mage_tokens(decoder, tok, PROMPTS, [mu] * len(PROMPTS), 10)
        assert got == want, mu
        # the first step's scores are the soup's log-probs over the whole vocabulary (float error only)
        with row_merged(model, ["dpo_a", "dpo_b"], torch.tensor([mu])):
            merged = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
        scores = decoder.combiner([_ref_logprobs(model, ids), merged[None]], torch.tensor([mu]))
        assert torch.isfinite(scores).all() and float((scores[0] - soup).abs().max()) < 1e-4


def _ref_logprobs(model, ids):
    with model.disable_adapter(), torch.no_grad():
        return torch.log_softmax(model(ids).logits[0, -1].float(), -1)[None]


def test_eos_is_reachable_when_guidance_favours_it(rig):
    """EOS is outside the base's top-2 here, yet with a value head that favours stopping MAGE's first token is EOS
    (the candidates always hold EOS); at alpha = 0 the base's first token comes out instead."""
    from mobench.methods.mage import MageOptions
    from mobench.methods.mage.decoder import MageDecoder
    from mobench.methods.mage.rowmerge import row_merged
    from mobench.methods.mage.value import hidden_states

    model, tok, _ = rig
    eos = tok.eos_token_id
    ids = tok(PROMPTS[:1], return_tensors="pt", add_special_tokens=False)["input_ids"]
    base = _ref_logprobs(model, ids)[0]
    assert eos not in base.topk(2).indices.tolist()
    with row_merged(model, ["value_a", "value_b"], torch.tensor([[1.0, 0.0]])):
        h = hidden_states(model, torch.cat([ids, torch.tensor([[eos]])], 1), torch.ones(1, ids.shape[1] + 1)).last_hidden_state[0, -1]
    # V_a(x, v) = 10 h(v).h(EOS)/|h(EOS)|^2: 10 at EOS and less at any other v (RMS-normed states share one norm)
    weight = torch.stack([10 * h / h.dot(h), torch.zeros_like(h)])
    heads = (weight, torch.zeros(2))
    mu = [(1.0, 0.0)]
    for alpha, first_is_eos in [(50.0, True), (0.0, False)]:
        settings = MageOptions(base="reference", guidance="explicit", alpha=alpha, top_k=2)
        decoder = MageDecoder(model, tok, settings, [], [], ["value_a", "value_b"], heads)
        got = _mage_tokens(decoder, tok, PROMPTS[:1], mu, 3)[0]
        assert (got == [eos]) is first_is_eos
        if not first_is_eos:
            assert got[0] == int(base.argmax())
    assert MageDecoder(model, tok, MageOptions(), ["bone0", "bone1"], ["dpo_a", "dpo_b"], ["value_a", "value_b"], heads).eos == [eos]


MICRO_BUDGETS = {
    "top_k": 4,
    "backbones.steps": 1, "backbones.batch_size": 2, "backbones.num_generations": 2, "backbones.max_new_tokens": 4,
    "backbones.n_prompts": 4, "backbones.lora_r": 4, "backbones.max_prompt_chars": 800,
    "experts.steps": 1, "experts.batch_size": 2, "experts.n_pairs": 4, "experts.max_length": 64, "experts.lora_r": 4,
    "value.n_rollouts": 4, "value.n_heldout": 2, "value.steps": 2, "value.batch_size": 2, "value.lora_r": 4,
}


def micro_mage_task(smol_tokenizer, data_dir, tmp_path, monkeypatch, validation: int = 0, **fields):
    """A task on a saved micro policy with real HH pairs: 2 evaluation prompts, then ``validation`` validation
    prompts, then 8 training pairs (a fresh artifact cache in tmp_path)."""
    from test_morlhf import NORM, Brevity, Positivity, _real_pairs

    from mobench.api import TaskInstance
    from mobench.models import micro_causal_lm

    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
    policy = tmp_path / "policy"
    micro_causal_lm(smol_tokenizer, seed=0).save_pretrained(policy)
    smol_tokenizer.save_pretrained(policy)
    pairs = _real_pairs(data_dir, 10 + validation)
    train = pairs[2 + validation :]
    return TaskInstance(
        name="micro", scale="tiny", policy=str(policy), objectives=[Brevity(), Positivity()],
        prompts=[p.prompt for p in pairs[:2]], validation_prompts=[p.prompt for p in pairs[2 : 2 + validation]],
        normalisation=NORM, reference_point=(-3.0, -3.0), pairs={"brevity": train, "positivity": train},
        generation={"max_new_tokens": 4, "do_sample": False, "batch_size": 4}, **fields,
    )


def test_mage_plugin_end_to_end_on_a_micro_policy(smol_tokenizer, data_dir, tmp_path, monkeypatch):
    import json

    from mobench.api import RunContext
    from mobench.methods.mage import Mage, MageOptions
    from mobench.methods.mage.value import TRAIN_INFO, for_task, train_value_models
    from mobench.training import load_experts, training_prompts

    task = micro_mage_task(smol_tokenizer, data_dir, tmp_path, monkeypatch)
    options = MageOptions.preset("tiny").replace(MICRO_BUDGETS)
    context = RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE)
    method = Mage(options)
    method.prepare(task, context)
    prefs = [Preference((1.0, 0.0)), Preference((0.5, 0.5))]
    out = method.generate(task.prompts, prefs)
    assert len(out) == 2 and all(len(r) == 2 and all(isinstance(t, str) for t in r) for r in out)
    adapters = method.provenance()["adapters"]
    assert sorted(adapters) == ["bone0", "bone1", "dpo_brevity", "dpo_positivity", "value_brevity", "value_positivity"]
    # The DPO experts are the shared cached ones (rewarded-soups' keys); value models record real losses.
    experts = load_experts(task.policy, task.pairs, options.experts, context, objectives=task.objective_names)
    assert {f"dpo_{k}": str(v) for k, v in experts.items()}.items() <= adapters.items()
    # `mobench kl` reads the trained policies from the provenance: the backbones and the experts, not the value models
    assert method.provenance()["trained_policies"] == {
        "backbone 0": adapters["bone0"], "backbone 1": adapters["bone1"],
        "expert brevity": adapters["dpo_brevity"], "expert positivity": adapters["dpo_positivity"]}
    # Value models: rollouts at the task's length (4) on 4 + 2 training prompts, the last 2 held out for the fit.
    value = for_task(options.value, task.generation.max_new_tokens)
    prompts = training_prompts(task, 6, context.seed, value.max_prompt_chars)
    values = train_value_models(task.policy, task.objectives, task.normalisation, prompts, value, context)
    record = json.loads((values["brevity"] / TRAIN_INFO).read_text())
    assert record["n_rollouts"] == 4 and record["n_heldout"] == 2 and len(record["losses"]) == 2
    assert str(values["brevity"]) == adapters["value_brevity"]  # the very model prepare trained
    fit = method.provenance()["value_fit"]["brevity"]
    assert fit["heldout_fit"] == record["heldout_fit"] and fit["heldout_fit"]["n"] == 2
    # Bone-Soup k: k_rule=none by default, so k = 1 and the provenance says why; the search, without validation
    # prompts (none in this task), falls back to k = 1 and says so; the option k wins over both rules
    assert method.provenance()["bone_soup_k"] == {"k": [1.0, 1.0], "rule": "k_rule=none: k = 1 (no rescaling)"}
    assert method.decoder.k == (1.0, 1.0)
    search = Mage(options.replace({"k_rule": "search"}))
    assert search.bone_soup_k(task, context, None, None, []) == {
        "k": [1.0, 1.0], "rule": "the task has no validation prompts: k = 1 (no rescaling)"}
    fixed = Mage(options.replace({"k_rule": "search", "k": (1.5, 2.0)}))
    assert fixed.bone_soup_k(task, context, None, None, []) == {"k": [1.5, 2.0], "rule": "the option k"}
    # The reference-base ablation needs no backbones and decodes the same rows.
    ref = Mage(options.replace({"base": "reference"}))
    ref.prepare(task, context)
    assert "bone0" not in ref.provenance()["adapters"]
    assert len(ref.generate(task.prompts, prefs[:1])[0]) == 2


def test_options_keep_the_budgets_mage_trained_with_before():
    from mobench.methods.mage import MageOptions

    tiny, paper = MageOptions.preset("tiny"), MageOptions.preset("paper")
    assert tiny == MageOptions()  # the defaults are the tiny scale
    # What task.budgets["value_head"] over VALUE_DEFAULTS gave before the options moved here.
    # Value models since issue 12: the evaluation's length (None: the task's), 16 held-out rollouts, prompts of
    # <= 1200 characters and 40 steps: about half the padded training tokens of before on hh and summarize.
    assert tiny.value.to_dict() == {"lora_r": 8, "lora_alpha": None, "lora_dropout": 0.0, "lora_target": "all-linear",
                                    "n_rollouts": 64, "n_heldout": 16, "max_new_tokens": None, "max_prompt_chars": 1200,
                                    "temperature": 1.0, "steps": 40, "batch_size": 8, "learning_rate": 1e-3}
    assert (paper.value.n_rollouts, paper.value.steps, paper.value.learning_rate, paper.value.lora_r) == (10000, 2000, 1e-4, 64)
    assert (paper.value.max_new_tokens, paper.value.temperature, paper.value.batch_size) == (None, 1.0, 8)
    assert (tiny.experts.beta, tiny.experts.steps, tiny.experts.lora_r, paper.experts.steps) == (0.1, 32, 16, 1000)
    assert (tiny.backbones.steps, tiny.backbones.num_generations, paper.backbones.steps) == (8, 4, 500)
    assert (tiny.b, tiny.k, tiny.alpha, tiny.top_k, tiny.explicit_weight) == (0.7, None, 0.5, 8, 1.0)
    assert (tiny.candidates, tiny.top_p, tiny.k_prompts, tiny.k_rule, tiny.chunk_merge) == ("top-k", 0.9, 8, "none", True)
    assert tiny.w_implicit == pytest.approx(10.0) and tiny.w_explicit == 1.0  # w_imp = 1/beta
    assert MageOptions(guidance="implicit").w_explicit == 0.0 and MageOptions(guidance="explicit").w_implicit == 0.0


def test_ablations_are_registrations_with_fixed_options_and_alpha_is_a_user_option():
    from mobench.api import MobenchError
    from mobench.methods.mage import Mage, MageOptions
    from mobench.plugins import get_plugin_manager

    methods = get_plugin_manager().registry.methods
    want = {"mage": {}, "mage-implicit": {"guidance": "implicit"}, "mage-explicit": {"guidance": "explicit"},
            "mage-ensemble": {"proxy": "ensemble"}, "mage-refbase": {"base": "reference"}}
    assert {n: methods[n].fixed for n in want} == want and all(methods[n].factory is Mage for n in want)
    options = MageOptions.preset("tiny").replace({"alpha": "2", "k": "1.5,2"}, parse=True, owner="mage")
    assert (options.alpha, options.k) == (2.0, (1.5, 2.0))
    with pytest.raises(MobenchError, match="ambiguous"):
        MageOptions().replace({"steps": "3"}, parse=True, owner="mage")
    with pytest.raises(MobenchError, match="guidance"):
        MageOptions().replace({"guidance": "neither"}, parse=True, owner="mage")
    with pytest.raises(MobenchError, match="top_k"):
        MageOptions().replace({"top_k": 0})
    with pytest.raises(MobenchError, match="k_rule"):
        MageOptions().replace({"k_rule": "largest"}, parse=True, owner="mage")
