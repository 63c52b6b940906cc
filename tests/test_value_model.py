"""MAGE's explicit value model: its regression target (the z-score, direction included), its token mask
(the prompt's last token and every response token, EOS included; not the prompt, not padding), a loss that
falls, the held-out fit in its record, and rollouts that keep the sampled EOS."""

from __future__ import annotations

import json

import pytest

from mobench.api import Normalisation, RunContext
from helpers import TEST_DEVICE, TEST_DTYPE

ROWS = [
    {"prompt": "\n\nHuman: Hi there, how are you?\n\nAssistant:", "response": " Fine."},
    {"prompt": "\n\nHuman: Tell me a story.\n\nAssistant:", "response": " Once upon a time there was a very long story indeed."},
    {"prompt": "\n\nHuman: Why?\n\nAssistant:", "response": " Because it is so, and that is all there is to it."},
    {"prompt": "\n\nHuman: Say something nice about the weather today please.\n\nAssistant:", "response": " Sunny!"},
    # held out (the last N_HELDOUT): never trained on, V's fit is measured on them
    {"prompt": "\n\nHuman: And tomorrow?\n\nAssistant:", "response": " Rain, most likely, all day long and into the night."},
    {"prompt": "\n\nHuman: Thanks.\n\nAssistant:", "response": " Sure."},
]
N_HELDOUT = 2
TRAIN = ROWS[:-N_HELDOUT]
NORM = Normalisation(mean=30.0, std=8.0)


class Brevity:
    name, direction = "brevity", -1

    def score(self, prompts, responses):
        return [float(len(r)) for r in responses]

    def provenance(self):
        return {"scorer": "len(response)"}


STEPS = 25


@pytest.fixture(scope="module")
def trained(smol_tokenizer, tmp_path_factory):
    from mobench.methods.mage import value
    from mobench.models import micro_causal_lm
    from mobench.training import TRAIN_INFO

    tmp_path = tmp_path_factory.mktemp("value")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
        policy = tmp_path / "policy"
        micro_causal_lm(smol_tokenizer, seed=0).save_pretrained(policy)
        smol_tokenizer.save_pretrained(policy)
        eos = smol_tokenizer.eos_token_id
        rows = [{**r, "response_ids": smol_tokenizer(r["response"], add_special_tokens=False)["input_ids"] + [eos] * (i % 2 == 0)}
                for i, r in enumerate(ROWS)]  # every other rollout ended in EOS
        monkeypatch.setattr(value, "rollouts", lambda policy, prompts, budget, context=None: rows)
        budget = value.ValueBudget(steps=STEPS, batch_size=len(TRAIN), learning_rate=3e-2, lora_r=2, n_heldout=N_HELDOUT,
                                   max_new_tokens=16)
        path = value.train_value_model(str(policy), Brevity(), NORM, [r["prompt"] for r in ROWS], budget, RunContext(device=TEST_DEVICE, dtype=TEST_DTYPE))
        return path, json.loads((path / TRAIN_INFO).read_text()), smol_tokenizer, rows, policy


def _targets(rows=TRAIN):
    return [-(len(r["response"]) - NORM.mean) / NORM.std for r in rows]


def test_the_target_is_the_direction_aware_z_score(trained):
    record = trained[1]
    assert record["target_mean"] == pytest.approx(sum(_targets()) / len(TRAIN))
    assert (record["n_rollouts"], record["n_heldout"], record["rollouts_ending_in_eos"]) == (len(TRAIN), N_HELDOUT, 3)


def test_the_first_loss_weighs_exactly_the_prompts_last_token_and_the_response(trained):
    """The head starts at zero, so the first loss is sum_i n_i z_i^2 / sum_i n_i with n_i = 1 + response tokens (EOS included)."""
    _, record, tok, rows, _ = trained
    counts = [1 + len(r["response_ids"]) for r in rows[: len(TRAIN)]]
    assert counts[0] == 2 + len(tok(ROWS[0]["response"], add_special_tokens=False)["input_ids"])  # the EOS counts
    z = _targets()
    want = sum(n * t * t for n, t in zip(counts, z)) / sum(counts)
    assert record["losses"][0] == pytest.approx(want, rel=1e-5)
    # neither the prompts' tokens nor the padding count: those weightings give other numbers
    prompts = [len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in TRAIN]
    with_prompt = sum((n + p - 1) * t * t for n, p, t in zip(counts, prompts, z)) / sum(n + p - 1 for n, p in zip(counts, prompts))
    assert abs(with_prompt - want) > 1e-3


def test_the_loss_falls_and_the_head_is_saved(trained):
    from mobench.methods.mage.value import load_head

    path, record = trained[:2]
    losses = record["losses"]
    assert len(losses) == STEPS
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
    weight, bias = load_head(path)
    assert weight.shape[0] == 1 and bias.shape == (1,) and float(weight.abs().sum()) > 0


def test_the_held_out_fit_is_spearman_of_v_at_every_prefix_against_z(trained):
    """Recomputed from the saved adapter and head on the held-out rollouts (which the regression never saw)."""
    import torch
    from peft import PeftModel
    from scipy.stats import spearmanr

    from mobench.methods.mage.value import fit_record, hidden_states, load_head
    from mobench.models import load_causal_lm

    path, record, tok, rows, policy = trained
    from mobench.models import resolve_dtype

    base, _ = load_causal_lm(str(policy), device=TEST_DEVICE, dtype=resolve_dtype(TEST_DTYPE))  # the fit's precision
    model = PeftModel.from_pretrained(base, str(path)).eval()
    weight, bias = load_head(path)
    values, zs, finals = [], [], []
    for r, z in zip(rows[-N_HELDOUT:], _targets(ROWS[-N_HELDOUT:])):
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + r["response_ids"]], device=model.device)
        with torch.no_grad():
            h = hidden_states(model, ids, torch.ones_like(ids)).last_hidden_state[0]
        v = (h.float().cpu() @ weight[0] + bias[0])[len(p) - 1 :].tolist()
        values += v
        zs += [z] * len(v)
        finals.append(v[-1])
    fit = record["heldout_fit"]
    assert fit["n"] == N_HELDOUT and fit["positions"] == len(values)
    assert fit["spearman_prefixes"] == pytest.approx(spearmanr(values, zs).statistic, abs=2e-3)
    assert fit["spearman_final"] == pytest.approx(spearmanr(finals, _targets(ROWS[-N_HELDOUT:])).statistic, abs=1e-3)
    assert fit_record(path)["heldout_fit"] == fit


def test_rollouts_keep_the_sampled_eos_and_score_its_text(smol_tokenizer, tmp_path, monkeypatch):
    """A policy that emits EOS as its second token: response_ids end in it, the text drops it, the key says how."""
    import torch

    import mobench.decoding as decoding
    from mobench.methods.mage import value
    from mobench.models import micro_causal_lm

    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
    policy = tmp_path / "policy"
    micro_causal_lm(smol_tokenizer, seed=0).save_pretrained(policy)
    smol_tokenizer.save_pretrained(policy)
    eos = smol_tokenizer.eos_token_id
    plain = decoding.ModelScorer

    class StopsSecond(plain):  # the policy itself, except that its second token is EOS
        calls = 0

        def __call__(self, *args):
            out = super().__call__(*args)
            StopsSecond.calls += 1
            if StopsSecond.calls % 2 == 0:
                out = torch.full_like(out, -1e4)
                out[:, eos] = 0.0
            return out

    monkeypatch.setattr(decoding, "ModelScorer", StopsSecond)
    budget = value.ValueBudget(max_new_tokens=5, n_heldout=2)
    prompts = ["Hello there", "Tell me"]
    rows = value.rollouts(str(policy), prompts, budget, RunContext(device=TEST_DEVICE, dtype=TEST_DTYPE, seed=3))
    for r in rows:
        assert len(r["response_ids"]) == 2 and r["response_ids"][-1] == eos
        assert r["response"] == smol_tokenizer.decode(r["response_ids"][:1], skip_special_tokens=True)
    assert value.rollout_key(str(policy), prompts, budget)["max_new_tokens"] == 5
    with pytest.raises(Exception, match="unresolved"):
        value.rollout_key(str(policy), prompts, value.ValueBudget())
    assert value.for_task(value.ValueBudget(), 48).max_new_tokens == 48
    assert value.for_task(value.ValueBudget(max_new_tokens=7), 48).max_new_tokens == 7
