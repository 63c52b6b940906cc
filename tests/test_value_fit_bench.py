"""bench/value_fit.py: MAGE's value models at several training-rollout counts, measured on one common held-out set.

On a micro task (a saved micro policy, 14 pair prompts, the registered brevity and sentiment objectives): the
held-out rollouts' prompts are training prompts that no n trains on; V at each position equals V recomputed one
unpadded rollout at a time; every Spearman figure equals scipy's on the raw numbers (the length baseline from the
cached rollouts themselves); the first n's difference CI against itself is exactly zero; a second run rebuilds
nothing. A held-out set too small, a method without value models and too few prompts are one line and exit 2.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

HERE = Path(__file__).resolve().parent
MICRO = {"value.steps": 3, "value.batch_size": 2, "value.lora_r": 4, "value.learning_rate": 3e-2, "value.n_heldout": 2}

TASK = '''
import os
from mobench import hookimpl
from mobench.api import Normalisation, PreferencePair, TaskInstance
from mobench.toolkit import chat_prompts


def load(scale, context):
    policy = os.environ["MOBENCH_MICRO_POLICY"]
    pair_prompts = chat_prompts(policy, [[{"role": "user", "content": f"Describe thing {i}."}] for i in range(14)])
    pairs = [PreferencePair(p, "Short.", "A much longer and wordier answer.") for p in pair_prompts]
    chats = [[{"role": "user", "content": "Tell me about the sea."}]]
    return TaskInstance(
        name="micro-many", scale=scale, policy=policy,
        objectives=[context.objective("brevity", scale), context.objective("sentiment", scale)],
        prompts=chat_prompts(policy, chats), chats=chats, pairs={"brevity": pairs, "sentiment": pairs},
        normalisation={"brevity": Normalisation(4.0, 2.0), "sentiment": Normalisation(0.0, 0.5)},
        reference_point=(-1.0, -1.0), grid_points=3, generation={"max_new_tokens": 6, "batch_size": 4},
    )


@hookimpl
def register_tasks(register):
    register.task("micro-many", load, objectives=("brevity", "sentiment"), description="a micro task with 14 pair prompts")
'''


def _script():
    spec = importlib.util.spec_from_file_location("value_fit", HERE.parent / "bench" / "value_fit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def micro(tmp_path, smol_tokenizer, monkeypatch):
    from test_experts import save_micro_policy

    monkeypatch.setenv("MOBENCH_MICRO_POLICY", save_micro_policy(smol_tokenizer, tmp_path / "micro"))
    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "micro_many.py").write_text(TASK)
    return ["--plugins-dir", str(plugins), "--task", "micro-many", "--device", "cpu", "--resamples", "200"]


OPTIONS = [x for k, v in MICRO.items() for x in ("-o", f"{k}={v}")]


def test_fit_on_one_common_heldout_set_recomputed_exactly(micro, capsys):
    import torch

    from mobench.api import RunContext
    from mobench.artifacts import cache_root
    from mobench.calibration import attach
    from mobench.methods.mage import value as V
    from mobench.plugins import get_plugin_manager
    from mobench.training import load_policy_with_adapters, training_prompts

    bench = _script()
    bench.main([*micro, *OPTIONS, "--n-rollouts", "3,5", "--heldout", "5"])
    result = json.loads(capsys.readouterr().out)
    assert [r["n_rollouts"] for r in result["runs"]] == [3, 5] and result["heldout"] == 5

    registry = get_plugin_manager(micro[1]).registry
    context = RunContext(seed=0, device="cpu")
    context.registry = registry
    task = attach(registry.task("micro-many"), registry.task("micro-many").load("tiny", context))
    prompts = training_prompts(task, 5 + 2 + 5, 0, 1200)
    budget = V.ValueBudget(max_new_tokens=6, steps=3, batch_size=2, lora_r=4, learning_rate=3e-2, n_heldout=2)
    held = V.rollouts(task.policy, prompts[7:], budget, context)  # cached by the bench: the same rows
    assert len(held) == 5 and not {r["prompt"] for r in held} & set(prompts[:7])  # no n trains on the held-out prompts
    z = {o.name: [task.normalisation[o.name].apply(float(s), o.direction)
                  for s in o.score([r["prompt"] for r in held], [r["response"] for r in held])] for o in task.objectives}
    lengths = [len(r["response_ids"]) for r in held]

    for run in result["runs"]:
        n = run["n_rollouts"]
        paths = V.train_value_models(task.policy, task.objectives, task.normalisation, prompts[: n + 2],
                                     budget.replace({"n_rollouts": n}), context)
        model, tok = load_policy_with_adapters(task.policy, {f"value_{k}": str(v) for k, v in paths.items()}, "cpu")
        for o in task.objectives:
            got = run["objectives"][o.name]
            assert got["folder"] == paths[o.name].name  # the bench measured the very model MAGE would load
            model.set_adapter(f"value_{o.name}")
            w, b = V.load_head(paths[o.name])
            finals, every, zs = [], [], []
            for r, target in zip(held, z[o.name]):  # one rollout at a time, no padding
                p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
                ids = torch.tensor([p + list(r["response_ids"])])
                with torch.no_grad():
                    h = V.hidden_states(model, ids, torch.ones_like(ids)).last_hidden_state.float()
                v = (h[0] @ w.float().T).squeeze(-1) + b.float()
                finals.append(float(v[-1]))
                every += v[len(p) - 1 :].tolist()
                zs += [target] * (ids.shape[1] - len(p) + 1)
            assert len(set(finals)) > 1
            assert got["spearman_final"]["value"] == pytest.approx(spearmanr(finals, z[o.name]).statistic, abs=1e-6)
            assert got["spearman_prefixes"]["value"] == pytest.approx(spearmanr(every, zs).statistic, abs=1e-6)
            want_len = spearmanr(lengths, z[o.name]).statistic
            if np.isnan(want_len):
                assert np.isnan(got["length_baseline"]["value"])
            else:
                assert got["length_baseline"]["value"] == pytest.approx(want_len)
            assert got["own_heldout_fit"]["n"] == 2  # its own training record's held-out fit, kept beside
    # The paired difference of the second n against the first: the same resamples, so against itself it is 0.
    a = result["runs"][0]
    diff = result["runs"][1]["difference_vs_first"]
    for name in z:
        assert diff[name]["value"] == pytest.approx(result["runs"][1]["objectives"][name]["spearman_final"]["value"]
                                                    - a["objectives"][name]["spearman_final"]["value"])
    v = [[0.3, 1.0], [2.0], [0.1, -1.0], [0.7], [0.2, 3.0]]
    same = bench.paired_difference(v, v, [0.1, 0.4, 0.2, 0.9, 0.3], 200, 0)
    assert same["value"] == 0.0 and same["ci"] == [0.0, 0.0] and not same["separable"]
    # A resample whose statistic is undefined (a constant input) is left out of the interval and counted.
    partly = bench._interval(lambda idx: float("nan") if 0 in set(np.asarray(idx).tolist()) else 1.0, 5, 200, 0)
    assert partly["ci"] == [1.0, 1.0] and 0 < partly["undefined_resamples"] < 200 and np.isnan(partly["value"])

    # A second run finds every piece in the cache: nothing new is built.
    before = sorted(p.name for p in (cache_root() / V.VALUE_KIND).iterdir())
    bench.main([*micro, *OPTIONS, "--n-rollouts", "3,5", "--heldout", "5"])
    assert json.loads(capsys.readouterr().out)["runs"][0]["objectives"].keys() == set(z)
    assert sorted(p.name for p in (cache_root() / V.VALUE_KIND).iterdir()) == before


@pytest.mark.parametrize("extra, says", [
    (["--heldout", "2", *OPTIONS], "--heldout must be at least 3"),
    (["--n-rollouts", "40", *OPTIONS], "training prompts of at most"),
    (["--method", "rewarded-soups"], "has no value budget"),
])
def test_errors_are_one_line_and_exit_2(micro, capsys, extra, says):
    bench = _script()
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*micro, *extra])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and says in err, err
