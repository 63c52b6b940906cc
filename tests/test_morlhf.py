"""MORLHF: the scalarised reward trl gets, and one cached RLOO policy per grid point on a micro model."""

from __future__ import annotations

import gzip
import json

import pytest

from mobench.api import MobenchError, Normalisation, Preference, PreferencePair, RunContext, TaskInstance
from mobench.training import scalarised_reward, weighted_rewards
from helpers import TEST_DEVICE, TEST_DTYPE


class Brevity:
    """A real, cheap objective: response length in characters, shorter is better."""

    name = "brevity"
    direction = -1

    def __init__(self):
        self.calls = 0

    def score(self, prompts, responses):
        self.calls += 1
        return [float(len(r)) for r in responses]

    def provenance(self):
        return {"scorer": "len(response)"}


class Positivity:
    """A real, cheap objective: VADER's compound sentiment of the response."""

    name = "positivity"
    direction = 1

    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()
        self.calls = 0

    def score(self, prompts, responses):
        self.calls += 1
        return [self.analyzer.polarity_scores(r)["compound"] for r in responses]

    def provenance(self):
        return {"scorer": "vaderSentiment compound"}


NORM = {"brevity": Normalisation(mean=20.0, std=10.0), "positivity": Normalisation(mean=0.1, std=0.5)}
PROMPTS = ["\n\nHuman: How are you?\n\nAssistant:"] * 4
COMPLETIONS = [" I love it, thanks!", " No.", " That is a terrible, awful idea and I hate it.", " Fine."]


def test_scalarised_reward_is_the_weighted_sum_of_z_scores():
    weights = (0.3, 0.7)
    got = scalarised_reward([Brevity(), Positivity()], NORM, weights)(PROMPTS, COMPLETIONS)
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    expected = []
    for c in COMPLETIONS:
        z_brevity = -(len(c) - 20.0) / 10.0
        z_positivity = (vader.polarity_scores(c)["compound"] - 0.1) / 0.5
        expected.append(0.3 * z_brevity + 0.7 * z_positivity)
    assert got == pytest.approx(expected, abs=1e-9)
    # Shorter and more positive ranks first; the hateful sentence last.
    assert got.index(max(got)) == 0 and got.index(min(got)) == 2


def test_zero_weight_objectives_are_not_scored():
    brevity, positivity = Brevity(), Positivity()
    funcs, ws = weighted_rewards([brevity, positivity], NORM, (1.0, 0.0))
    assert [f.__name__ for f in funcs] == ["z_brevity"] and ws == [1.0]
    rewards = scalarised_reward([brevity, positivity], NORM, (1.0, 0.0))(PROMPTS, COMPLETIONS)
    assert rewards == pytest.approx([-(len(c) - 20.0) / 10.0 for c in COMPLETIONS])
    assert positivity.calls == 0 and brevity.calls == 1
    with pytest.raises(MobenchError):
        weighted_rewards([brevity, positivity], {"brevity": NORM["brevity"]}, (0.5, 0.5))


def _real_pairs(data_dir, n, max_chars=200):
    pairs = []
    with gzip.open(data_dir / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", "rt") as fh:
        for line in fh:
            row = json.loads(line)
            cut = row["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
            prompt = row["chosen"][:cut]
            if len(prompt) > max_chars or not row["rejected"].startswith(prompt):
                continue
            pairs.append(PreferencePair(prompt, row["chosen"][cut:][:max_chars], row["rejected"][cut:][:max_chars]))
            if len(pairs) == n:
                return pairs
    return pairs


def test_morlhf_trains_one_cached_policy_per_point_and_generates(smol_tokenizer, data_dir, tmp_path, monkeypatch):
    from mobench.methods.morlhf import Morlhf
    from mobench.training import TRAIN_INFO, RlBudget

    policy = _micro_policy(smol_tokenizer, tmp_path, monkeypatch)
    pairs = _real_pairs(data_dir, 12)
    task = TaskInstance(
        name="micro",
        scale="tiny",
        policy=str(policy),
        objectives=[Brevity(), Positivity()],
        prompts=[p.prompt for p in pairs[:3]],  # evaluation prompts: never trained on
        normalisation=NORM,
        reference_point=(-3.0, -3.0),
        pairs={"brevity": pairs[3:], "positivity": pairs[3:]},
        generation={"max_new_tokens": 6, "do_sample": False, "batch_size": 3},
    )
    options = Morlhf.Options(train=RlBudget(steps=2, batch_size=4, num_generations=2, max_new_tokens=6, learning_rate=1e-3, lora_r=4, n_prompts=6,
                                           max_prompt_chars=200))  # the pairs' limit: 3 eval prompts are shorter
    method = Morlhf(options)
    method.prepare(task, RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE))
    out = method.generate(task.prompts, [Preference((1.0, 0.0)), Preference((0.5, 0.5))])
    assert len(out) == 2 and all(len(r) == 3 and all(isinstance(t, str) for t in r) for r in out)
    paths = dict(method.policies)
    assert len(set(paths.values())) == 2
    record = json.loads((tmp_path / "cache" / "morlhf-policies" / paths["1.000000,0.000000"].split("/")[-1] / TRAIN_INFO).read_text())
    assert record["steps"] == 2 and record["rewards"] == ["z_brevity"]
    both = json.loads((tmp_path / "cache" / "morlhf-policies" / paths["0.500000,0.500000"].split("/")[-1] / TRAIN_INFO).read_text())
    assert both["rewards"] == ["z_brevity", "z_positivity"] and both["reward_weights"] == [0.5, 0.5]
    # The RLOO log carries trl's weighted reward of each step: a real number, not a placeholder.
    assert any("reward" in h for h in both["log"])

    # A second run finds both policies in the cache and trains nothing (trl's trainer is never built).
    import trl

    def no_training(*args, **kwargs):
        raise AssertionError("a cached policy was trained again")

    monkeypatch.setattr(trl, "RLOOTrainer", no_training)
    again = Morlhf(options)
    again.prepare(task, RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE))
    again.generate(task.prompts, [Preference((1.0, 0.0))])
    assert again.policies["1.000000,0.000000"] == paths["1.000000,0.000000"]


def _micro_policy(smol_tokenizer, tmp_path, monkeypatch):
    """A saved micro policy folder over SmolLM2's tokenizer, and a cache of the test's own under tmp_path."""
    from mobench.models import micro_causal_lm

    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
    policy = tmp_path / "policy"
    micro_causal_lm(smol_tokenizer, seed=0).save_pretrained(policy)
    smol_tokenizer.save_pretrained(policy)
    return policy


class _Captured(Exception):
    """Raised by the intercepted RLOOTrainer.train once trl has built its reward weights: nothing trains."""


@pytest.mark.parametrize("weights", [(0.3, 0.7), (0.0, 1.0), (0.8, 0.2)])
def test_trl_receives_the_weights_and_z_scored_rewards(weights, smol_tokenizer, tmp_path, monkeypatch):
    """What trl's RLOOTrainer holds (its reward_weights tensor and reward functions), combined as trl combines them."""
    import torch
    import trl

    from mobench.training import RlBudget, train_rl_policy

    policy = _micro_policy(smol_tokenizer, tmp_path, monkeypatch)
    seen = {}

    def intercepted(self, *args, **kwargs):
        seen["weights"] = self.reward_weights.clone()
        seen["funcs"] = list(self.reward_funcs)
        seen["beta"] = self.args.beta
        raise _Captured

    monkeypatch.setattr(trl.RLOOTrainer, "train", intercepted)
    budget = RlBudget(steps=1, batch_size=4, num_generations=2, max_new_tokens=4, lora_r=4, n_prompts=2, beta_kl=0.07)
    with pytest.raises(_Captured):
        train_rl_policy(str(policy), [Brevity(), Positivity()], NORM, weights, PROMPTS[:2], budget, RunContext(device=TEST_DEVICE, dtype=TEST_DTYPE))
    kept = [w for w in weights if w > 0]
    assert seen["weights"].tolist() == pytest.approx(kept) and seen["beta"] == pytest.approx(0.07)
    # trl's own combination: (rewards_per_func * reward_weights).nansum(dim=1) (RLOOTrainer._generate_and_score_completions)
    per_func = torch.tensor([f(PROMPTS, COMPLETIONS) for f in seen["funcs"]], dtype=torch.float32).T
    trl_reward = (per_func * seen["weights"].unsqueeze(0)).nansum(dim=1)
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    want = [weights[0] * (-(len(c) - 20.0) / 10.0) + weights[1] * (vader.polarity_scores(c)["compound"] - 0.1) / 0.5
            for c in COMPLETIONS]
    assert trl_reward.tolist() == pytest.approx(want, abs=1e-5)
    assert not list((tmp_path / "cache").glob("morlhf-policies/*/mobench-artifact.json"))  # an aborted build caches nothing


def test_budget_options_override_the_tiny_budget_and_unknown_options_fail():
    from mobench.methods.morlhf import Morlhf

    pairs = [PreferencePair("\n\nHuman: Hi?\n\nAssistant:", " Hello.", " Go away.")]
    task = TaskInstance("t", "tiny", "p", [Brevity()], ["other prompt"], NORM, (-1.0,), pairs={"brevity": pairs})
    tiny = Morlhf.Options.preset("tiny")
    with pytest.raises(MobenchError, match=r"^task 't' has no preference-pair prompts \(of at most 12 characters\)"):
        Morlhf(tiny).prepare(task, RunContext())  # the one pair prompt is longer than the one evaluation prompt
    with pytest.raises(MobenchError, match="^RL asks for 64 training prompts of at most 100 characters; task 't' has 1"):
        Morlhf(tiny.replace({"max_prompt_chars": "100"}, parse=True)).prepare(task, RunContext())
    method = Morlhf(tiny.replace({"steps": "3", "learning_rate": "1e-3", "n_prompts": "1", "max_prompt_chars": "100"}, parse=True))
    method.prepare(task, RunContext())
    assert method.options.train.steps == 3 and method.options.train.batch_size == 8
    assert tiny.train.steps == 8  # the preset itself is untouched
    assert method.prompts == [pairs[0].prompt]  # pair prompts, never the evaluation prompts
    assert method.provenance()["options"]["train"]["steps"] == 3
    with pytest.raises(MobenchError, match="margin"):
        tiny.replace({"margin": "scores"})
    with pytest.raises(MobenchError):
        tiny.replace({"steps": 3, "batch_size": 6, "num_generations": 4})
    with pytest.raises(MobenchError, match="before prepare"):
        Morlhf().generate(["hi"], [Preference((1.0,))])


def test_rl_samples_as_many_tokens_as_the_evaluation_generates(smol_tokenizer, tmp_path, monkeypatch):
    """The tiny budget leaves max_new_tokens to the task: trl's RLOOTrainer gets the evaluation's length."""
    import trl

    from mobench.api import Generation
    from mobench.training import RlBudget, train_rl_policy

    policy = _micro_policy(smol_tokenizer, tmp_path, monkeypatch)
    seen = {}

    def intercepted(self, *args, **kwargs):
        seen["length"] = self.args.max_completion_length
        raise _Captured

    monkeypatch.setattr(trl.RLOOTrainer, "train", intercepted)
    budget = RlBudget.preset("tiny").replace({"steps": 1, "batch_size": 4, "num_generations": 2, "lora_r": 4, "n_prompts": 2})
    assert budget.max_new_tokens is None
    with pytest.raises(MobenchError, match="at_length"):
        train_rl_policy(str(policy), [Brevity(), Positivity()], NORM, (0.5, 0.5), PROMPTS[:2], budget, RunContext(device=TEST_DEVICE, dtype=TEST_DTYPE))
    for length in (7, 13):
        resolved = budget.at_length(Generation(max_new_tokens=length))
        assert resolved.max_new_tokens == length and resolved.at_length(Generation(max_new_tokens=99)) is resolved
        with pytest.raises(_Captured):
            train_rl_policy(str(policy), [Brevity(), Positivity()], NORM, (0.5, 0.5), PROMPTS[:2], resolved, RunContext(device=TEST_DEVICE, dtype=TEST_DTYPE))
        assert seen["length"] == length


@pytest.mark.parametrize("name", ["hh", "summarize"])
def test_rl_gets_its_n_prompts_no_longer_than_the_longest_evaluation_prompt(data_dir, name):
    """Both built-in tasks give RL its 64 prompts at the tiny budget; a shortfall is one clear line, never silent.

    A fixed 800-character limit left summarize's RL (MORLHF, MAGE's backbones) 2 of its 1,000 pair prompts.
    """
    from mobench.plugins import get_plugin_manager
    from mobench.training import RlBudget, rl_prompts, training_prompts

    task = get_plugin_manager(entry_points=False).registry.task(name).load("tiny", RunContext(device=TEST_DEVICE))
    tiny = RlBudget.preset("tiny")
    assert tiny.max_prompt_chars is None and tiny.max_new_tokens is None
    budget = tiny.at_task(task)
    assert budget.max_prompt_chars == max(len(p) for p in task.prompts)
    assert budget.max_new_tokens == task.generation.max_new_tokens and budget.at_task(task) is budget
    prompts = rl_prompts(task, budget, 0)
    assert len(prompts) == len(set(prompts)) == budget.n_prompts == 64
    assert all(len(p) <= budget.max_prompt_chars for p in prompts) and not set(prompts) & set(task.prompts)
    assert rl_prompts(task, budget, 0) == prompts and rl_prompts(task, budget, 1) != prompts  # seeded
    pool = len(training_prompts(task, 10**6, 0, budget.max_prompt_chars))
    with pytest.raises(MobenchError, match=rf"^RL asks for {pool + 1} training prompts of at most {budget.max_prompt_chars} "
                                           rf"characters; task '{name}' has {pool}: raise max_prompt_chars or lower n_prompts$"):
        rl_prompts(task, budget.replace({"n_prompts": pool + 1}), 0)
    if name == "summarize":  # the old limit
        assert len(training_prompts(task, 64, 0, 800)) == 2
    with pytest.raises(MobenchError, match="resolve it with budget.at_task"):
        rl_prompts(task, tiny, 0)
