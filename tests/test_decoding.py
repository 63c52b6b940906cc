"""The shared decoding loop: one-hot weights reproduce an expert, rows carry their own weights, seeded sampling."""

from __future__ import annotations

import pytest
import torch

from test_merging import real_text, two_adapters

EXPERTS = ["harmless", "helpful"]


@pytest.fixture()
def setup(micro_lm, data_dir):
    from mobench.decoding import ModelScorer

    model, tok = micro_lm
    model = two_adapters(model)
    prompts = [t[:120] + "\n\nAssistant:" for t in real_text(data_dir, 3)]
    return model, tok, prompts, [ModelScorer(model, a) for a in EXPERTS]


def hf_greedy(model, tok, prompts, adapter, n):
    model.set_adapter(adapter)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
    return ids[:, enc["input_ids"].shape[1] :].tolist()


def test_one_hot_weights_reproduce_each_expert_greedy(setup):
    from mobench.decoding import DecodeSettings, ModelScorer, decode_tokens, logit_ensemble

    model, tok, prompts, scorers = setup
    settings = DecodeSettings(max_new_tokens=10, batch_size=8)
    no_eos = [-1]  # the random micro model: run every row to max_new_tokens
    for i, expert in enumerate(EXPERTS):
        one_hot = [[1.0 if j == i else 0.0 for j in range(2)]] * len(prompts)
        ensemble = decode_tokens(scorers, logit_ensemble, tok, prompts, one_hot, settings, no_eos)
        alone = decode_tokens([ModelScorer(model, expert)], logit_ensemble, tok, prompts, [[1.0]] * len(prompts), settings, no_eos)
        assert ensemble == alone
        assert ensemble == hf_greedy(model, tok, prompts, expert, 10)
    # the two experts really decode differently, so the comparison above could fail
    assert hf_greedy(model, tok, prompts, EXPERTS[0], 10) != hf_greedy(model, tok, prompts, EXPERTS[1], 10)


def test_rows_carry_their_own_weights(setup):
    from mobench.decoding import DecodeSettings, decode_tokens, logit_ensemble

    model, tok, prompts, scorers = setup
    settings = DecodeSettings(max_new_tokens=6, batch_size=4)
    # prompts x grid points in one batch (batch size 4 also splits the 6 rows into two chunks)
    rows = [(p, w) for w in ([1.0, 0.0], [0.0, 1.0]) for p in prompts]
    mixed = decode_tokens(scorers, logit_ensemble, tok, [p for p, _ in rows], [w for _, w in rows], settings, [-1])
    assert mixed[:3] == hf_greedy(model, tok, prompts, "harmless", 6)
    assert mixed[3:] == hf_greedy(model, tok, prompts, "helpful", 6)


def test_first_token_is_argmax_of_weighted_log_probs(setup):
    from mobench.decoding import DecodeSettings, decode_tokens, logit_ensemble

    model, tok, prompts, scorers = setup
    w = [0.3, 0.7]
    got = decode_tokens(scorers, logit_ensemble, tok, prompts[:1], [w], DecodeSettings(max_new_tokens=1), [-1])
    enc = tok(prompts[:1], return_tensors="pt", add_special_tokens=False)
    lps = []
    for a in EXPERTS:
        model.set_adapter(a)
        with torch.no_grad():
            lps.append(torch.log_softmax(model(**enc).logits[0, -1], -1))
    assert got == [[int((w[0] * lps[0] + w[1] * lps[1]).argmax())]]


def test_rows_stop_at_eos(setup):
    from mobench.decoding import DecodeSettings, decode_tokens, logit_ensemble

    model, tok, prompts, scorers = setup
    settings = DecodeSettings(max_new_tokens=8)
    free = decode_tokens(scorers, logit_ensemble, tok, prompts, [[1.0, 0.0]] * 3, settings, [-1])
    stop = free[0][2]  # make row 0's third token the EOS
    cut = decode_tokens(scorers, logit_ensemble, tok, prompts, [[1.0, 0.0]] * 3, settings, [stop])
    for full, short in zip(free, cut):
        end = full.index(stop) + 1 if stop in full else len(full)
        assert short == full[:end]
    assert len(cut[0]) <= 3


def test_sampling_is_seeded(setup):
    from mobench.decoding import DecodeSettings, decode, logit_ensemble

    model, tok, prompts, scorers = setup
    rows = [[0.5, 0.5]] * len(prompts)

    def sample(seed):
        settings = DecodeSettings(max_new_tokens=8, do_sample=True, temperature=1.0, seed=seed)
        return decode(scorers, logit_ensemble, tok, prompts, rows, settings, [-1])

    first = sample(3)
    assert sample(3) == first
    assert sample(4) != first
    greedy = decode(scorers, logit_ensemble, tok, prompts, rows, DecodeSettings(max_new_tokens=8), [-1])
    assert first != greedy


def test_progress_and_generate_responses(setup):
    from mobench.decoding import generate_responses

    model, tok, prompts, _ = setup
    model.set_adapter("harmless")
    steps = []

    class Bar:
        def __init__(self, total):
            self.total, self.done, self.closed = total, 0, False

        def advance(self, n=1):
            self.done += n

        def close(self):
            self.closed = True

    class Progress:
        def step(self, description, total=None):
            steps.append(Bar(total))
            return steps[-1]

    texts = generate_responses(model, tok, prompts, max_new_tokens=5, batch_size=2, progress=Progress())
    want = tok.batch_decode(hf_greedy(model, tok, prompts, "harmless", 5), skip_special_tokens=True)
    assert texts == want
    assert [(s.total, s.done, s.closed) for s in steps] == [(3, 3, True)]


def test_rows_sharing_a_prompt_share_its_prefill(setup):
    from mobench.decoding import DecodeSettings, ModelScorer, decode_tokens, logit_ensemble

    model, tok, prompts, _ = setup

    class Counting(ModelScorer):
        def __call__(self, input_ids, attention_mask, position_ids):
            self.batches.append(input_ids.shape[0])
            return super().__call__(input_ids, attention_mask, position_ids)

    class NoSharing:  # a scorer without select_rows (e.g. per-row merged weights): every row prefills
        def __init__(self, inner):
            self.inner, self.model = inner, inner.model

        def reset(self):
            self.inner.reset()

        def __call__(self, *args):
            return self.inner(*args)

    grid = ([1.0, 0.0], [0.3, 0.7], [0.0, 1.0])
    rows = [p for p in prompts for _ in grid]  # prompt-major, as the logit-ensemble plugin orders them
    weights = [w for _ in prompts for w in grid]
    settings = DecodeSettings(max_new_tokens=5, batch_size=9)
    counting = [Counting(model, a) for a in EXPERTS]
    for c in counting:
        c.batches = []
    shared = decode_tokens(counting, logit_ensemble, tok, rows, weights, settings, [-1])
    assert [c.batches[0] for c in counting] == [3, 3]  # 3 prompts prefilled once each, for 9 rows
    assert counting[0].batches[1:] == [9] * 4
    plain = decode_tokens([NoSharing(ModelScorer(model, a)) for a in EXPERTS], logit_ensemble, tok, rows, weights, settings, [-1])
    assert shared == plain


def test_decode_settings_are_read_from_the_generation_settings():
    from mobench.api import Generation
    from mobench.decoding import DecodeSettings

    g = Generation(max_new_tokens=5, do_sample=True, temperature=0.7, batch_size=3)
    assert DecodeSettings.from_generation(g, 4) == DecodeSettings(5, True, 0.7, 3, 4)
    assert DecodeSettings.from_generation(Generation(), 0) == DecodeSettings()  # one set of defaults


def test_public_packages_import_no_torch():
    import subprocess
    import sys

    code = ("import sys, mobench.training, mobench.decoding, mobench.merging\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "for m in (mobench.training, mobench.decoding, mobench.merging):\n"
            "    assert all(hasattr(m, n) for n in m.__all__), m\n")
    subprocess.run([sys.executable, "-c", code], check=True)
