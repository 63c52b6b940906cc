"""ReACT: the closed form on synthetic representations, then the method on a micro policy and through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from mobench.api import MobenchError, Preference, RunContext
from test_experts import micro_budget, micro_task, save_micro_policy
from helpers import TEST_DEVICE, TEST_DTYPE


def synthetic(m: int = 3, d: int = 6, n: int = 40, seed: int = 0, shared: bool = False):
    """Per objective Z_t (backbone) and Z*_t (expert), d x n in float64, Z*_t a noisy linear image of Z_t."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, n, generator=g, dtype=torch.float64)
    zs, stars = [], []
    for _ in range(m):
        z = base if shared else torch.randn(d, n, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2.0, d, dtype=torch.float64)[:, None]
        a = torch.eye(d, dtype=torch.float64) + 0.5 * torch.randn(d, d, generator=g, dtype=torch.float64)
        zs.append(z)
        stars.append(a @ z + 0.1 * torch.randn(d, n, generator=g, dtype=torch.float64))
    return zs, stars


def fit(zs, stars, beta: float = 0.3):
    from mobench.methods.react import ReactMaps

    grams = torch.stack([z @ z.T / z.shape[1] for z in zs])
    crosses = torch.stack([s @ z.T / z.shape[1] for z, s in zip(zs, stars)])
    return ReactMaps.fit(grams, crosses, beta)


def objective_loss(maps, zs, stars, t: int, w):
    """||W Z_t - Z*_t||^2 / n_t + lam ||W - O_t||^2: objective t's term of the scalarised loss."""
    n = zs[t].shape[1]
    return ((w @ zs[t] - stars[t]) ** 2).sum() / n + maps.lam * ((w - maps.O[t]) ** 2).sum()


def test_a_vertex_gives_the_expert_map_exactly_and_the_map_is_the_formula():
    zs, stars = synthetic()
    maps = fit(zs, stars)
    for t in range(3):
        e = [1.0 if i == t else 0.0 for i in range(3)]
        w_t = maps.expert_map(t)
        assert torch.equal(maps.mix(e), w_t)
        # W_t = (Z* Z^T / n + lam O_t)(Z Z^T / n + lam I)^-1, with an explicit inverse here as an independent check
        n, eye = zs[t].shape[1], torch.eye(6, dtype=torch.float64)
        expected = (stars[t] @ zs[t].T / n + maps.lam * maps.O[t]) @ torch.linalg.inv(zs[t] @ zs[t].T / n + maps.lam * eye)
        torch.testing.assert_close(w_t, expected, rtol=1e-10, atol=1e-12)
    assert (maps.expert_map(0) - maps.expert_map(1)).abs().max() > 0.1  # the objectives differ: the test has teeth


def test_procrustes_is_scipys_orthogonal_procrustes():
    from scipy.linalg import orthogonal_procrustes

    zs, stars = synthetic()
    maps = fit(zs, stars)
    for t in range(3):
        # scipy: argmin ||A R - B|| over orthogonal R; with A = Z^T, B = Z*^T that is R = O^T
        r, _ = orthogonal_procrustes(zs[t].T.numpy(), stars[t].T.numpy())
        torch.testing.assert_close(maps.O[t], torch.from_numpy(r).T, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(maps.O[t] @ maps.O[t].T, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-12)


def test_shared_calibration_mixes_the_maps_linearly():
    zs, stars = synthetic(shared=True)
    maps = fit(zs, stars)
    for p in ([0.2, 0.3, 0.5], [0.6, 0.4, 0.0], [1 / 3, 1 / 3, 1 / 3]):
        expected = sum(pt * maps.expert_map(t) for t, pt in enumerate(p))
        torch.testing.assert_close(maps.mix(p), expected, rtol=1e-10, atol=1e-12)
    # with different calibration inputs the mix is not linear in the maps (the shared case is special)
    zs, stars = synthetic()
    maps = fit(zs, stars)
    linear = sum(maps.expert_map(t) / 3 for t in range(3))
    assert (maps.mix([1 / 3] * 3) - linear).abs().max() > 1e-3


@pytest.mark.parametrize("p", [[0.2, 0.3, 0.5], [0.0, 0.9, 0.1], [1 / 3, 1 / 3, 1 / 3]])
def test_the_mixed_map_is_a_stationary_point_of_the_scalarised_loss(p):
    zs, stars = synthetic()
    maps = fit(zs, stars)

    def gradient(w):
        w = w.clone().requires_grad_(True)
        sum(pt * objective_loss(maps, zs, stars, t, w) for t, pt in enumerate(p)).backward()
        return w.grad

    at_mix = gradient(maps.mix(p)).norm()
    elsewhere = gradient(maps.expert_map(0) if p[0] < 0.5 else maps.expert_map(1)).norm()
    assert elsewhere > 1e-2 and at_mix < 1e-10 * elsewhere


def test_objective_one_never_gets_worse_as_its_weight_rises():
    zs, stars = synthetic(m=2, seed=3)
    maps = fit(zs, stars)
    grid = [i / 40 for i in range(41)]
    first = [float(objective_loss(maps, zs, stars, 0, maps.mix([a, 1 - a]))) for a in grid]
    second = [float(objective_loss(maps, zs, stars, 1, maps.mix([a, 1 - a]))) for a in grid]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(first, first[1:]))
    assert all(b >= a * (1 - 1e-12) for a, b in zip(second, second[1:]))
    assert first[0] - first[-1] > 1e-2 * first[0]  # a real trade-off, not a flat line


def test_an_infinite_ridge_gives_the_mixed_rotations():
    zs, stars = synthetic()
    maps = fit(zs, stars, beta=1e9)
    p = [0.2, 0.3, 0.5]
    torch.testing.assert_close(maps.mix(p), sum(pt * maps.O[t] for t, pt in enumerate(p)), rtol=0, atol=1e-7)
    assert (fit(zs, stars, beta=0.3).mix(p) - maps.mix(p)).abs().max() > 1e-2


def test_an_expert_equal_to_the_backbone_gives_the_identity():
    zs, _ = synthetic()
    for beta in (1e-3, 0.3, 10.0):
        maps = fit(zs, zs, beta)
        eye = torch.eye(6, dtype=torch.float64)
        torch.testing.assert_close(maps.O, eye.expand(3, 6, 6), rtol=0, atol=1e-10)
        torch.testing.assert_close(maps.mix([0.2, 0.3, 0.5]), eye, rtol=0, atol=1e-10)


def test_the_experts_are_rewarded_soups_experts(tmp_path, data_dir, smol_tokenizer):
    from mobench.methods.react import React
    from mobench.methods.rewarded_soups import RewardedSoups
    from mobench.training import expert_key

    policy = save_micro_policy(smol_tokenizer, tmp_path / "policy")
    task = micro_task(data_dir, policy)
    context = RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE)
    for scale in ("tiny", "paper"):
        ours, theirs = React.Options.preset(scale).experts, RewardedSoups.Options.preset(scale).experts
        for name in task.objective_names:
            assert expert_key(policy, name, task.pairs[name], ours, context) == expert_key(policy, name, task.pairs[name], theirs, context)


def test_bad_options():
    from mobench.methods.react import React

    tiny = React.Options.preset("tiny")
    for bad in ({"beta": 0}, {"calibration_pairs": 0}, {"max_rows": 0}, {"positions": "prompt"}):
        with pytest.raises(MobenchError):
            tiny.replace(bad)
    assert tiny.replace({"beta": "2"}, parse=True).beta == 2.0 and tiny.experts.beta == 0.1
    with pytest.raises(MobenchError, match="before prepare"):
        React().generate(["hi"], [Preference((1.0, 0.0))])


# -- on a micro policy with real pairs ------------------------------------------------------------------------


def micro_options(**extra):
    from mobench.methods.react import React

    return React.Options(**{"experts": micro_budget(lr=5e-2), "calibration_pairs": 8, "calibration_batch": 4, **extra})


@pytest.fixture()
def task(tmp_path, data_dir, smol_tokenizer, monkeypatch):
    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
    return micro_task(data_dir, save_micro_policy(smol_tokenizer, tmp_path / "policy"), n_pairs=16)


def test_micro_mixed_batches_decode_as_one_preference_at_a_time_and_calibration_is_cached(task):
    from mobench.methods.react import React

    method = React(micro_options())
    method.prepare(task, RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE))
    calibration = method.provenance()["calibration"]
    assert calibration["computed_now"] is True
    for name in ("harmless", "helpful"):
        counts = calibration["objectives"][name]
        assert counts["pairs"] == counts["sequences"] == 8 and counts["positions"] > 64  # more positions than d
        assert counts["map_rms_from_identity"] > 1e-3  # trained experts: a real correction

    grid = [Preference((1.0, 0.0)), Preference((0.75, 0.25)), Preference((0.5, 0.5)), Preference((0.0, 1.0))]
    mixed = method.generate(task.prompts, grid)
    alone = [method.generate(task.prompts, [p])[0] for p in grid]
    assert mixed == alone
    assert mixed[0] != mixed[-1]  # the preference changes the text, so the comparison has teeth

    again = React(micro_options())
    again.prepare(task, RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE))
    assert again.provenance()["calibration"]["computed_now"] is False
    assert torch.equal(again.maps.C, method.maps.C) and torch.equal(again.maps.N, method.maps.N)
    assert again.generate(task.prompts, grid[:1]) == mixed[:1]

    with pytest.raises(MobenchError, match="has 3 weights for 2 experts"):
        method.generate(task.prompts, [Preference((0.2, 0.3, 0.5))])
    with pytest.raises(MobenchError, match="calibration needs 9 more"):
        React(micro_options(calibration_pairs=9)).prepare(task, RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE))


def test_micro_an_expert_equal_to_the_backbone_decodes_the_soup(task, monkeypatch):
    """Both objectives get the same expert, so the soup is that expert, every W_p is I and the logits are the soup's."""
    from mobench.decoding import generate_responses
    from mobench.methods.react import HiddenStateScorer, React, ReactCombiner
    from mobench.training import dpo

    real = dpo.load_experts

    def one_expert_twice(policy, pairs, budget, context=None, objectives=None):
        path = real(policy, pairs, budget, context, ["helpful"])["helpful"]
        return {name: path for name in objectives}

    monkeypatch.setattr(dpo, "load_experts", one_expert_twice)
    method = React(micro_options())
    method.prepare(task, RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE))
    eye = torch.eye(64, dtype=torch.float64)
    for p in ([1.0, 0.0], [0.3, 0.7]):
        torch.testing.assert_close(method.maps.mix(p), eye, rtol=0, atol=1e-5)

    model, tok = method.model, method.tokenizer
    assert model.active_adapter == method.backbone
    enc = tok(task.prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    position = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        soup = torch.log_softmax(model(**enc).logits[:, -1, :], dim=-1)
    hidden = HiddenStateScorer(model, method.backbone)(enc["input_ids"], enc["attention_mask"], position)
    ours = ReactCombiner(method.maps, model.get_output_embeddings())([hidden], torch.tensor([[0.3, 0.7]] * len(task.prompts), device=model.device))
    torch.testing.assert_close(ours, soup, rtol=0, atol=1e-4)

    grid = [Preference((1.0, 0.0)), Preference((0.5, 0.5))]
    out = method.generate(task.prompts, grid)
    model.set_adapter(method.backbone)
    plain = generate_responses(model, tok, task.prompts, max_new_tokens=8, batch_size=4)
    assert out == [plain, plain]


def test_cli_run_and_leaderboard(tmp_path, smol_tokenizer):
    from pathlib import Path

    from helpers import mobench

    policy = tmp_path / "micro"
    save_micro_policy(smol_tokenizer, policy)
    env = {"MOBENCH_MICRO_POLICY": str(policy), "MOBENCH_CACHE": str(tmp_path / "cache")}
    plugins = ("--plugins-dir", str(Path(__file__).resolve().parent / "shared_pieces"))
    options = ["experts.steps=2", "experts.batch_size=2", "experts.max_length=64", "experts.lora_r=4", "experts.n_pairs=2",
               "experts.learning_rate=1e-3", "calibration_pairs=2", "positions=all"]
    args = [*plugins, "run", "--method", "react", "--task", "micro-pairs", "--results", str(tmp_path / "res"), "--device", "cpu"]
    proc = mobench(*args, *[x for o in options for x in ("-o", o)], env=env)
    assert proc.returncode == 0, proc.stderr
    [run] = list((tmp_path / "res" / "micro-pairs" / "react").iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["method_options"]["calibration_pairs"] == 2
    calibration = manifest["method_provenance"]["calibration"]
    assert calibration["computed_now"] is True and calibration["objectives"]["brevity"]["pairs"] == 2
    assert calibration["prepare_seconds"] > 0 and manifest["prepare_seconds"] >= calibration["prepare_seconds"]
    rows = [json.loads(x) for x in (run / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    board = mobench(*plugins, "leaderboard", "--task", "micro-pairs", "--results", str(tmp_path / "res"), "--format", "json", env=env)
    assert board.returncode == 0, board.stderr
    assert "react" in board.stdout
