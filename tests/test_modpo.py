"""MODPO: the margin-DPO loss through trl's DPOTrainer on a micro model, and the margins on a hand-worked pair."""

from __future__ import annotations

import gzip
import json
import math

import pytest

from mobench.api import MobenchError, Normalisation, PreferencePair
from mobench.methods.modpo.trainer import choose_k, score_differences, weighted_margins
from helpers import TEST_DEVICE, TEST_DTYPE

BETA = 0.1


class CharLength:
    """A real, cheap objective: the response length in characters, shorter is better."""

    name = "brevity"
    direction = -1

    def score(self, prompts, responses):
        return [float(len(r)) for r in responses]

    def provenance(self):
        return {"scorer": "len(response)"}


def _real_pairs(data_dir, n):
    """The n shortest-prompt HH-RLHF harmless-base test pairs (the first 200 rows), split at the last turn."""
    pairs = []
    with gzip.open(data_dir / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", "rt") as fh:
        for line, _ in zip(fh, range(200)):
            row = json.loads(line)
            cut = row["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
            prompt = row["chosen"][:cut]
            if not row["rejected"].startswith(prompt):
                continue
            pairs.append(PreferencePair(prompt, row["chosen"][cut:], row["rejected"][cut:]))
    pairs.sort(key=lambda p: len(p.prompt) + len(p.chosen) + len(p.rejected))
    return pairs[:n]


def test_margin_sign_and_size_match_a_hand_worked_pair():
    # brevity: mean 8, std 4, lower is better. Chosen has 12 characters (z = -(12-8)/4 = -1), rejected 4
    # (z = +1): the chosen response is worse on brevity, d = -1 - 1 = -2.
    pair = PreferencePair("Q", "abcdefghijkl", "abcd")
    d = score_differences(CharLength(), Normalisation(mean=8.0, std=4.0), [pair])
    assert d == [-2.0]
    # w = (brevity 0.3, helpful 0.7): k is helpful (largest weight with pairs), margin = 0.3 * -2 = -0.6.
    weights = (0.3, 0.7)
    k = choose_k(weights, ["brevity", "helpful"], {"brevity": [pair], "helpful": [pair]})
    assert k == 1
    assert weighted_margins({0: d}, weights, k, 1) == pytest.approx([-0.6])
    assert weighted_margins({}, (0.0, 1.0), 1, 2) == [0.0, 0.0]
    # A negative margin raises the logit (1/w_k)(beta*delta - m): the pair needs a smaller log-ratio gap.


def test_choose_k_takes_a_weighted_objective_with_pairs():
    pairs = {"a": [1], "b": [1]}
    assert choose_k((1.0, 0.0), ["a", "b"], pairs) == 0
    assert choose_k((0.0, 1.0), ["a", "b"], pairs) == 1
    assert choose_k((0.5, 0.5), ["a", "b"], pairs) == 0
    assert choose_k((0.9, 0.1), ["a", "b"], {"b": [1]}) == 1
    with pytest.raises(MobenchError):
        choose_k((1.0, 0.0), ["a", "b"], {"b": [1]})


def _trainer(smol_tokenizer, pairs, beta, margins=None, w_k=None, tmp_path=None, **kwargs):
    """A trl DPOTrainer (margins None) or a MODPO trainer on a fresh micro model with a non-zero LoRA adapter."""
    from peft import LoraConfig
    from trl import DPOTrainer

    from mobench.methods.modpo.trainer import modpo_trainer
    from mobench.models import micro_causal_lm
    from mobench.training import DpoBudget, dpo_config, pairs_dataset

    budget = DpoBudget(steps=1, batch_size=len(pairs), learning_rate=1e-3, beta=beta, max_length=96)
    config = dpo_config(budget, str(tmp_path), seed=0, device=TEST_DEVICE, precompute_ref_log_probs=True)
    # init_lora_weights=False: B is random, so the policy differs from the reference from the start.
    peft = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    model = micro_causal_lm(smol_tokenizer, seed=0)
    if margins is None:
        return DPOTrainer(model=model, args=config, train_dataset=pairs_dataset(pairs), processing_class=smol_tokenizer, peft_config=peft)
    return modpo_trainer(model, smol_tokenizer, pairs, margins, w_k, config, peft_config=peft, **kwargs)


def _losses(trainer):
    """trl's loss on each pair alone (batches of one, dataset order)."""
    import torch

    with torch.no_grad():
        return [
            float(trainer.compute_loss(trainer.model, trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i]]))))
            for i in range(len(trainer.train_dataset))
        ]


def test_modpo_loss_is_trl_dpo_loss_with_beta_over_w_k_and_the_margin(smol_tokenizer, data_dir, tmp_path):
    pairs = _real_pairs(data_dir, 4)
    dpo = _losses(_trainer(smol_tokenizer, pairs, BETA, tmp_path=tmp_path))
    assert len(set(round(x, 6) for x in dpo)) > 1 and all(abs(x - math.log(2)) > 1e-4 for x in dpo)

    # w_{-k} = 0: w_k = 1, no margin: exactly trl's DPO loss.
    modpo = _losses(_trainer(smol_tokenizer, pairs, BETA, margins=[0.0] * 4, w_k=1.0, tmp_path=tmp_path))
    assert modpo == pytest.approx(dpo, abs=1e-6)

    # w_k = 0.5 with zero margins: trl's DPO loss with beta / w_k (reference log-probs reused from a cache).
    cache = {}
    _trainer(smol_tokenizer, pairs, BETA, margins=[0.0] * 4, w_k=1.0, tmp_path=tmp_path, reference_cache=cache)
    assert len(cache["train"]) == 4
    modpo_half = _losses(_trainer(smol_tokenizer, pairs, BETA, margins=[0.0] * 4, w_k=0.5, tmp_path=tmp_path, reference_cache=cache))
    dpo_double = _losses(_trainer(smol_tokenizer, pairs, 2 * BETA, tmp_path=tmp_path))
    assert modpo_half == pytest.approx(dpo_double, abs=1e-6)
    assert modpo_half != pytest.approx(dpo, abs=1e-4)

    # Margins: -log sigmoid((1/w_k)(beta*delta - m)), beta*delta recovered from trl's DPO loss on each pair.
    w_k, margins = 0.7, [-0.6, 0.6, 1.5, 0.0]
    modpo_m = _losses(_trainer(smol_tokenizer, pairs, BETA, margins=margins, w_k=w_k, tmp_path=tmp_path))
    for loss_dpo, m, got in zip(dpo, margins, modpo_m):
        p = math.exp(-loss_dpo)
        beta_delta = math.log(p / (1 - p))
        expected = -math.log(1 / (1 + math.exp(-(beta_delta - m) / w_k)))
        assert got == pytest.approx(expected, abs=1e-5)
    # The sign: a negative margin (chosen worse on the other objective) lowers the loss, a positive raises it.
    assert modpo_m[0] < modpo_m[3] < modpo_m[1] < modpo_m[2]


def test_modpo_plugin_trains_one_cached_policy_per_point(smol_tokenizer, data_dir, tmp_path, monkeypatch):
    from mobench.api import Preference, RunContext, TaskInstance
    from mobench.methods.modpo import Modpo
    from mobench.models import micro_causal_lm
    from mobench.training import TRAIN_INFO, DpoBudget, train_dpo_expert

    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
    policy = tmp_path / "policy"
    micro_causal_lm(smol_tokenizer, seed=0).save_pretrained(policy)
    smol_tokenizer.save_pretrained(policy)
    pairs = _real_pairs(data_dir, 10)

    class Words(CharLength):
        name, direction = "words", 1

        def score(self, prompts, responses):
            return [float(len(r.split())) for r in responses]

    task = TaskInstance(
        name="micro",
        scale="tiny",
        policy=str(policy),
        objectives=[CharLength(), Words()],
        prompts=[p.prompt for p in pairs[:2]],
        normalisation={"brevity": Normalisation(200.0, 100.0), "words": Normalisation(40.0, 20.0)},
        reference_point=(-3.0, -3.0),
        pairs={"brevity": pairs[2:6], "words": pairs[6:]},
        generation={"max_new_tokens": 5, "do_sample": False, "batch_size": 2},
    )
    micro = DpoBudget(steps=2, batch_size=2, learning_rate=1e-3, max_length=96, lora_r=4, n_pairs=4)
    options = Modpo.Options(train=micro, experts=micro, margin="scores")

    def record(method, key):
        folder = method.policies[key].split("/")[-1]
        return json.loads((tmp_path / "cache" / "modpo-policies" / folder / TRAIN_INFO).read_text())

    context = RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE)
    method = Modpo(options.replace({"corners": "train"}))
    method.prepare(task, context)
    out = method.generate(task.prompts, [Preference((0.0, 1.0)), Preference((0.25, 0.75))])
    assert len(out) == 2 and all(len(r) == 2 for r in out)
    corner, inner = record(method, "0.000000,1.000000"), record(method, "0.250000,0.750000")
    # At the corner e_words: plain DPO on the words pairs, no margin; inside: words pairs, brevity margin.
    assert corner["k"] == "words" and corner["w_k"] == 1.0 and corner["margin_objectives"] == []
    # By default a corner IS the DPO expert of its objective under the train budget (the shared cached artifact),
    # and an inner point is the same MODPO policy as with corners=train.
    shared = Modpo(options)
    shared.prepare(task, context)
    corner_out = shared.generate(task.prompts, [Preference((0.0, 1.0)), Preference((0.25, 0.75))])
    assert shared.policies["0.000000,1.000000"] == str(train_dpo_expert(str(policy), "words", task.pairs["words"], micro, context))
    assert shared.policies["0.250000,0.750000"] == method.policies["0.250000,0.750000"]
    assert corner_out[1] == out[1]
    assert inner["k"] == "words" and inner["w_k"] == 0.75 and inner["margin_objectives"] == ["brevity"]
    by_hand = [0.25 * d for d in score_differences(CharLength(), task.normalisation["brevity"], task.pairs["words"])]
    assert inner["margin_mean"] == pytest.approx(sum(by_hand) / len(by_hand))
    assert corner["steps"] == inner["steps"] == 2

    # Implicit margins come from the DPO experts; a second plain run reuses its cached policy.
    implicit = Modpo(options.replace({"margin": "implicit"}))
    implicit.prepare(task, RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE))
    implicit.generate(task.prompts, [Preference((0.25, 0.75))])
    assert implicit.policies["0.250000,0.750000"] != method.policies["0.250000,0.750000"]
    assert any((tmp_path / "cache" / "dpo-experts").iterdir())
    again = Modpo(options.replace({"corners": "train"}))
    again.prepare(task, RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE))
    again.generate(task.prompts, [Preference((0.0, 1.0))])
    assert again.policies["0.000000,1.000000"] == method.policies["0.000000,1.000000"]
    with pytest.raises(MobenchError):
        options.replace({"margin": "oracle"})


def test_modpo_budget_options_override_the_tiny_budget():
    from mobench.api import Preference, RunContext, TaskInstance
    from mobench.methods.modpo import Modpo

    pair = PreferencePair("Q", "a", "b")
    task = TaskInstance("t", "tiny", "p", [CharLength()], ["x"], {"brevity": Normalisation(1.0, 1.0)}, (-1.0,),
                        pairs={"brevity": [pair]})
    tiny = Modpo.Options.preset("tiny")
    method = Modpo(tiny.replace({"train.steps": "12", "train.n_pairs": "64"}, parse=True))
    method.prepare(task, RunContext())
    assert method.options.train.steps == 12 and method.options.train.n_pairs == 64
    assert tiny.train.steps == 32 and method.options.experts.steps == 32  # the preset and the experts are untouched
    assert method.provenance()["options"]["margin"] == "implicit"  # the default, chosen on validation prompts
    with pytest.raises(MobenchError, match="no option 'num_generations'"):
        tiny.replace({"num_generations": 2})
    with pytest.raises(MobenchError, match="before prepare"):
        Modpo().generate(["x"], [Preference((1.0,))])
    with pytest.raises(MobenchError, match="has none"):
        Modpo().prepare(TaskInstance("t", "tiny", "p", [CharLength()], ["x"]), RunContext())


def _trl_logps(model, tok, pairs, max_length, tmp_path):
    """trl's own summed completion log-probs of ``model``: DPOTrainer's precomputed reference log-probs."""
    from trl import DPOTrainer

    from mobench.training import DpoBudget, dpo_config, pairs_dataset

    budget = DpoBudget(steps=1, batch_size=len(pairs), beta=BETA, max_length=max_length)
    # on the CPU in float32, like the log-probs it is compared with (on CUDA trl would autocast to bf16)
    config = dpo_config(budget, str(tmp_path), seed=0, device="cpu", precompute_ref_log_probs=True)
    trainer = DPOTrainer(model=model, args=config, train_dataset=pairs_dataset(pairs), processing_class=tok)
    data = trainer.train_dataset
    return data["ref_chosen_logps"], data["ref_rejected_logps"]


def test_implicit_margins_match_trls_log_probs(smol_tokenizer, data_dir, tmp_path, monkeypatch):
    """completion_logps (policy and expert) equals trl's log-probs, and implicit_differences is beta (h_w - h_l) of them."""
    import torch
    from peft import LoraConfig, get_peft_model

    import mobench.training as training
    from mobench.methods.modpo.trainer import completion_logps, implicit_differences
    from mobench.models import micro_causal_lm
    from mobench.training import DpoBudget
    from mobench.api import RunContext

    from mobench.training import truncate_prompts

    max_length = 28  # short enough that some pairs are cut (prompts keep their end, as MODPO's _train cuts them)
    raw = _real_pairs(data_dir, 6)
    pairs = truncate_prompts(raw, smol_tokenizer, max_length)
    assert pairs != raw
    lengths = [len(smol_tokenizer(p.prompt + p.chosen)["input_ids"]) for p in pairs]
    assert min(lengths) < max_length - 2 < max(lengths)
    policy = tmp_path / "policy"
    base = micro_causal_lm(smol_tokenizer, seed=0)
    base.save_pretrained(policy)
    smol_tokenizer.save_pretrained(policy)
    folders = {}
    for seed, name in [(1, "expert_a"), (2, "expert_b")]:
        micro = micro_causal_lm(smol_tokenizer, seed=0)
        torch.manual_seed(seed)  # after the micro model, which seeds its own initialisation
        peft = get_peft_model(micro, LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
        folders[name] = tmp_path / name
        peft.save_pretrained(folders[name])

    # trl's log-probs of the reference and of each expert (merged into a plain model)
    from mobench.training import load_policy_with_adapters

    trl = {"ref": _trl_logps(micro_causal_lm(smol_tokenizer, seed=0), smol_tokenizer, pairs, max_length, tmp_path / "t0")}
    for name in folders:
        model, _ = load_policy_with_adapters(str(policy), {name: str(folders[name])}, "cpu")
        trl[name] = _trl_logps(model.merge_and_unload(), smol_tokenizer, pairs, max_length, tmp_path / name)

    model, tok = load_policy_with_adapters(str(policy), {n: str(p) for n, p in folders.items()}, "cpu")
    with model.disable_adapter():
        ours_ref = completion_logps(model, tok, pairs, max_length)
    model.set_adapter("expert_a")
    ours_a = completion_logps(model, tok, pairs, max_length)
    for ours, theirs in [(ours_ref, trl["ref"]), (ours_a, trl["expert_a"])]:
        torch.testing.assert_close(ours[0], torch.tensor(theirs[0]), rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(ours[1], torch.tensor(theirs[1]), rtol=1e-4, atol=1e-3)
    assert not torch.allclose(ours_a[0], ours_ref[0])  # the expert is not the reference

    # implicit_differences over the saved experts (training replaced by the folders above)
    monkeypatch.setattr(training, "load_experts", lambda policy, pairs, budget, context, names: {n: folders[n] for n in names})
    beta = 0.3
    cpu = RunContext(seed=0, device="cpu", dtype="float32")  # as trl's log-probs above: CPU fp32 (without a context: cuda)
    budget = DpoBudget(beta=beta, max_length=max_length)
    got, reference = implicit_differences(str(policy), {}, budget, cpu, ["expert_a", "expert_b"], pairs)
    for name in folders:
        (ew, el), (rw, rl) = trl[name], trl["ref"]
        want = [beta * ((a - b) - (c - d)) for a, b, c, d in zip(ew, rw, el, rl)]
        assert got[name] == pytest.approx(want, rel=1e-3, abs=1e-3)
    assert got["expert_a"] != pytest.approx(got["expert_b"], abs=1e-3)
    torch.testing.assert_close(reference[0], torch.tensor(trl["ref"][0]), rtol=1e-4, atol=1e-3)
    # a known reference (trl's pass of an earlier grid point) is used as given: shifted by +1 on the chosen side,
    # every difference moves by exactly -beta
    shifted = ([x + 1.0 for x in reference[0].tolist()], reference[1].tolist())
    moved, kept = implicit_differences(str(policy), {}, budget, cpu, ["expert_a"], pairs, reference=shifted)
    assert moved["expert_a"] == pytest.approx([d - beta for d in got["expert_a"]], abs=1e-5)
    assert kept[0].tolist() == pytest.approx(shifted[0])
    with pytest.raises(MobenchError, match=r"^5 reference log-probs for 6 pairs$"):
        implicit_differences(str(policy), {}, budget, cpu, ["expert_a"], pairs, reference=(shifted[0][:5], shifted[1][:5]))

    # scoring completion positions only: the same sums whatever the batch (its first completion position differs)
    model.set_adapter("expert_b")
    sums = [completion_logps(model, tok, pairs, max_length, batch_size=b) for b in (1, 3, 12)]
    for other in sums[1:]:
        torch.testing.assert_close(other[0], sums[0][0], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(other[1], sums[0][1], rtol=1e-5, atol=1e-4)


def test_implicit_margins_and_trl_share_one_reference_pass_per_pair_set(smol_tokenizer, data_dir, tmp_path, monkeypatch):
    """Whichever runs first (trl's reference pass at a corner, the margins' at an inner point), the other reuses it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from trl import DPOTrainer

    import mobench.methods.modpo.trainer as modpo
    import mobench.training as training
    from mobench.api import RunContext, TaskInstance
    from mobench.models import micro_causal_lm
    from mobench.training import TRAIN_INFO, DpoBudget

    policy = tmp_path / "policy"
    micro_causal_lm(smol_tokenizer, seed=0).save_pretrained(policy)
    smol_tokenizer.save_pretrained(policy)
    folders = {}
    for seed, name in [(1, "a"), (2, "b")]:
        micro = micro_causal_lm(smol_tokenizer, seed=0)
        torch.manual_seed(seed)
        get_peft_model(micro, LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)).save_pretrained(tmp_path / name)
        folders[name] = tmp_path / name
    monkeypatch.setattr(training, "load_experts", lambda policy, pairs, budget, context, names: {n: folders[n] for n in names})
    calls = {"trl": 0, "ours": 0}
    trl_pass, ours = DPOTrainer._precompute_ref_logps, modpo.completion_logps

    def count_trl(self, *args, **kwargs):
        calls["trl"] += 1
        return trl_pass(self, *args, **kwargs)

    def count_ours(*args, **kwargs):
        calls["ours"] += 1
        return ours(*args, **kwargs)

    monkeypatch.setattr(DPOTrainer, "_precompute_ref_logps", count_trl)
    monkeypatch.setattr(modpo, "completion_logps", count_ours)

    class Named(CharLength):
        def __init__(self, name):
            self.name = name

    pairs = _real_pairs(data_dir, 6)
    task = TaskInstance("micro", "tiny", str(policy), [Named("a"), Named("b")], ["q"],
                        {n: Normalisation(0.0, 1.0) for n in "ab"}, (-1.0, -1.0), pairs={"a": pairs, "b": pairs})
    cpu = RunContext(seed=0, device="cpu", dtype="float32")
    budget = DpoBudget(steps=1, batch_size=2, learning_rate=1e-3, beta=0.3, max_length=28, lora_r=4, n_pairs=6)

    def train(margins, weights, out):
        modpo._train(task, weights, margins, budget, cpu, tmp_path / out)
        return json.loads((tmp_path / out / TRAIN_INFO).read_text())["margin_mean"]

    # the margins first (inner point, k = b): one reference pass and one expert pass; trl reuses the reference
    first = modpo.MarginSource(task, cpu, "implicit", budget)
    inner = train(first, (0.25, 0.75), "inner1")
    assert calls == {"trl": 0, "ours": 2}
    (cache,) = first.reference.values()
    assert cache["train"].features["ref_chosen_logps"].dtype == "float32" and len(cache["train"]) == 6
    train(first, (0.0, 1.0), "corner1")  # the corner (no margin) reuses it too
    assert calls == {"trl": 0, "ours": 2}
    # trl first (the corner): the margins then need the expert pass only, and give the same margins
    second = modpo.MarginSource(task, cpu, "implicit", budget)
    train(second, (0.0, 1.0), "corner2")
    assert calls == {"trl": 1, "ours": 2}
    assert train(second, (0.25, 0.75), "inner2") == pytest.approx(inner, abs=1e-4)
    assert calls == {"trl": 1, "ours": 3}
    # experts under another sequence budget: nothing to share (their rows are cut elsewhere), both passes run
    third = modpo.MarginSource(task, cpu, "implicit", DpoBudget(beta=0.3, max_length=40))
    train(third, (0.25, 0.75), "inner3")
    assert calls == {"trl": 2, "ours": 5}


# --- the loss's wiring without training: what ModpoTrainer hands trl (fast: no model, no optimiser) ----------


def _config(**over):
    from types import SimpleNamespace

    fields = {"beta": 0.1, "loss_type": ["sigmoid"], "f_divergence_type": "reverse_kl", "ld_alpha": None,
              "use_weighting": False, "precompute_ref_log_probs": False}
    return SimpleNamespace(**{**fields, **over})


def test_modpo_trainer_divides_beta_by_w_k_and_forces_precomputed_reference(monkeypatch):
    from trl import DPOTrainer

    from mobench.methods.modpo.trainer import _trainer_class

    seen = {}
    monkeypatch.setattr(DPOTrainer, "__init__", lambda self, *args, **kwargs: seen.update(args=args, kwargs=kwargs))
    cls = _trainer_class()
    config, cache = _config(), {}
    trainer = cls("m", args=config, w_k=0.25, reference_cache=cache, train_dataset="d")
    assert config.beta == pytest.approx(0.4) and config.precompute_ref_log_probs is True
    assert trainer.modpo_beta == 0.1 and trainer.w_k == 0.25 and trainer.reference_cache is cache
    assert seen == {"args": ("m",), "kwargs": {"args": config, "train_dataset": "d"}}  # w_k and the cache stay ours
    assert cls("m", args=_config(beta=0.3), w_k=1).reference_cache is None
    for w_k in (0.0, -0.5, 1.01):
        with pytest.raises(MobenchError, match=rf"^modpo needs 0 < w_k <= 1, got {w_k}$"):
            cls("m", args=_config(), w_k=w_k)
    plain = "^modpo builds on trl's plain sigmoid DPO loss \\(loss_type=sigmoid, reverse KL, no ld_alpha, no weighting\\)$"
    for bad in ({"loss_type": ["ipo"]}, {"loss_type": ["sigmoid", "bco_pair"]}, {"f_divergence_type": "js_divergence"},
                {"ld_alpha": 0.5}, {"use_weighting": True}):
        with pytest.raises(MobenchError, match=plain):
            cls("m", args=_config(**bad), w_k=0.5)


def test_modpo_reference_log_probs_are_shifted_by_the_margin_over_beta(monkeypatch):
    """(beta/w_k)((lp - ref - m/beta)(y_w) - (lp - ref)(y_l)) = (1/w_k)(beta delta - m): only ref_chosen moves."""
    from datasets import Dataset
    from trl import DPOTrainer

    from mobench.methods.modpo.trainer import _trainer_class

    cls = _trainer_class()
    trainer = cls.__new__(cls)
    trainer.modpo_beta, trainer.reference_cache = 0.5, {}
    data = Dataset.from_dict({"prompt": ["a", "b"], "margin": [1.0, -0.25]})
    computed = []

    def trl_precompute(self, dataset, name, batch_size):
        computed.append((name, batch_size))
        n = len(dataset)
        return dataset.add_column("ref_chosen_logps", [-3.0, -4.0][:n]).add_column("ref_rejected_logps", [-5.0, -6.0][:n])

    monkeypatch.setattr(DPOTrainer, "_precompute_ref_logps", trl_precompute)
    out = trainer._precompute_ref_logps(data, "train", 7)
    assert computed == [("train", 7)]
    assert out.column_names == ["prompt", "ref_chosen_logps", "ref_rejected_logps"]  # the margin column is consumed
    assert out["ref_chosen_logps"] == pytest.approx([-3.0 + 1.0 / 0.5, -4.0 - 0.25 / 0.5])
    assert out["ref_rejected_logps"] == [-5.0, -6.0]
    # the unshifted reference log-probs are cached for the next grid point with the same pairs
    assert trainer.reference_cache["train"].column_names == ["ref_chosen_logps", "ref_rejected_logps"]
    assert trainer.reference_cache["train"]["ref_chosen_logps"] == [-3.0, -4.0]
    # the next point (another margin) reuses them: trl computes nothing, the shift is the new margin's
    other = Dataset.from_dict({"prompt": ["a", "b"], "margin": [0.0, 2.0]})
    again = trainer._precompute_ref_logps(other, "train", 7)
    assert computed == [("train", 7)] and again["ref_chosen_logps"] == pytest.approx([-3.0, -4.0 + 4.0])
    # a cache of another length (other pairs) or of another split is not used; without a cache nothing is kept
    trainer._precompute_ref_logps(Dataset.from_dict({"prompt": ["a"], "margin": [0.0]}), "train", 1)
    trainer._precompute_ref_logps(Dataset.from_dict({"prompt": ["a", "b"], "margin": [0.0, 0.0]}), "eval", 2)
    assert computed == [("train", 7), ("train", 1), ("eval", 2)]
    assert len(trainer.reference_cache["train"]) == 1 and len(trainer.reference_cache["eval"]) == 2
    trainer.reference_cache = None
    trainer._precompute_ref_logps(other, "train", 3)
    assert computed[-1] == ("train", 3)
    with pytest.raises(MobenchError, match=r"^the train dataset of modpo has no 'margin' column$"):
        trainer._precompute_ref_logps(Dataset.from_dict({"prompt": ["a"]}), "train", 1)


def test_modpo_plan_and_margin_refusals():
    from mobench.api import TaskInstance
    from mobench.methods.modpo.trainer import modpo_plan

    pair = PreferencePair("Q", "a", "b")
    names = ["x", "y", "z"]

    class Obj(CharLength):
        def __init__(self, name):
            self.name = name

    task = TaskInstance("t", "tiny", "p", [Obj(n) for n in names], ["q"], {n: Normalisation(0.0, 1.0) for n in names},
                        (-1.0, -1.0, -1.0), pairs={"x": [pair], "y": [pair], "z": []})
    # k: the largest weight with pairs (z has none); margins from the other positive weights only
    assert modpo_plan(task, (0.3, 0.5, 0.2)) == (1, [0, 2])
    assert modpo_plan(task, (0.2, 0.0, 0.8)) == (0, [2])
    assert modpo_plan(task, (0.5, 0.5, 0.0)) == (0, [1])
    assert modpo_plan(task, (0.0, 1.0, 0.0)) == (1, [])
    with pytest.raises(MobenchError, match=r"^modpo needs preference pairs for an objective with positive weight; weights \[0.0, 0.0, 1.0\], pairs for \['x', 'y'\]$"):
        modpo_plan(task, (0.0, 0.0, 1.0))
    # margins: sum over j != k of w_j d_j, pair by pair
    assert weighted_margins({0: [1.0, -2.0], 2: [0.5, 4.0]}, (0.3, 0.5, 0.2), 1, 2) == pytest.approx([0.4, 0.2])
    with pytest.raises(MobenchError, match="^the trained objective k cannot also give a margin$"):
        weighted_margins({1: [1.0]}, (0.3, 0.7), 1, 1)
    with pytest.raises(MobenchError, match=r"^1 margin differences for 2 pairs$"):
        weighted_margins({0: [1.0]}, (0.3, 0.7), 1, 2)


def test_score_differences_hand_each_side_its_prompt():
    class PromptAndResponse(CharLength):
        name, direction = "pr", 1

        def score(self, prompts, responses):
            return [float(len(p) + len(r)) for p, r in zip(prompts, responses)]

    pairs = [PreferencePair("QQ", "abc", "a"), PreferencePair("Q", "a", "abcd")]
    # z = (len(prompt) + len(response) - 1) / 2: pair 1: (4 - 2) / 2 = 1; pair 2: (1 - 4) / 2 = -1.5
    assert score_differences(PromptAndResponse(), Normalisation(mean=1.0, std=2.0), pairs) == [1.0, -1.5]
