"""Length-grouped DPO batches (DpoBudget.group_by_length): the order trl's DPOTrainer receives, on a micro model.

What trl receives is read from the trainer itself (``get_train_dataloader()``: its sampler and its collated
batches), so the tests hold for the experts and for MODPO, which build their trainers from the same config.
"""

from __future__ import annotations

import pytest
from test_experts import micro_budget, micro_task, real_pairs, save_micro_policy

from mobench.api import RunContext

N_PAIRS, BATCH, MAX_LENGTH = 32, 4, 64


@pytest.fixture(scope="module")
def cut_pairs(smol_tokenizer, data_dir):
    """32 real helpful pairs of varied length, prompts cut to fit MAX_LENGTH as the trainers cut them."""
    from mobench.training import truncate_prompts

    return truncate_prompts(real_pairs(data_dir, N_PAIRS)["helpful"], smol_tokenizer, MAX_LENGTH)


def _trainer(tokenizer, pairs, tmp_path, group_by_length=True, seed=0):
    from mobench.models import micro_causal_lm
    from mobench.training import DpoBudget, expert_trainer

    budget = DpoBudget(steps=N_PAIRS // BATCH, batch_size=BATCH, max_length=MAX_LENGTH, lora_r=4, n_pairs=N_PAIRS,
                       group_by_length=group_by_length)
    return expert_trainer(micro_causal_lm(tokenizer, seed=0), tokenizer, pairs, budget, str(tmp_path), seed, "cpu")


def _epoch(trainer):
    """One epoch of the batches trl trains on: (row lengths, padded width) per batch, and every row's tokens."""
    batches, rows = [], []
    for batch in trainer.get_train_dataloader():
        lengths = batch["attention_mask"].sum(1).tolist()
        batches.append((lengths, int(batch["input_ids"].shape[1])))
        rows += [tuple(ids[:n].tolist()) for ids, n in zip(batch["input_ids"], lengths)]
    return batches, rows


@pytest.fixture(scope="module")
def built(smol_tokenizer, cut_pairs, tmp_path_factory):
    """A grouped and a random-order trainer (seed 0), each with the epoch it draws right after it is built."""
    out = {}
    for name, grouped in (("grouped", True), ("random", False)):
        trainer = _trainer(smol_tokenizer, cut_pairs, tmp_path_factory.mktemp(name), group_by_length=grouped)
        out[name] = (trainer, *_epoch(trainer))
    return out


def test_pair_lengths_are_the_rows_trl_builds(smol_tokenizer, cut_pairs, built):
    from mobench.training import pair_lengths

    data = built["grouped"][0].train_dataset
    expected = [(min(MAX_LENGTH, len(p) + len(c)), min(MAX_LENGTH, len(p) + len(r)))
                for p, c, r in zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"])]
    assert pair_lengths(cut_pairs, smol_tokenizer, MAX_LENGTH) == expected
    assert data["length"] == [max(c, r) for c, r in expected]
    assert any(c != r for c, r in expected) and len(set(data["length"])) > 5  # varied lengths: grouping has work


def test_the_option_reaches_trl_as_its_sampler(built):
    from torch.utils.data import RandomSampler
    from transformers.trainer_pt_utils import LengthGroupedSampler

    grouped, plain = built["grouped"][0], built["random"][0]
    sampler = grouped.get_train_dataloader().batch_sampler.sampler
    assert isinstance(sampler, LengthGroupedSampler) and sampler.batch_size == BATCH
    assert sampler.lengths == grouped.train_dataset["length"]
    assert grouped.args.train_sampling_strategy == "group_by_length"
    sampler = plain.get_train_dataloader().batch_sampler.sampler
    assert isinstance(sampler, RandomSampler) and not isinstance(sampler, LengthGroupedSampler)
    assert plain.args.remove_unused_columns  # the random order is trl's unchanged set-up


def test_grouped_batches_hold_every_pair_once_and_pad_less(built):
    _, grouped, grouped_rows = built["grouped"]
    _, plain, plain_rows = built["random"]
    # A permutation of the pairs: the same rows (chosen and rejected, tokens included), none lost or repeated.
    assert len(grouped) == len(plain) == N_PAIRS // BATCH
    assert sorted(grouped_rows) == sorted(plain_rows) and len(grouped_rows) == 2 * N_PAIRS
    assert len(set(grouped_rows)) > N_PAIRS  # the rows are told apart (not a few repeated ones)

    def padded(batches):
        return sum(len(lengths) * width for lengths, width in batches)

    def spread(batches):  # per batch, the longest pair minus the shortest pair (a pair's width: its longer row)
        return sum(max(lengths) - min(max(c, r) for c, r in zip(lengths[:BATCH], lengths[BATCH:])) for lengths, _ in batches)

    assert spread(grouped) < spread(plain)
    assert padded(grouped) < padded(plain)


def test_grouped_order_is_fixed_by_the_seed(smol_tokenizer, cut_pairs, built, tmp_path):
    """Trainers built with the same seed hand trl the same batches; another seed, another order."""
    again, _ = _epoch(_trainer(smol_tokenizer, cut_pairs, tmp_path / "a", seed=0))
    other, _ = _epoch(_trainer(smol_tokenizer, cut_pairs, tmp_path / "b", seed=1))
    assert built["grouped"][1] == again
    assert again != other


def test_expert_keys_hold_the_option(data_dir, tmp_path, smol_tokenizer):
    from mobench.training import DPO_RECIPE, DpoBudget, expert_key

    # random order is the default (chosen on summarize's validation prompts); grouping is an option
    assert not DpoBudget.preset("tiny").group_by_length and not DpoBudget.preset("paper").group_by_length
    policy = save_micro_policy(smol_tokenizer, tmp_path / "policy")
    pairs = micro_task(data_dir, policy).pairs["helpful"]
    ctx = RunContext(seed=0, device="cpu")
    on = expert_key(policy, "helpful", pairs, micro_budget().replace({"group_by_length": True}), ctx)
    off = expert_key(policy, "helpful", pairs, micro_budget(), ctx)
    assert on["hyper"]["group_by_length"] is True and off["hyper"]["group_by_length"] is False
    assert {k: v for k, v in on["hyper"].items() if k != "group_by_length"} == {k: v for k, v in off["hyper"].items() if k != "group_by_length"}
    assert on["recipe"] == off["recipe"] == DPO_RECIPE == 3


def test_a_micro_expert_trains_end_to_end_on_grouped_batches(tmp_path, data_dir, smol_tokenizer, monkeypatch):
    import transformers.trainer as hf_trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from mobench.training import dpo

    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
    drawn = []

    class Recording(LengthGroupedSampler):
        def __iter__(self):
            order = list(super().__iter__())
            drawn.append((order, list(self.lengths)))
            return iter(order)

    monkeypatch.setattr(hf_trainer, "LengthGroupedSampler", Recording)
    task = micro_task(data_dir, save_micro_policy(smol_tokenizer, tmp_path / "policy"), n_pairs=16)
    budget = micro_budget(n_pairs=16, steps=4, batch_size=4).replace({"group_by_length": True})
    assert budget.group_by_length
    path = dpo.train_dpo_expert(task.policy, "helpful", task.pairs["helpful"], budget, RunContext(seed=0, device="cpu"))
    record = dpo.expert_record(path)
    assert record["steps"] == 4 and (path / "adapter_model.safetensors").exists()
    assert len(drawn) == 1  # one epoch: 4 steps x 4 pairs
    order, lengths = drawn[0]
    assert sorted(order) == list(range(16))
    used = dpo.truncate_prompts(dpo.expert_pairs("helpful", task.pairs["helpful"], budget), smol_tokenizer, budget.max_length)
    assert lengths == [max(c, r) for c, r in dpo.pair_lengths(used, smol_tokenizer, budget.max_length)]


def test_modpo_trains_on_grouped_batches_with_its_pairs_sorted_for_the_reference_pass(smol_tokenizer, data_dir, tmp_path, monkeypatch):
    """MODPO's trainer gets the length-grouped sampler and its pairs sorted by width: trl's reference pass runs in that order."""
    from test_modpo import CharLength
    from transformers.trainer_pt_utils import LengthGroupedSampler

    import mobench.training as training
    from mobench.api import Normalisation, TaskInstance
    from mobench.methods.modpo.trainer import MarginSource, _train
    from mobench.training import DpoBudget

    built = []
    monkeypatch.setattr(training, "train_and_save", lambda trainer, out, device, record: built.append(trainer))  # no training
    policy = save_micro_policy(smol_tokenizer, tmp_path / "policy")
    pairs = real_pairs(data_dir, 12)["helpful"]
    task = TaskInstance(name="micro", scale="tiny", policy=policy, objectives=[CharLength()], prompts=["x"],
                        normalisation={"brevity": Normalisation(200.0, 100.0)}, reference_point=(-3.0,), pairs={"brevity": pairs})
    budget = DpoBudget(steps=3, batch_size=4, max_length=MAX_LENGTH, lora_r=4, n_pairs=12, group_by_length=True)
    context = RunContext(seed=0, device="cpu")
    _train(task, (1.0,), MarginSource(task, context, "scores", budget), budget, context, tmp_path / "out")
    (trainer,) = built
    lengths = list(trainer.train_dataset["length"])
    assert lengths == sorted(lengths) and len(set(lengths)) > 3 and len(lengths) == 12
    assert "ref_chosen_logps" in trainer.train_dataset.column_names  # the reference pass ran over this order
    assert isinstance(trainer.get_train_dataloader().batch_sampler.sampler, LengthGroupedSampler)
