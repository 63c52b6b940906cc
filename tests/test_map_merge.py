"""MAP and merge-lite: exact grouped soups, the quadratic surrogate, the library, the router, cached compiles, CLI runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TEST_DEVICE, TEST_DTYPE, mobench
from mobench.api import MobenchError, Preference, RunContext
from test_experts import micro_budget, micro_task, save_micro_policy
from test_merging import two_adapters

ADAPTERS = ["harmless", "helpful"]


# -- the model-free half ------------------------------------------------------------------------------

def test_the_surrogate_is_exact_on_a_quadratic():
    from mobench.methods.mapmerge.front import QuadraticSurrogate, latin_hypercube, n_quadratic_params, quadratic_features

    rng = np.random.default_rng(0)
    d, m = 4, 3
    truth = rng.normal(size=(n_quadratic_params(d), m))
    X = latin_hypercube(2 * n_quadratic_params(d), d, -1.0, 2.0, seed=0)
    fit = QuadraticSurrogate.fit(X, quadratic_features(X) @ truth)
    np.testing.assert_allclose(fit.params, truth, atol=1e-9)
    fresh = rng.uniform(-1, 2, size=(50, d))
    np.testing.assert_allclose(fit.predict(fresh), quadratic_features(fresh) @ truth, atol=1e-9)
    assert fit.r2(X, quadratic_features(X) @ truth) == pytest.approx([1.0] * m)
    # the features are the quadratic's monomials: x0^2, x0 x1, x1^2, x0, x1, 1 for d = 2
    np.testing.assert_array_equal(quadratic_features(np.array([[2.0, 3.0]])), [[4.0, 6.0, 9.0, 2.0, 3.0, 1.0]])


def test_the_surrogate_front_is_non_dominated_and_finds_the_trade_off():
    from mobench.methods.mapmerge.front import QuadraticSurrogate, non_dominated, quadratic_features, search_front

    # f1 = -(x0 - 1)^2 - x1^2 (best at (1, 0)), f2 = -x0^2 - (x1 - 1)^2 (best at (0, 1)): the front is the segment
    X = np.random.default_rng(1).uniform(0, 1, size=(20, 2))
    F = np.stack([-(X[:, 0] - 1) ** 2 - X[:, 1] ** 2, -X[:, 0] ** 2 - (X[:, 1] - 1) ** 2], axis=1)
    fit = QuadraticSurrogate.fit(X, F)
    Xp, Fp = search_front(fit, 2, 0.0, 1.0, population=40, generations=60, seed=0)
    assert len(non_dominated(Fp)) == len(Fp) > 5
    # close to the true front f(t, 1 - t): no point is beaten on both objectives by more than 0.05, and it spans it
    t = np.linspace(0, 1, 1001)[:, None]
    true = np.hstack([-2 * (1 - t) ** 2, -2 * t ** 2])
    slack = np.array([np.minimum(true[:, 0] - p[0], true[:, 1] - p[1]).max() for p in Fp])
    assert slack.max() < 0.05 and Fp[:, 0].max() > -0.05 and Fp[:, 1].max() > -0.05
    np.testing.assert_allclose(Fp, fit.predict(Xp), atol=1e-12)


def test_non_dominated_keeps_exactly_the_undominated_rows_once():
    from mobench.methods.mapmerge.front import non_dominated

    F = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.4, 0.4], [1.0, 0.0], [0.2, 0.9]])
    assert non_dominated(F).tolist() == [0, 1, 2, 5]


def _front(n: int, seed: int) -> np.ndarray:
    """n mutually non-dominated points of a random convex-and-concave 2-objective front, unordered."""
    rng = np.random.default_rng(seed)
    f1 = np.sort(rng.uniform(-2, 3, size=n))
    f2 = np.cumsum(rng.uniform(0.01, 1.0, size=n))[::-1] * rng.uniform(0.5, 2)
    return np.stack([f1, f2], axis=1)[rng.permutation(n)]


@pytest.mark.parametrize("seed", range(4))
def test_the_routed_entrys_objective_never_falls_as_its_weight_rises(seed):
    from mobench.methods.mapmerge.front import non_dominated, route

    F = _front(7, seed)
    assert len(non_dominated(F)) == len(F)
    for interpolate in (False, True):
        got = []
        for w1 in np.linspace(0, 1, 201):
            picks = route((w1, 1 - w1), F, interpolate)
            assert sum(s for _, s in picks) == pytest.approx(1.0) and len(picks) <= (2 if interpolate else 1)
            got.append(sum(s * F[j] for j, s in picks))  # a blend's predicted value: the blend of the entries'
        got = np.array(got)
        assert (np.diff(got[:, 0]) >= -1e-12).all() and (np.diff(got[:, 1]) <= 1e-12).all()
        assert got[0, 1] == F[:, 1].max() and got[-1, 0] == F[:, 0].max()  # the corners are the extremes
    # interpolation makes it continuous (no jump larger than a small step), argmax routing is a staircase
    smooth = np.array([sum(s * F[j] for j, s in route((w, 1 - w), F, True)) for w in np.linspace(0, 1, 2001)])
    assert np.abs(np.diff(smooth, axis=0)).max() < 0.05 * np.ptp(F, axis=0).max()


def test_argmax_routing_is_monotone_along_a_ray_with_three_objectives():
    from mobench.methods.mapmerge.front import non_dominated, route

    rng = np.random.default_rng(3)
    P = rng.dirichlet([1, 1, 1], size=200) ** 0.5
    F = P[non_dominated(P)]
    for start in rng.dirichlet([1, 1, 1], size=10):
        for i in range(3):
            values = [F[route((1 - t) * start + t * np.eye(3)[i], F, False)[0][0], i] for t in np.linspace(0, 1, 50)]
            assert (np.diff(values) >= 0).all()


def test_initial_design_has_experts_uniform_recombinations_and_a_latin_hypercube():
    from mobench.methods.mapmerge import initial_design
    from mobench.methods.mapmerge.front import n_quadratic_params

    X, source = initial_design(groups=2, m=2, low=0.0, high=1.0, samples=None, recombinations=16, seed=0)
    assert source[:5] == ["expert 0", "expert 1", "uniform", "recombination 0,1", "recombination 1,0"]
    np.testing.assert_array_equal(X[:5], [[1, 0, 1, 0], [0, 1, 0, 1], [0.5] * 4, [1, 0, 0, 1], [0, 1, 1, 0]])
    assert len(X) == 5 + n_quadratic_params(4) and ((X >= 0) & (X <= 1)).all()
    X, source = initial_design(groups=4, m=2, low=-0.5, high=1.5, samples=3, recombinations=15, seed=0)
    assert "uniform" in source and not any(s.startswith("recombination") for s in source)  # 16 > 15
    assert len(X) == 3 + 3 and X[3:].min() >= -0.5 and X[3:].max() <= 1.5


# -- the grouped soup ---------------------------------------------------------------------------------

def test_groups_at_w_are_the_plain_soup_bit_for_bit_and_at_e_i_the_expert(micro_lm):
    from mobench.merging import lora_deltas, merge_lora_adapters
    from mobench.methods.mapmerge.soup import GroupedSoup

    model = two_adapters(micro_lm[0])
    soup = GroupedSoup(model, ADAPTERS, bands=2)
    assert soup.groups == ["attn.0", "attn.1", "mlp.0", "mlp.1"]
    assert soup.module_groups == {"attn.0": 4, "attn.1": 4, "mlp.0": 3, "mlp.1": 3}
    ids = torch.randint(0, 1000, (2, 12))
    for w in [(0.3, 0.7), (1.4, -0.2)]:
        soup.apply(np.tile(w, (4, 1)))
        grouped = lora_deltas(model, "soup")
        merge_lora_adapters(model, ADAPTERS, w, name="plain")
        plain = lora_deltas(model, "plain")
        assert grouped.keys() == plain.keys() and all(torch.equal(grouped[k], plain[k]) for k in plain)
    for i, name in enumerate(ADAPTERS):
        soup.apply(np.tile(np.eye(2)[i], (4, 1)))
        with torch.no_grad():
            merged = model(ids).logits
        expert = lora_deltas(model, name)
        grouped = lora_deltas(model, "soup")
        for k in expert:
            torch.testing.assert_close(grouped[k], expert[k], rtol=1e-5, atol=1e-7)
        model.set_adapter(name)
        with torch.no_grad():
            torch.testing.assert_close(merged, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_each_group_gets_its_own_coefficients(micro_lm):
    from mobench.merging import lora_deltas, merge_lora_adapters
    from mobench.methods.mapmerge.soup import GroupedSoup, component_group

    model = two_adapters(micro_lm[0])
    soup = GroupedSoup(model, ADAPTERS, bands=1)
    assert soup.groups == ["attn.0", "mlp.0"]
    soup.apply([[0.9, 0.1], [-0.3, 1.2]])
    grouped = lora_deltas(model, "soup")
    merge_lora_adapters(model, ADAPTERS, [0.9, 0.1], name="attn_soup")
    attn = lora_deltas(model, "attn_soup")
    merge_lora_adapters(model, ADAPTERS, [-0.3, 1.2], name="mlp_soup")
    mlp = lora_deltas(model, "mlp_soup")
    for k in grouped:
        want = attn[k] if ".self_attn." in k else mlp[k]
        assert torch.equal(grouped[k], want), k
    assert component_group("base_model.model.model.layers.7.mlp.up_proj", 8, 4) == "mlp.3"
    assert component_group("base_model.model.model.layers.2.self_attn.q_proj", 8, 4) == "attn.1"
    assert component_group("base_model.model.model.layers.2.self_attn.q_proj", 8, 0) == "all"


# -- compiling on a micro policy ----------------------------------------------------------------------

SMALL = {"fitness": "margin", "fitness_pairs": 3, "fitness_max_length": 48, "population": 16, "generations": 10, "reevaluate": 2}


def _micro(tmp_path, data_dir, smol_tokenizer, monkeypatch):
    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
    return micro_task(data_dir, save_micro_policy(smol_tokenizer, tmp_path / "policy"), n_pairs=8)


def test_merge_lite_compiles_a_non_dominated_library_once_and_routes(tmp_path, data_dir, smol_tokenizer, monkeypatch):
    from mobench.methods.mapmerge import MergeLite
    from mobench.methods.mapmerge import fitness as fitness_module

    task = _micro(tmp_path, data_dir, smol_tokenizer, monkeypatch)
    options = MergeLite.Options(experts=micro_budget(n_pairs=4, lr=5e-2)).replace({**SMALL, "samples": 2})
    context = RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE)
    method = MergeLite(options)
    method.prepare(task, context)
    library = method.library
    # experts x2, uniform, two recombinations (attn from one expert, MLP from the other), 2 LHS, 2 re-evaluated
    assert method.fitness_evaluations == library["fitness_evaluations"] == 2 + 1 + 2 + 2 + 2
    assert library["groups"] == ["attn.0", "mlp.0"] and len(library["evaluated"]["coefficients"][0]) == 4
    X, F = method.candidates()
    assert len(F) >= 1
    for a in range(len(F)):  # entries are mutually non-dominated
        for b in range(len(F)):
            assert a == b or not ((F[a] >= F[b]).all() and (F[a] > F[b]).any())
    everything = np.array(library["evaluated"]["fitness"])
    for row in everything:  # and nothing evaluated dominates an entry
        assert not any((row >= f).all() and (row > f).any() for f in F)

    # the fitness is the DPO implicit margin, checked against MODPO's independent completion log-probs
    from mobench.methods.mapmerge.fitness import MarginFitness, held_out_pairs
    from mobench.methods.modpo.trainer import completion_logps

    held = held_out_pairs(task, options.experts, 3)
    assert [len(v) for v in held.values()] == [3, 3] and held["harmless"][0] == task.pairs["harmless"][4]
    model, beta = method.model, options.experts.beta
    margins = MarginFitness(model, method.tokenizer, held, beta, max_length=512, batch_size=4)  # no truncation
    with model.disable_adapter():
        assert np.abs(margins()).max() < 1e-9  # the reference against itself: zero margin
        reference = {k: completion_logps(model, method.tokenizer, v, 512) for k, v in held.items()}
    model.set_adapter("harmless")
    by_expert = margins()
    by_hand = []
    for k, pairs in held.items():
        (w, l), (rw, rl) = completion_logps(model, method.tokenizer, pairs, 512), reference[k]
        by_hand.append(float((beta * ((w - rw) - (l - rl))).mean()))
    np.testing.assert_allclose(by_expert, by_hand, rtol=1e-4, atol=1e-6)
    assert np.abs(by_expert).max() > 1e-4  # the trained expert moved away from the reference
    method.soup.apply(np.tile([1.0, 0.0], (2, 1)))  # the soup at e_0 in every group is expert 0
    np.testing.assert_allclose(margins(), by_expert, rtol=1e-4, atol=1e-6)
    assert library["evaluated"]["source"][0] == "expert 0"

    out = method.generate(task.prompts[:2], [Preference((1.0, 0.0)), Preference((0.3, 0.7))])
    assert len(out) == 2 and all(len(r) == 2 for r in out)
    prov = method.provenance()
    assert prov["fitness_evaluations"] == 9 and prov["library"]["build_fitness_evaluations"] == 9
    assert set(prov["chosen"]) == {"1.000000,0.000000", "0.300000,0.700000"}

    # A second prepare reads the library from the cache: no fitness object is built, nothing is evaluated.
    def refuse(*args, **kwargs):
        raise AssertionError("a fitness was built on a cached library")

    monkeypatch.setattr(fitness_module, "MarginFitness", refuse)
    again = MergeLite(options.replace({"interpolate": False}))  # a query-only option keeps the library
    again.prepare(task, context)
    assert again.fitness_evaluations == 0 and again.library_path == method.library_path
    assert again.provenance()["fitness_evaluations"] == 0


def test_map_answers_from_the_predicted_front(tmp_path, data_dir, smol_tokenizer, monkeypatch):
    from mobench.methods.mapmerge import Map
    from mobench.methods.mapmerge.front import best_for

    task = _micro(tmp_path, data_dir, smol_tokenizer, monkeypatch)
    options = Map.Options(experts=micro_budget(n_pairs=4, lr=5e-2)).replace({**SMALL, "samples": 2})
    method = Map(options)
    method.prepare(task, RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE))
    library = method.library
    assert library["groups"] == ["all"] and method.fitness_evaluations == 2 + 1 + 2 + 2
    X, F = method.candidates()
    assert X.shape[1] == 2 and ((X >= 0) & (X <= 1)).all()
    assert library["reevaluated"]["predicted"] == [F[i].tolist() for i in library["reevaluated"]["front_index"]]
    method.generate(task.prompts[:1], [Preference((0.0, 1.0))])
    chosen = method.provenance()["chosen"]["0.000000,1.000000"]
    assert chosen["rows"] == [[best_for((0.0, 1.0), F), 1.0]]
    assert chosen["coefficients"] == pytest.approx(X[best_for((0.0, 1.0), F)].tolist(), abs=1e-6)


def test_the_scored_fitness_is_the_runners_z_mean_on_validation_prompts_never_evaluation_ones(
        tmp_path, data_dir, smol_tokenizer, monkeypatch):
    from dataclasses import replace

    from mobench.api import Normalisation
    from mobench.decoding import generate_responses
    from mobench.methods.mapmerge import Map
    from mobench.methods.mapmerge.fitness import ScoredFitness, fitness_prompts

    task = _micro(tmp_path, data_dir, smol_tokenizer, monkeypatch)
    held = [p.prompt for p in task.pairs["harmless"][4:]]
    validation = [p for p in held if p not in task.prompts][:2]
    task = replace(task, validation_prompts=validation,
                   normalisation={"harmless": Normalisation(30.0, 7.0), "helpful": Normalisation(10.0, 3.0)})
    budget = micro_budget(n_pairs=4, lr=5e-2)
    # validation prompts first, then held-out pair prompts; never an evaluation prompt
    chosen = fitness_prompts(task, budget, 5)
    assert chosen[:2] == validation and len(chosen) == len(set(chosen)) and not set(chosen) & set(task.prompts)
    assert fitness_prompts(task, budget, 1) == validation[:1]
    assert Map.Options().fitness == "scored" and Map.Options().fitness_tokens is None  # the default, at the eval length
    method = Map(Map.Options(experts=budget).replace({"population": 8, "generations": 4, "reevaluate": 1, "samples": 1}))
    method.prepare(task, RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE))
    fitness = method._make_fitness()
    assert isinstance(fitness, ScoredFitness) and fitness.prompts == fitness_prompts(task, budget, 16)
    assert fitness.max_new_tokens == task.generation.max_new_tokens
    # exactly the runner's z: direction x (mean raw score - mean) / std, per objective, of greedy generations
    responses = generate_responses(method.model, method.tokenizer, fitness.prompts, max_new_tokens=fitness.max_new_tokens,
                                   batch_size=fitness.batch_size, seed=0)
    want = [o.direction * (np.mean(o.score(fitness.prompts, responses)) - task.normalisation[o.name].mean)
            / task.normalisation[o.name].std for o in task.objectives]
    np.testing.assert_allclose(fitness(), want, rtol=1e-12)
    assert method.library_key()["fitness_data"]["prompts"] == fitness.prompts


def test_both_methods_reuse_rewarded_soups_experts_at_the_tiny_scale():
    from mobench.api import PreferencePair
    from mobench.plugins import get_plugin_manager
    from mobench.runner import build_options
    from mobench.training import expert_key

    registry = get_plugin_manager().registry
    resolved = {name: build_options(registry.method(name), "tiny", {}) for name in ("rewarded-soups", "map", "merge-lite")}
    pairs = [PreferencePair(f"q{i}", "good", "bad") for i in range(300)]
    keys = {name: expert_key("smollm2-135m-instruct", "helpful", pairs, o.experts, RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE))
            for name, o in resolved.items()}
    assert keys["map"] == keys["rewarded-soups"] == keys["merge-lite"]
    assert resolved["map"].experts == resolved["rewarded-soups"].experts == resolved["merge-lite"].experts
    with pytest.raises(MobenchError, match="low < high"):
        resolved["map"].replace({"low": 1.0})
    with pytest.raises(MobenchError, match="bands"):
        resolved["merge-lite"].replace({"bands": 0})


def test_too_few_pairs_for_held_out_fitness_is_a_clear_error(tmp_path, data_dir, smol_tokenizer):
    from mobench.methods.mapmerge.fitness import held_out_pairs

    task = micro_task(data_dir, save_micro_policy(smol_tokenizer, tmp_path / "policy"), n_pairs=8)
    with pytest.raises(MobenchError, match="no preference pairs beyond the 8"):
        held_out_pairs(task, micro_budget(n_pairs=8), 4)


# -- end to end through the command line ---------------------------------------------------------------

PLUGIN_DIR = Path(__file__).resolve().parent / "shared_pieces"
MICRO_OPTIONS = ["experts.steps=2", "experts.batch_size=2", "experts.max_length=64", "experts.lora_r=4",
                 "experts.n_pairs=2", "experts.learning_rate=1e-3", "fitness_pairs=2", "samples=2",
                 "population=8", "generations=5", "reevaluate=2"]


@pytest.mark.parametrize("method", ["map", "merge-lite"])
def test_a_cli_run_on_the_micro_task(method, tmp_path, smol_tokenizer):
    from mobench.models import micro_causal_lm

    policy = tmp_path / "micro"
    micro_causal_lm(smol_tokenizer, seed=0).save_pretrained(policy)
    smol_tokenizer.save_pretrained(policy)
    env = {"MOBENCH_MICRO_POLICY": str(policy), "MOBENCH_CACHE": str(tmp_path / "cache")}
    options = [x for o in MICRO_OPTIONS for x in ("-o", o)]
    proc = mobench("--plugins-dir", str(PLUGIN_DIR), "run", "--method", method, "--task", "micro-pairs",
                   "--results", str(tmp_path / "res"), "--device", "cpu", *options, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    [run] = list((tmp_path / "res" / "micro-pairs" / method).iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    prov = manifest["method_provenance"]
    assert manifest["status"] == "complete" and set(prov["experts"]) == {"brevity", "sentiment"}
    assert prov["fitness_evaluations"] == prov["library"]["build_fitness_evaluations"] > 0
    assert manifest["prepare_seconds"] > 0 and len(prov["chosen"]) == 3
    rows = [json.loads(x) for x in (run / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 3
