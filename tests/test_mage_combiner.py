"""MAGE's combiner on synthetic log-probs, where every term can be seen.

s(v) = log pi_base(v) + alpha g(v) on the base's top-k (-inf elsewhere),
g(v) = w_imp beta [log pi_mu(v) - log pi_ref(v)] + w_exp V_mu(v)                 (merged proxy),
g(v) = sum_i mu_i {w_imp beta [log pi_i(v) - log pi_ref(v)] + w_exp V_i(v)}      (ensemble proxy).

Every constant is distinct and != 1 and each scorer's tensor is random, so a flipped sign, a dropped or
swapped weight, the wrong reference or a missing mu_i changes the scores (each test names the mutation
it stands against). The decoder's wiring of the ablations into the combiner's layout is checked too.
"""

from __future__ import annotations

import pytest
import torch

from mobench.methods.mage.guidance import mage_combiner

ROWS, VOCAB, TOP_K = 3, 11, 4
ALPHA, W_IMP, W_EXP, BETA = 0.7, 1.3, 0.45, 0.2


def _lp(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(ROWS, VOCAB, generator=g) * 2.0, dim=-1)


@pytest.fixture()
def tensors():
    # base, ref, implicit_a, implicit_b, explicit_a, explicit_b (values are not log-probs: any reals)
    g = torch.Generator().manual_seed(99)
    return {
        "base": _lp(1), "ref": _lp(2), "imp_a": _lp(3), "imp_b": _lp(4),
        "exp_a": torch.randn(ROWS, VOCAB, generator=g), "exp_b": torch.randn(ROWS, VOCAB, generator=g),
        "mu": torch.tensor([[0.2, 0.8], [1.0, 0.0], [0.65, 0.35]]),
    }


def _expected(base, g):
    top = base.topk(TOP_K, dim=-1).indices
    want = torch.full_like(base, float("-inf"))
    return want.scatter(1, top, (base + ALPHA * g).gather(1, top)), top


def _check(got, base, g):
    want, top = _expected(base, g)
    assert torch.isneginf(got).sum() == ROWS * (VOCAB - TOP_K)  # only the base's top-k survive
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert torch.equal(got.topk(TOP_K, dim=-1).indices.sort(-1).values, top.sort(-1).values)


def test_merged_both_terms_exact(tensors):
    """Against: sign flip (log pi_ref - log pi_mu), beta or w_imp dropped, w_exp dropped, alpha on the base."""
    t = tensors
    comb = mage_combiner({"base": 0, "ref": 1, "implicit": [2], "explicit": [3], "ensemble": False},
                         TOP_K, ALPHA, W_IMP, W_EXP, BETA)
    got = comb([t["base"], t["ref"], t["imp_a"], t["exp_a"]], t["mu"])
    g = W_IMP * BETA * (t["imp_a"] - t["ref"]) + W_EXP * t["exp_a"]
    _check(got, t["base"], g)


def test_merged_implicit_sign(tensors):
    """A token the merged proxy likes more than the reference gains score; one it likes less loses score."""
    t = tensors
    comb = mage_combiner({"base": 0, "ref": 1, "implicit": [2], "ensemble": False}, TOP_K, ALPHA, W_IMP, 0.0, BETA)
    base = torch.full((1, VOCAB), -10.0)
    base[0, :TOP_K] = torch.tensor([-1.0, -1.1, -1.2, -1.3])  # top-k = tokens 0..3, base order 0 > 1 > 2 > 3
    ref = torch.full((1, VOCAB), -2.0)
    implicit = ref.clone()
    implicit[0, 3] = -0.5  # pi_mu >> pi_ref on token 3
    implicit[0, 0] = -6.0  # pi_mu << pi_ref on token 0
    got = comb([base, ref, implicit], torch.tensor([[0.5, 0.5]]))[0]
    assert got[3] > base[0, 3] and got[0] < base[0, 0]
    assert got[1] == base[0, 1] and got[2] == base[0, 2]  # equal log-probs: no guidance
    assert got[3] == pytest.approx(-1.3 + ALPHA * W_IMP * BETA * 1.5)


def test_ensemble_weights_each_model_by_mu(tensors):
    """Against: the ensemble's implicit or explicit term without mu_i, or with mu of the other objective."""
    t = tensors
    comb = mage_combiner({"base": 0, "ref": 1, "implicit": [2, 3], "explicit": [4, 5], "ensemble": True},
                         TOP_K, ALPHA, W_IMP, W_EXP, BETA)
    got = comb([t["base"], t["ref"], t["imp_a"], t["imp_b"], t["exp_a"], t["exp_b"]], t["mu"])
    mu = t["mu"]
    g = (W_IMP * BETA * (mu[:, :1] * (t["imp_a"] - t["ref"]) + mu[:, 1:] * (t["imp_b"] - t["ref"]))
         + W_EXP * (mu[:, :1] * t["exp_a"] + mu[:, 1:] * t["exp_b"]))
    _check(got, t["base"], g)


def test_ensemble_implicit_alone_needs_mu(tensors):
    """Row 1 has mu = e_0: the second implicit model must not contribute at all."""
    t = tensors
    comb = mage_combiner({"base": 0, "ref": 1, "implicit": [2, 3], "ensemble": True}, TOP_K, ALPHA, W_IMP, 0.0, BETA)
    got = comb([t["base"], t["ref"], t["imp_a"], t["imp_b"]], t["mu"])
    only_a = mage_combiner({"base": 0, "ref": 1, "implicit": [2], "ensemble": True}, TOP_K, ALPHA, W_IMP, 0.0, BETA)(
        [t["base"], t["ref"], t["imp_a"]], t["mu"][:, :1])
    torch.testing.assert_close(got[1], only_a[1], rtol=0, atol=1e-6)
    g = W_IMP * BETA * (t["mu"][:, :1] * (t["imp_a"] - t["ref"]) + t["mu"][:, 1:] * (t["imp_b"] - t["ref"]))
    _check(got, t["base"], g)


def test_ensemble_at_a_corner_equals_merged_with_that_model(tensors):
    """At mu = e_i the ensemble is the merged combiner fed model i (both terms)."""
    t = tensors
    mu = torch.tensor([[0.0, 1.0]] * ROWS)
    ens = mage_combiner({"base": 0, "ref": 1, "implicit": [2, 3], "explicit": [4, 5], "ensemble": True},
                        TOP_K, ALPHA, W_IMP, W_EXP, BETA)([t["base"], t["ref"], t["imp_a"], t["imp_b"], t["exp_a"], t["exp_b"]], mu)
    merged = mage_combiner({"base": 0, "ref": 1, "implicit": [2], "explicit": [3], "ensemble": False},
                           TOP_K, ALPHA, W_IMP, W_EXP, BETA)([t["base"], t["ref"], t["imp_b"], t["exp_b"]], mu)
    torch.testing.assert_close(ens, merged, rtol=0, atol=1e-6)


def test_ablations_drop_exactly_one_term(tensors):
    t = tensors
    scorers = [t["base"], t["ref"], t["imp_a"], t["exp_a"]]
    layout = {"base": 0, "ref": 1, "implicit": [2], "explicit": [3], "ensemble": False}
    implicit_only = mage_combiner(layout, TOP_K, ALPHA, W_IMP, 0.0, BETA)(scorers, t["mu"])
    _check(implicit_only, t["base"], W_IMP * BETA * (t["imp_a"] - t["ref"]))
    explicit_only = mage_combiner(layout, TOP_K, ALPHA, 0.0, W_EXP, BETA)(scorers, t["mu"])
    _check(explicit_only, t["base"], W_EXP * t["exp_a"])
    # A layout without a term's scorers ignores its weight (the decoder adds no scorer for an unused term).
    no_explicit = {k: v for k, v in layout.items() if k != "explicit"}
    _check(mage_combiner(no_explicit, TOP_K, ALPHA, W_IMP, W_EXP, BETA)(scorers[:3], t["mu"]), t["base"],
           W_IMP * BETA * (t["imp_a"] - t["ref"]))
    no_implicit = {"base": 0, "ref": None, "explicit": [1], "ensemble": False}
    _check(mage_combiner(no_implicit, TOP_K, ALPHA, W_IMP, W_EXP, BETA)([t["base"], t["exp_a"]], t["mu"]), t["base"],
           W_EXP * t["exp_a"])
    # alpha = 0: the base's log-probs on its top-k, whatever the guidance says
    _check(mage_combiner(layout, TOP_K, 0.0, W_IMP, W_EXP, BETA)(scorers, t["mu"]), t["base"], torch.zeros_like(t["base"]))


def test_reference_base_uses_the_base_as_reference(tensors):
    """base=reference: ref is None and log pi_ref is the base scorer's own log-probs (not zero, not another scorer)."""
    t = tensors
    comb = mage_combiner({"base": 0, "ref": None, "implicit": [1], "explicit": [2], "ensemble": False},
                         TOP_K, ALPHA, W_IMP, W_EXP, BETA)
    got = comb([t["ref"], t["imp_a"], t["exp_a"]], t["mu"])
    _check(got, t["ref"], W_IMP * BETA * (t["imp_a"] - t["ref"]) + W_EXP * t["exp_a"])
    ens = mage_combiner({"base": 0, "ref": None, "implicit": [1, 2], "ensemble": True}, TOP_K, ALPHA, W_IMP, 0.0, BETA)
    got = ens([t["ref"], t["imp_a"], t["imp_b"]], t["mu"])
    _check(got, t["ref"], W_IMP * BETA * (t["mu"][:, :1] * (t["imp_a"] - t["ref"]) + t["mu"][:, 1:] * (t["imp_b"] - t["ref"])))


def test_candidates_are_the_bases_top_k_not_the_guided_ones():
    """Guidance re-ranks the base's top-k; it never brings in a token outside it, however strong."""
    base = torch.log_softmax(torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]]), -1)
    value = torch.tensor([[0.0, 0.0, 0.0, 100.0, 100.0]])
    comb = mage_combiner({"base": 0, "ref": None, "explicit": [1], "ensemble": False}, 3, 1.0, 0.0, 1.0, 1.0)
    got = comb([base, value], torch.tensor([[1.0]]))
    assert torch.isneginf(got[0, 3:]).all() and torch.isfinite(got[0, :3]).all()
    value = torch.tensor([[0.0, 0.0, 5.0, 100.0, 100.0]])
    assert int(comb([base, value], torch.tensor([[1.0]])).argmax()) == 2


class _Fixed:
    """A scorer that returns the same next-token log-probs for every row at every step."""

    class model:  # the loop reads the first scorer's model's device
        device = torch.device("cpu")

    def __init__(self, row: torch.Tensor):
        self.row = row

    def reset(self) -> None:
        pass

    def __call__(self, input_ids, attention_mask, position_ids):
        return self.row.expand(input_ids.shape[0], -1).clone()


def test_sampling_draws_from_softmax_of_the_scores_over_top_k(smol_tokenizer):
    """do_sample: tokens come only from T_k, with frequencies softmax(s / temperature) (seeded: deterministic)."""
    from mobench.decoding.loop import DecodeSettings, decode_tokens

    vocab = len(smol_tokenizer)
    base = torch.full((1, vocab), -30.0)
    ids = [100, 200, 300, 400]
    base[0, ids] = torch.tensor([-1.0, -1.2, -1.5, -1.6])
    value = torch.zeros(1, vocab)
    value[0, ids] = torch.tensor([0.0, 0.5, 1.0, -3.0])
    value[0, 500] = 50.0  # outside the base's top-3: must never be drawn
    comb = mage_combiner({"base": 0, "ref": None, "explicit": [1], "ensemble": False}, 3, 1.0, 0.0, 1.0, 1.0)
    n, temperature = 400, 0.8
    settings = DecodeSettings(1, True, temperature, n, 5)
    out = decode_tokens([_Fixed(base[0]), _Fixed(value[0])], comb, smol_tokenizer, ["Hi"] * n, [(1.0,)] * n, settings,
                        eos_token_ids=[-1])
    drawn = [row[0] for row in out]
    assert set(drawn) <= set(ids[:3])
    s = base[0, ids[:3]] + value[0, ids[:3]]
    p = torch.softmax(s / temperature, -1)
    freq = torch.tensor([drawn.count(i) / n for i in ids[:3]])
    assert torch.allclose(freq, p, atol=0.07), (freq, p)
    greedy = decode_tokens([_Fixed(base[0]), _Fixed(value[0])], comb, smol_tokenizer, ["Hi"], [(1.0,)],
                           DecodeSettings(1, False, temperature, 1, 5), eos_token_ids=[-1])
    assert greedy[0][0] == ids[int(s.argmax())]


# --- the decoder wires the ablations into the combiner -------------------------------------------------


def _decoder(**opts):
    from mobench.methods.mage import MageOptions
    from mobench.methods.mage.decoder import MageDecoder

    heads = (torch.randn(2, 8), torch.randn(2))
    settings = MageOptions(**opts)
    d = MageDecoder(None, None, settings, ["bone0", "bone1"], ["dpo_a", "dpo_b"], ["value_a", "value_b"], heads)
    d.heads = heads
    return d


def _roles(d):
    return [(type(s).__name__, tuple(s.adapters), role) for s, role in zip(d.scorers, d.roles)]


def test_decoder_layout_merged_both():
    d = _decoder()
    assert d.layout == {"base": 0, "ref": 1, "ensemble": False, "implicit": [2], "explicit": [3]}
    assert _roles(d) == [("MergedScorer", ("bone0", "bone1"), "bone-soup"), ("MergedScorer", (), "none"),
                         ("MergedScorer", ("dpo_a", "dpo_b"), "mu"), ("ValueScorer", ("value_a", "value_b"), "mu")]


def test_decoder_layout_ensemble_and_ablations():
    d = _decoder(proxy="ensemble")
    assert d.layout == {"base": 0, "ref": 1, "ensemble": True, "implicit": [2, 3], "explicit": [4, 5]}
    assert [r for _, _, r in _roles(d)] == ["bone-soup", "none", "one", "one", "one", "one"]
    assert [a for _, a, _ in _roles(d)][2:] == [("dpo_a",), ("dpo_b",), ("value_a",), ("value_b",)]
    # each ensemble value scorer carries its own objective's head
    torch.testing.assert_close(d.scorers[5].head_weight, d.heads[0][1:2])
    torch.testing.assert_close(d.scorers[4].head_bias, d.heads[1][0:1])
    assert _decoder(guidance="implicit").layout == {"base": 0, "ref": 1, "ensemble": False, "implicit": [2]}
    assert _decoder(guidance="explicit").layout == {"base": 0, "ref": None, "ensemble": False, "explicit": [1]}
    ref = _decoder(base="reference")
    assert ref.layout == {"base": 0, "ref": None, "ensemble": False, "implicit": [1], "explicit": [2]}
    assert ref.scorers[0].adapters == []


def test_decoder_constants_reach_the_combiner(tensors):
    """w_imp defaults to 1/beta, so the implicit term is the plain log-ratio; the decoder's combiner is the formula."""
    from mobench.methods.mage import MageOptions
    from mobench.training import DpoBudget

    t = tensors
    beta = 0.25
    d = _decoder(alpha=ALPHA, top_k=TOP_K, explicit_weight=W_EXP, experts=DpoBudget(beta=beta))
    assert MageOptions(experts=DpoBudget(beta=beta)).w_implicit == pytest.approx(1 / beta)
    got = d.combiner([t["base"], t["ref"], t["imp_a"], t["exp_a"]], t["mu"])
    _check(got, t["base"], (t["imp_a"] - t["ref"]) + W_EXP * t["exp_a"])
    assert _decoder(guidance="explicit").settings.w_implicit == 0.0
    assert _decoder(guidance="implicit").settings.w_explicit == 0.0


def test_decoder_sets_each_scorers_row_coefficients():
    from mobench.methods.mage.bonesoup import bone_soup_coefficients

    d = _decoder(proxy="ensemble", k=(0.5, 2.0), b=0.8)

    class _Dev:
        device = "cpu"

    d.model = _Dev()
    mus = [(0.3, 0.7), (1.0, 0.0)]
    d._set_rows(mus)
    want = torch.tensor([bone_soup_coefficients(m, 0.8, (0.5, 2.0)) for m in mus])
    torch.testing.assert_close(d.scorers[0].coefficients, want)
    assert d.scorers[1].coefficients is None
    assert all(torch.equal(s.coefficients, torch.ones(2, 1)) for s in d.scorers[2:])
    merged = _decoder()
    merged.model = _Dev()
    merged._set_rows(mus)
    assert torch.equal(merged.scorers[2].coefficients, torch.tensor(mus)) and torch.equal(merged.scorers[3].coefficients, torch.tensor(mus))


# --- candidate rules: EOS always in, top-p inside the top-k, the whole vocabulary ----------------------


def test_eos_is_always_a_candidate_and_a_duplicate_keeps_its_score():
    from mobench.methods.mage.guidance import candidate_ids

    base = torch.log_softmax(torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0, -5.0], [0.0, 1.0, 2.0, 3.0, -9.0, 4.0]]), -1)
    ids, allowed = candidate_ids(base, "top-k", 2, eos=[4])
    assert ids.tolist() == [[0, 1, 4], [5, 3, 4]] and allowed.all()
    g = torch.zeros_like(base)
    g[:, 4] = 20.0  # guidance says stop
    comb = mage_combiner({"base": 0, "ref": None, "explicit": [1], "ensemble": False}, 2, 1.0, 0.0, 1.0, 1.0, eos=[4])
    got = comb([base, g], torch.ones(2, 1))
    assert got.argmax(-1).tolist() == [4, 4]  # EOS is ranked 5th by both bases, yet reachable
    assert torch.isneginf(got).sum() == 2 * (6 - 3)
    torch.testing.assert_close(got[:, 4], base[:, 4] + 20.0)
    # EOS already inside the top-k: listed twice, one score; top-p dropping the top-k copy keeps the forced one
    comb = mage_combiner({"base": 0, "ref": None, "explicit": [1], "ensemble": False}, 3, 1.0, 0.0, 1.0, 1.0,
                         rule="top-p", top_p=0.5, eos=[1])
    got = comb([base, torch.zeros_like(base)], torch.ones(2, 1))
    torch.testing.assert_close(got[0, 1], base[0, 1])


def test_top_p_keeps_the_base_nucleus_within_the_top_k():
    from mobench.methods.mage.guidance import candidate_ids

    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    base = probs.log()
    ids, allowed = candidate_ids(base, "top-p", 4, top_p=0.8)
    assert ids.tolist() == [[0, 1, 2, 3]] and allowed.tolist() == [[True, True, False, False]]  # mass above < 0.8
    assert candidate_ids(base, "top-p", 4, top_p=0.81)[1].tolist() == [[True, True, True, False]]
    assert candidate_ids(base, "top-p", 4, top_p=0.01)[1].tolist() == [[True, False, False, False]]  # the first always
    assert candidate_ids(base, "vocabulary", 4) == (None, None)
    comb = mage_combiner({"base": 0, "ref": None, "implicit": [1], "ensemble": False}, 2, 0.5, 1.0, 0.0, 1.0,
                         rule="vocabulary", eos=[3])
    other = torch.log_softmax(torch.tensor([[0.0, 0.0, 0.0, 9.0]]), -1)
    torch.testing.assert_close(comb([base, other], torch.ones(1, 1)), base + 0.5 * (other - base))  # every token


def test_vocabulary_candidates_refuse_explicit_guidance():
    from mobench.api import MobenchError
    from mobench.methods.mage import MageOptions

    with pytest.raises(MobenchError, match="vocabulary needs guidance=implicit"):
        MageOptions(candidates="vocabulary").check_all()
    MageOptions(candidates="vocabulary", guidance="implicit").check_all()
    with pytest.raises(MobenchError, match="top_p"):
        MageOptions(top_p=0.0).check_all()


def test_ensemble_scores_keep_the_models_precision_when_the_weights_are_float32(tensors):
    """Against: mu not cast to the scorers' dtype (a float32 mu promotes the bf16 step to float32). The decoder runs
    bf16 models on CUDA with float32 preference weights; the scores stay bf16 and equal the bf16 sum."""
    t = {k: v.to(torch.bfloat16) if k != "mu" else v for k, v in tensors.items()}
    comb = mage_combiner({"base": 0, "ref": 1, "implicit": [2, 3], "explicit": [4, 5], "ensemble": True},
                         TOP_K, ALPHA, W_IMP, W_EXP, BETA)
    got = comb([t["base"], t["ref"], t["imp_a"], t["imp_b"], t["exp_a"], t["exp_b"]], t["mu"])
    assert got.dtype == torch.bfloat16
    mu = t["mu"].to(torch.bfloat16)
    g = torch.zeros_like(t["base"])
    for i, imp in enumerate(["imp_a", "imp_b"]):
        g = g + W_IMP * BETA * mu[:, i : i + 1] * (t[imp] - t["ref"])
    for i, exp in enumerate(["exp_a", "exp_b"]):
        g = g + W_EXP * mu[:, i : i + 1] * t[exp]
    want, _ = _expected(t["base"], g)
    assert torch.equal(got, want)
