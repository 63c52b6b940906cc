"""MAGE's explicit value model: its regression target (the z-score, direction included), its token mask
(the prompt's last token and every response token; not the prompt, not padding) and a loss that falls."""

from __future__ import annotations

import json

import pytest

from mobench.api import Normalisation, RunContext

ROWS = [
    {"prompt": "\n\nHuman: Hi there, how are you?\n\nAssistant:", "response": " Fine."},
    {"prompt": "\n\nHuman: Tell me a story.\n\nAssistant:", "response": " Once upon a time there was a very long story indeed."},
    {"prompt": "\n\nHuman: Why?\n\nAssistant:", "response": " Because it is so, and that is all there is to it."},
    {"prompt": "\n\nHuman: Say something nice about the weather today please.\n\nAssistant:", "response": " Sunny!"},
]
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
        monkeypatch.setattr(value, "rollouts", lambda policy, prompts, budget, context=None: ROWS)
        budget = value.ValueBudget(steps=STEPS, batch_size=len(ROWS), learning_rate=3e-2, lora_r=2)
        path = value.train_value_model(str(policy), Brevity(), NORM, [r["prompt"] for r in ROWS], budget, RunContext(device="cpu"))
        return path, json.loads((path / TRAIN_INFO).read_text()), smol_tokenizer


def _targets():
    return [-(len(r["response"]) - NORM.mean) / NORM.std for r in ROWS]


def test_the_target_is_the_direction_aware_z_score(trained):
    _, record, _ = trained
    assert record["target_mean"] == pytest.approx(sum(_targets()) / len(ROWS))
    assert record["n_rollouts"] == len(ROWS)


def test_the_first_loss_weighs_exactly_the_prompts_last_token_and_the_response(trained):
    """The head starts at zero, so the first loss is sum_i n_i z_i^2 / sum_i n_i with n_i = 1 + response tokens."""
    _, record, tok = trained
    counts = [1 + len(tok(r["response"], add_special_tokens=False)["input_ids"]) for r in ROWS]
    z = _targets()
    want = sum(n * t * t for n, t in zip(counts, z)) / sum(counts)
    assert record["losses"][0] == pytest.approx(want, rel=1e-5)
    # neither the prompts' tokens nor the padding count: those weightings give other numbers
    prompts = [len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in ROWS]
    with_prompt = sum((n + p - 1) * t * t for n, p, t in zip(counts, prompts, z)) / sum(n + p - 1 for n, p in zip(counts, prompts))
    assert abs(with_prompt - want) > 1e-3


def test_the_loss_falls_and_the_head_is_saved(trained):
    from mobench.methods.mage.value import load_head

    path, record, _ = trained
    losses = record["losses"]
    assert len(losses) == STEPS
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
    weight, bias = load_head(path)
    assert weight.shape[0] == 1 and bias.shape == (1,) and float(weight.abs().sum()) > 0
