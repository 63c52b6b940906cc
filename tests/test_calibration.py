"""The calibration rule on hand examples: normalisation and reference point from data and reference quantiles."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mobench import calibration
from mobench.api import PreferencePair, TaskInstance, TaskSpec
from mobench.scorers import ScoredObjective, heldout_responses, length_baseline

# A normal distribution's 5-95% range is 2 * 1.6448536 standard deviations.
UNITS = 2 * 1.6448536269514722


def test_hand_example_gives_the_hand_computed_box():
    data = [float(v) for v in range(101)]  # linear quantiles: q05 = 5, median = 50, q95 = 95
    pools = {
        # direction +1: the reference policy's 5-95% range [41, 59] lies inside the data's [5, 95]
        "quality": {"data": data, "reference": [40.0, 50.0, 60.0]},
        # direction -1 (a word count): higher is worse, so the worse end is the 95th percentile (95 words)
        "brevity": {"data": data, "reference": [10.0, 20.0, 30.0]},
    }
    stats, ref = calibration.box(pools, {"quality": 1, "brevity": -1}, {"quality": 50.0, "brevity": 20.0})
    std = 90.0 / UNITS  # envelope [5, 95] on both objectives
    assert stats["quality"]["mean"] == 50.0 and stats["quality"]["std"] == pytest.approx(std)
    assert stats["brevity"]["mean"] == 20.0 and stats["brevity"]["std"] == pytest.approx(std)
    # quality: z(5) = (5 - 50) / std; brevity: z(95 words) = -(95 - 20) / std; then MARGIN_Z below.
    assert ref[0] == pytest.approx((5 - 50) / std - calibration.MARGIN_Z)
    assert ref[1] == pytest.approx(-(95 - 20) / std - calibration.MARGIN_Z)
    assert calibration.MARGIN_Z == 2.0 and ref[0] == pytest.approx(-1.6448536 - 2.0)
    # the recorded quantiles are raw (not direction-applied)
    assert stats["brevity"]["sources"]["reference"] == {"n": 3, "q05": pytest.approx(11.0), "median": 20.0, "q95": pytest.approx(29.0)}
    assert stats["brevity"]["sources"]["data"]["q05"] == pytest.approx(5.0)


def test_the_reference_point_lies_below_every_source_quantile_and_brevity_rewards_fewer_words():
    pools = {
        "helpful": {"data": [1.0, 2.0, 3.0, 4.0, 9.0, -3.0], "reference": [2.0, 2.5, 3.0]},
        "words": {"data": [5.0, 12.0, 30.0, 80.0, 7.0], "reference": [40.0, 44.0, 48.0, 52.0]},
    }
    directions = {"helpful": 1, "words": -1}
    centres = {"helpful": 2.5, "words": 46.0}
    stats, ref = calibration.box(pools, directions, centres)
    import numpy as np

    for (name, sources), r in zip(pools.items(), ref):
        d, mean, std = directions[name], stats[name]["mean"], stats[name]["std"]
        z = lambda x: d * (x - mean) / std
        for values in sources.values():
            for q in np.quantile(values, [0.05, 0.5, 0.95]):
                assert z(q) > r  # every source's 5%, median and 95% quantile is inside the box
        assert r == pytest.approx(min(stats[name]["range_z"]) - calibration.MARGIN_Z)
    # direction -1: fewer words, higher z; the reference policy's mean sits at z = 0
    w = stats["words"]
    assert -(10 - w["mean"]) / w["std"] > -(60 - w["mean"]) / w["std"] and w["mean"] == 46.0
    # the box is wider than the reference policy's own spread when the data is wider
    assert w["std"] > float(np.std(pools["words"]["reference"]))


def test_the_wider_source_sets_the_scale_either_way():
    narrow, wide = [float(v) for v in range(40, 61)], [float(v) for v in range(0, 101)]
    a, _ = calibration.box({"o": {"data": wide, "reference": narrow}}, {"o": 1}, {"o": 50.0})
    b, _ = calibration.box({"o": {"data": narrow, "reference": wide}}, {"o": 1}, {"o": 50.0})
    assert a["o"]["std"] == pytest.approx(b["o"]["std"]) == pytest.approx(90.0 / UNITS)


def test_constant_scores_and_bad_directions_are_refused():
    with pytest.raises(calibration.MobenchError, match="same score"):
        calibration.box({"o": {"data": [1.0] * 10, "reference": [1.0] * 3}}, {"o": 1}, {"o": 1.0})
    with pytest.raises(calibration.MobenchError, match="direction"):
        calibration.box({"o": {"data": [1.0, 2.0], "reference": [1.0]}}, {"o": 0}, {"o": 1.0})


def _instance(objectives, pairs):
    return TaskInstance(name="t", scale="tiny", policy="p", objectives=objectives,
                        prompts=[f"prompt {i}" for i in range(8)], pairs=pairs)


def test_data_responses_leave_out_what_a_scorer_trained_on_and_repeat_nothing():
    pairs = [PreferencePair(f"q{i}", f"good {i}", f"bad {i}") for i in range(10)]
    seen = frozenset({"good 0", "bad 0", "good 1"})
    trained = ScoredObjective("a", 1, lambda p, r: [0.0] * len(r), trained_on=seen)
    other = ScoredObjective("b", -1, lambda p, r: [0.0] * len(r))
    inst = _instance([trained, other], {"a": pairs, "b": pairs[:4]})  # b's pairs repeat a's
    out = calibration.data_responses(inst)
    assert len(out) == len(set(out)) == 17  # 20 responses, 3 trained on
    assert not {r for _, r in out} & seen and ("q1", "bad 1") in out
    capped = calibration.data_responses(inst, limit=5)
    left_for_b = {(p.prompt, r) for p in pairs[:4] for r in (p.chosen, p.rejected) if r not in seen} - set(capped[:5])
    assert len(capped) == 5 + min(5, len(left_for_b)) and set(capped[5:]) <= left_for_b
    assert calibration.data_responses(inst, limit=5) == capped  # a seeded order


def test_calibrate_records_the_rule_and_attach_reads_it_back(tmp_path, monkeypatch):
    ref_responses = ["one two three", "one two three four five", "a b", "x y z w", "p q r s t u", "m", "n o", "k l m n"]
    monkeypatch.setattr(calibration, "reference_responses", lambda instance, device=None, seed=0, dtype=None: ref_responses)
    words = ScoredObjective("words", -1, lambda p, r: [float(len(x.split())) for x in r])
    chars = ScoredObjective("chars", 1, lambda p, r: [float(len(x)) for x in r])
    pairs = [PreferencePair(f"q{i}", "w " * (i + 1), "v " * (2 * i + 3)) for i in range(30)]
    inst = _instance([chars, words], {"words": pairs})
    record = calibration.calibrate(inst)
    data = [r for _, r in calibration.data_responses(inst)]
    cut = calibration.prefixes(ref_responses)
    assert len(cut) == 3 * 8 and cut[5] == "m" and cut[4] == "p q" and cut[8 + 4] == "p q r"  # 1/4, 1/2 of 6 words
    sources = {"data": data, "reference": ref_responses, "prefixes": cut}
    stats, ref = calibration.box(
        {"chars": {k: [float(len(x)) for x in v] for k, v in sources.items()},
         "words": {k: [float(len(x.split())) for x in v] for k, v in sources.items()}},
        {"chars": 1, "words": -1},
        {"chars": sum(map(len, ref_responses)) / 8, "words": sum(len(x.split()) for x in ref_responses) / 8})
    assert record["reference_point"] == pytest.approx(ref) and record["objective_names"] == ["chars", "words"]
    assert record["objectives"]["words"]["std"] == pytest.approx(stats["words"]["std"])
    assert record["data_responses"]["n"] == 60 and record["rule"] == calibration.RULE
    # The word count is perfectly rank-correlated with words; the record says so for both sources.
    assert record["objectives"]["words"]["spearman_with_words"] == {"reference": pytest.approx(1.0), "data": pytest.approx(1.0)}
    path = calibration.write(tmp_path / "t.json", "t", "tiny", json.loads(json.dumps(record)))
    spec = TaskSpec(name="t", load=lambda scale, ctx: inst, objectives=("chars", "words"), calibration=path)
    attached = calibration.attach(spec, inst)
    assert attached.reference_point == tuple(pytest.approx(r) for r in ref)
    assert attached.normalisation["words"].apply(2.0, -1) > attached.normalisation["words"].apply(9.0, -1)
    assert attached.provenance["objective_length_spearman"]["words"] == pytest.approx(1.0)


def test_length_baseline_is_decided_on_training_pairs_and_scored_on_held_out_ones():
    # Longer is chosen in every pair: "longer wins" is right on all held-out pairs but the tied ones (half).
    pairs = [("c", "a b c d", "a b") for _ in range(30)] + [("c", "a b", "c d") for _ in range(10)]
    base = length_baseline(pairs, seed=0)
    held, _ = heldout_responses(pairs, seed=0)  # (trained_on, held_out) texts
    assert base.rule == "longer wins" and base.n_heldout == 8
    from mobench.scorers import heldout_split

    h, _ = heldout_split(len(pairs), seed=0)
    expected = sum(1.0 if i < 30 else 0.5 for i in h) / len(h)
    assert base.heldout_accuracy == pytest.approx(expected)
    flipped = length_baseline([(c, r, k) for c, k, r in pairs[:30]] + pairs[30:], seed=0)
    assert flipped.rule == "shorter wins" and flipped.heldout_accuracy == pytest.approx(expected)
