"""Per-objective LoRA DPO experts: trained through trl, cached, and reused without retraining."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from mobench.api import PreferencePair, RunContext, TaskInstance
from helpers import TEST_DEVICE, TEST_DTYPE

SPLIT = "\n\nAssistant:"


class LengthObjective:
    """A stand-in objective (response length in words) so a test task is complete."""

    direction = 1

    def __init__(self, name: str):
        self.name = name

    def score(self, prompts, responses):
        return [float(len(r.split())) for r in responses]

    def provenance(self):
        return {"kind": "test-length"}


def real_pairs(data_dir: Path, n: int, max_chars: int = 240) -> dict[str, list[PreferencePair]]:
    """Short real pairs: HH-RLHF harmless-base (split at the last assistant turn) and DOVE helpful pairs."""
    harmless = []
    with gzip.open(data_dir / "hh-rlhf/harmless-base/test.jsonl.gz", "rt") as fh:
        for line in fh:
            row = json.loads(line)
            cut_c, cut_r = row["chosen"].rfind(SPLIT), row["rejected"].rfind(SPLIT)
            prompt = row["chosen"][: cut_c + len(SPLIT)]
            if prompt != row["rejected"][: cut_r + len(SPLIT)] or len(prompt) > max_chars:
                continue
            harmless.append(PreferencePair(prompt[-max_chars:], row["chosen"][cut_c + len(SPLIT) :][:max_chars], row["rejected"][cut_r + len(SPLIT) :][:max_chars]))
            if len(harmless) == n:
                break
    helpful = []
    with open(data_dir / "dove/anthropic_helpful/val_conditional_pref.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            prompt = f"\n\nHuman: {row['i_chosen']}{SPLIT}"
            helpful.append(PreferencePair(prompt[-max_chars:], " " + row["r_chosen"][:max_chars], " " + row["r_reject"][:max_chars]))
            if len(helpful) == n:
                break
    return {"harmless": harmless, "helpful": helpful}


def save_micro_policy(tokenizer, folder: Path, seed: int = 0) -> str:
    """Save a micro Llama plus the tokenizer as a local policy folder (what task.policy may name)."""
    from mobench.models import micro_causal_lm

    if not (folder / "config.json").exists():
        model = micro_causal_lm(tokenizer, seed=seed)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def micro_budget(n_pairs: int = 8, steps: int = 2, lr: float = 5e-3, batch_size: int = 2):
    """A tiny DPO budget for the micro policy."""
    from mobench.training import DpoBudget

    return DpoBudget(steps=steps, batch_size=batch_size, learning_rate=lr, max_length=64, lora_r=4, n_pairs=n_pairs)


def micro_task(data_dir: Path, policy: str, n_pairs: int = 8) -> TaskInstance:
    """A two-objective task over real pairs with a micro policy (its DPO budget: :func:`micro_budget`)."""
    pairs = real_pairs(data_dir, n_pairs)
    return TaskInstance(
        name="micro-hh",
        scale="tiny",
        policy=policy,
        objectives=[LengthObjective("harmless"), LengthObjective("helpful")],
        prompts=[p.prompt for p in pairs["harmless"][:4]],
        normalisation={},
        reference_point=(-3.0, -3.0),
        pairs=pairs,
        generation={"max_new_tokens": 8, "do_sample": False, "batch_size": 4},
    )


class Recorder:
    def __init__(self):
        self.steps = []

    def step(self, description, total=None):
        rec = {"description": description, "total": total, "advanced": 0, "closed": False}
        self.steps.append(rec)

        class _Step:
            def advance(self, n=1):
                rec["advanced"] += n

            def close(self):
                rec["closed"] = True

        return _Step()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_expert_trains_once_and_is_reused(cache, tmp_path, data_dir, smol_tokenizer, monkeypatch):
    from mobench.training import dpo

    task = micro_task(data_dir, save_micro_policy(smol_tokenizer, tmp_path / "policy"))
    progress = Recorder()
    ctx = RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE, progress=progress)
    path = dpo.train_dpo_expert(task.policy, "harmless", task.pairs["harmless"], micro_budget(), ctx)
    assert (path / "adapter_config.json").exists() and (path / "adapter_model.safetensors").exists()
    record = dpo.expert_record(path)
    assert record["steps"] == 2 and record["objective"] == "harmless"
    # progress was visible: one step per optimiser step, then closed
    assert progress.steps == [{"description": "DPO expert harmless", "total": 2, "advanced": 2, "closed": True}]

    # A second call (a second method or run on the same task) must train nothing.
    def no_training(*args, **kwargs):
        raise AssertionError("expert was retrained")

    # trl is patched, not mobench's _train: the cache key holds the code version of mobench's build code,
    # so replacing _train would (rightly) be a different artifact
    import trl

    monkeypatch.setattr(trl, "DPOTrainer", no_training)
    again = dpo.load_experts(task.policy, micro_task(data_dir, task.policy).pairs, micro_budget(), RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE), ["harmless"])
    assert again == {"harmless": path}


def test_expert_key_tracks_what_determines_it(data_dir, tmp_path, smol_tokenizer):
    from mobench.training import expert_key

    policy = save_micro_policy(smol_tokenizer, tmp_path / "policy")

    def key(objective="harmless", seed=0, policy=policy, n_pairs=8, **budget):
        task = micro_task(data_dir, policy, n_pairs=n_pairs)
        return expert_key(policy, objective, task.pairs[objective], micro_budget(n_pairs=n_pairs, **budget), RunContext(seed=seed, device=TEST_DEVICE, dtype=TEST_DTYPE))

    base = key()
    assert base == key()
    assert base != key("helpful")
    assert base != key(seed=1)
    assert base != key(steps=3)
    assert base != key(n_pairs=6)
    other = save_micro_policy(smol_tokenizer, tmp_path / "policy2", seed=1)
    assert base != key(policy=other)
    assert set(base["versions"]) == {"torch", "transformers", "trl", "peft", "datasets"}


def test_dtype_reaches_training_and_its_key(cache, tmp_path, data_dir, smol_tokenizer):
    """--dtype bfloat16: the expert's base loads in bf16, its key says so, and the fp32 expert is another artifact."""
    import torch

    from mobench.training import dpo, expert_key, load_for_training

    policy = save_micro_policy(smol_tokenizer, tmp_path / "policy")
    task = micro_task(data_dir, policy)
    bf16, fp32, auto = (RunContext(seed=0, device="cpu", dtype=d) for d in ("bfloat16", "float32", None))
    model, _, _, _ = load_for_training(policy, bf16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model, _, _, _ = load_for_training(policy, auto)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the CPU's default
    keys = {name: expert_key(policy, "harmless", task.pairs["harmless"], micro_budget(), c) for name, c in
            (("bf16", bf16), ("fp32", fp32), ("auto", auto))}
    assert keys["bf16"]["precision"] == "bfloat16" and keys["fp32"]["precision"] == keys["auto"]["precision"] == "float32"
    assert keys["fp32"] == keys["auto"] and keys["bf16"] != keys["fp32"]
    path = dpo.train_dpo_expert(policy, "harmless", task.pairs["harmless"], micro_budget(), bf16)
    assert dpo.expert_record(path)["steps"] == 2 and (path / "adapter_model.safetensors").exists()
    assert dpo.train_dpo_expert(policy, "harmless", task.pairs["harmless"], micro_budget(), fp32) != path


def test_missing_pairs_is_a_clear_error(data_dir, tmp_path, smol_tokenizer):
    from mobench.api import MobenchError
    from mobench.training import load_experts, train_dpo_expert

    task = micro_task(data_dir, save_micro_policy(smol_tokenizer, tmp_path / "policy"))
    with pytest.raises(MobenchError, match="no preference pairs for objective 'honest'"):
        train_dpo_expert(task.policy, "honest", task.pairs.get("honest", []), micro_budget(), RunContext(device=TEST_DEVICE, dtype=TEST_DTYPE))
    with pytest.raises(MobenchError, match=r"no preference pairs for objective 'honest' \(pairs for: harmless, helpful\)"):
        load_experts(task.policy, task.pairs, micro_budget(), RunContext(device=TEST_DEVICE, dtype=TEST_DTYPE), ["honest"])


def test_completion_only_scoring_trains_the_same_expert(tmp_path, data_dir, smol_tokenizer, monkeypatch):
    """The CPU speed patch (trl scores completion tokens only) changes no loss and no weight."""
    import contextlib

    import torch
    import trl.trainer.utils as trl_utils
    from safetensors.torch import load_file

    from mobench.training import dpo

    # two steps: the second step's loss and margins come from the first step's update (step 1 is log 2)
    task = micro_task(data_dir, save_micro_policy(smol_tokenizer, tmp_path / "policy"))
    budget = micro_budget(steps=2, lr=5e-2)
    original = trl_utils._use_triton
    (tmp_path / "fast").mkdir()
    dpo._train(task.policy, "helpful", task.pairs["helpful"], budget, RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE), tmp_path / "fast")
    assert trl_utils._use_triton is original  # restored after training
    monkeypatch.setattr(dpo, "completion_positions_only", contextlib.nullcontext)
    (tmp_path / "plain").mkdir()
    dpo._train(task.policy, "helpful", task.pairs["helpful"], budget, RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE), tmp_path / "plain")
    fast, plain = (dpo.expert_record(tmp_path / d) for d in ("fast", "plain"))
    assert fast["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-5)
    assert len(fast["log"]) == 2 and fast["log"][1]["loss"] != pytest.approx(0.6931, abs=1e-3)
    for f, p in zip(fast["log"], plain["log"]):
        assert (f["loss"], f["rewards/margins"]) == pytest.approx((p["loss"], p["rewards/margins"]), rel=1e-4, abs=1e-6)
    a, b = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("fast", "plain"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_long_prompts_keep_their_end_and_leave_room_for_completions(smol_tokenizer):
    from mobench.training.common import truncate_prompts

    long_prompt = " ".join(f"word{i}" for i in range(400)) + " TL;DR:"
    pair = PreferencePair(long_prompt, " a short summary", " another, longer, summary of the post")
    (cut,) = truncate_prompts([pair], smol_tokenizer, max_length=64)
    longest = len(smol_tokenizer(pair.rejected, add_special_tokens=False)["input_ids"])
    assert cut.prompt.endswith(" TL;DR:") and long_prompt.endswith(cut.prompt.lstrip())
    assert len(smol_tokenizer(cut.prompt, add_special_tokens=False)["input_ids"]) + longest + 1 <= 64 + 1
    short = PreferencePair("Hi there", " yes", " no")
    assert truncate_prompts([short], smol_tokenizer, max_length=64) == [short]


def test_budget_overrides_make_other_experts(data_dir, tmp_path, smol_tokenizer):
    from mobench.api import MobenchError
    from mobench.methods.rewarded_soups import RewardedSoups
    from mobench.training import expert_key

    task = micro_task(data_dir, save_micro_policy(smol_tokenizer, tmp_path / "policy"))
    options = RewardedSoups.Options(experts=micro_budget())
    assert options.replace({}) == options
    fewer = options.replace({"steps": "1"}, parse=True)  # CLI options arrive as text, converted to the field's type
    assert fewer.experts.steps == 1 and options.experts.steps == 2  # the options themselves are untouched
    ctx = RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE)
    assert expert_key(task.policy, "harmless", task.pairs["harmless"], fewer.experts, ctx)["hyper"]["steps"] == 1
    assert expert_key(task.policy, "harmless", task.pairs["harmless"], fewer.experts, ctx) != expert_key(
        task.policy, "harmless", task.pairs["harmless"], options.experts, ctx)
    with pytest.raises(MobenchError, match="has no option 'epochs'"):
        options.replace({"epochs": 3})


def test_options_reach_the_trainer_budget():
    """-o KEY=VALUE reaches the trainers' budgets: a unique leaf name, or a dotted path where it is ambiguous."""
    from mobench.api import MobenchError
    from mobench.methods.logit_ensemble import LogitEnsemble
    from mobench.methods.modpo import Modpo
    from mobench.methods.morlhf import Morlhf
    from mobench.methods.rewarded_soups import RewardedSoups
    from mobench.training import DpoBudget, RlBudget

    assert RewardedSoups.Options.preset("tiny").replace({"steps": "8"}, parse=True).experts.steps == 8
    assert LogitEnsemble.Options.preset("tiny").replace({"experts.lora_r": "4"}, parse=True).experts.lora_r == 4
    assert Morlhf.Options.preset("tiny").replace({"steps": "12"}, parse=True).train.steps == 12
    with pytest.raises(MobenchError, match=r"'steps' is ambiguous.*train\.steps.*experts\.steps"):
        Modpo.Options.preset("tiny").replace({"steps": "12"}, parse=True)
    both = Modpo.Options.preset("tiny").replace({"train.steps": "12", "experts.steps": "3"}, parse=True)
    assert (both.train.steps, both.experts.steps) == (12, 3)
    # the tiny presets are the budgets the tasks used to carry; paper presets differ
    assert RewardedSoups.Options.preset("tiny").experts == DpoBudget.preset("tiny") == DpoBudget()
    assert Morlhf.Options.preset("tiny").train == RlBudget.preset("tiny")
    assert Modpo.Options.preset("paper").train.steps == 1000 and Morlhf.Options.preset("paper").train.steps == 500
    # every option is documented
    for cls in (RewardedSoups, LogitEnsemble, Morlhf, Modpo):
        assert all(row["doc"] for row in cls.Options.describe("tiny")), cls
