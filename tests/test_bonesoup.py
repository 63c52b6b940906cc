"""Bone Soup: the mixing matrix, c = (B^T)^-1 diag(k) mu on hand examples (the reference's full-model merge with
weight 1 - k on the SFT policy), mu = e_j recovering expert j's delta, and the k search on validation prompts."""

from __future__ import annotations

import pytest
import torch

from mobench.api import MobenchError
from mobench.methods.mage.bonesoup import bone_soup_coefficients, mixing_matrix


def test_mixing_matrix_rows():
    assert mixing_matrix(2, 0.7) == [[0.7, pytest.approx(0.3)], [pytest.approx(0.3), 0.7]]
    m3 = mixing_matrix(3, 0.6)
    assert m3[0] == [0.6, pytest.approx(0.2), pytest.approx(0.2)] and all(sum(r) == pytest.approx(1.0) for r in m3)
    with pytest.raises(MobenchError, match="mixing b"):
        mixing_matrix(2, 0.5)  # B singular
    with pytest.raises(MobenchError, match="at least 2"):
        mixing_matrix(1, 0.7)


def test_coefficients_hand_example():
    # B = [[.7,.3],[.3,.7]], B^-1 = [[1.75,-.75],[-.75,1.75]]; mu = (.4,.6) -> c = (.25, .75)
    assert bone_soup_coefficients((0.4, 0.6), 0.7) == pytest.approx([0.25, 0.75], abs=1e-12)
    assert bone_soup_coefficients((1.0, 0.0), 0.7) == pytest.approx([1.75, -0.75], abs=1e-12)
    # k scales mu before the solve: diag(k) mu = (.2, 1.2) -> c = (1.75*.2 - .75*1.2, -.75*.2 + 1.75*1.2)
    assert bone_soup_coefficients((0.4, 0.6), 0.7, k=(0.5, 2.0)) == pytest.approx([-0.55, 1.95], abs=1e-12)
    # m = 3: B^T c = mu exactly, and the coefficients sum to 1 (B's rows sum to 1)
    mu = (0.2, 0.5, 0.3)
    c = bone_soup_coefficients(mu, 0.6)
    b = mixing_matrix(3, 0.6)
    assert [sum(b[j][i] * c[j] for j in range(3)) for i in range(3)] == pytest.approx(list(mu), abs=1e-12)
    assert sum(c) == pytest.approx(1.0, abs=1e-12)


def _experts_and_backbones(model, b):
    """Two random LoRA 'experts' tau_i, and backbones theta_j = sum_i B_ji tau_i built as exact merges."""
    from peft import LoraConfig, get_peft_model

    from mobench.merging import merge_lora_adapters

    torch.manual_seed(3)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(model, cfg, adapter_name="tau0")
    model.add_adapter("tau1", LoraConfig(r=2, lora_alpha=3, target_modules="all-linear", init_lora_weights=False))
    for j, row in enumerate(mixing_matrix(2, b)):
        merge_lora_adapters(model, ["tau0", "tau1"], row, name=f"bone{j}")
    model.eval()
    return model


@pytest.mark.parametrize("j", [0, 1])
def test_preference_e_j_recovers_the_solved_expert(micro_lm, j):
    from mobench.merging import lora_deltas, merge_lora_adapters

    model = _experts_and_backbones(micro_lm[0], 0.7)
    mu = [0.0, 0.0]
    mu[j] = 1.0
    c = bone_soup_coefficients(mu, 0.7)
    merge_lora_adapters(model, ["bone0", "bone1"], c, name="base")
    merged, expert = lora_deltas(model, "base"), lora_deltas(model, f"tau{j}")
    bones = [lora_deltas(model, "bone0"), lora_deltas(model, "bone1")]
    for name in expert:
        torch.testing.assert_close(merged[name], c[0] * bones[0][name] + c[1] * bones[1][name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(merged[name], expert[name], rtol=1e-4, atol=1e-6)


def test_per_row_merge_equals_weight_space_merge(micro_lm):
    from mobench.methods.mage.rowmerge import row_merged
    from mobench.merging import merge_lora_adapters

    model = _experts_and_backbones(micro_lm[0], 0.7)
    tok = micro_lm[1]
    mus = [(1.0, 0.0), (0.3, 0.7), (0.0, 1.0)]
    coefs = torch.tensor([bone_soup_coefficients(mu, 0.7) for mu in mus])
    enc = tok(["The cat sat on"] * 3, return_tensors="pt")
    with row_merged(model, ["bone0", "bone1"], coefs):
        rows = model(**enc).logits
    for r, mu in enumerate(mus):
        merge_lora_adapters(model, ["bone0", "bone1"], coefs[r].tolist(), name="base")
        with torch.no_grad():
            want = model(**{k: v[r : r + 1] for k, v in enc.items()}).logits
        torch.testing.assert_close(rows[r : r + 1], want, rtol=1e-4, atol=1e-5)
    # The context restored peft's own state: the last soup is active again with its plain scaling.
    assert model.active_adapter == "base"
    from mobench.methods.mage.rowmerge import lora_layers

    assert all(isinstance(s, float) for layer in lora_layers(model) for s in layer.scaling.values())


def test_coefficients_use_the_transpose_with_a_non_symmetric_b(monkeypatch):
    """Backbone j holds row j of B: tau = B^-1 theta, so sum_i mu_i tau_i = sum_j [(B^T)^-1 mu]_j theta_j.

    The package's B is symmetric, which cannot tell B^T from B; a non-symmetric B (and k != 1) can.
    """
    import numpy as np

    from mobench.methods.mage import bonesoup

    matrix = [[0.8, 0.2], [0.4, 0.6]]  # det 0.4; B^T c = mu, not B c = mu
    monkeypatch.setattr(bonesoup, "mixing_matrix", lambda m, b: matrix)
    mu, k = (0.3, 0.7), (0.5, 2.0)
    # (B^T)^-1 = 1/0.4 [[0.6, -0.4], [-0.2, 0.8]]: (B^T)^-1 mu = (0.45 - 0.7, -0.15 + 1.4) = (-0.25, 1.25)
    assert bonesoup.bone_soup_coefficients(mu, 0.7) == pytest.approx([-0.25, 1.25], abs=1e-12)
    # diag(k) mu = (0.15, 1.4): (0.6*0.15 - 0.4*1.4, -0.2*0.15 + 0.8*1.4) / 0.4 = (-1.175, 2.725)
    assert bonesoup.bone_soup_coefficients(mu, 0.7, k=k) == pytest.approx([-1.175, 2.725], abs=1e-12)
    # the old, untransposed or post-scaled forms give other numbers
    assert not np.allclose(np.linalg.solve(np.asarray(matrix), np.asarray(mu)), [-0.25, 1.25])
    assert not np.allclose(np.asarray(k) * np.asarray([-0.25, 1.25]), [-1.175, 2.725])
    # and with the real weights: the merge of backbones theta_j = sum_i B_ji tau_i at these c is sum_i k_i mu_i tau_i
    tau = np.random.default_rng(0).normal(size=(2, 5))
    theta = np.asarray(matrix) @ tau
    c = np.asarray(bonesoup.bone_soup_coefficients(mu, 0.7, k=k))
    assert np.allclose(c @ theta, (np.asarray(k) * np.asarray(mu)) @ tau)
    with pytest.raises(MobenchError, match="rescaling"):
        bonesoup.bone_soup_coefficients(mu, 0.7, k=(1.0,))


def test_rescaling_matches_the_references_full_model_merge(monkeypatch):
    """The reference (andyclsr/BoneSoups, ppo/BoneSoups.py) merges full models: solution_i solves
    [[w11, w21], [w12, w22]] x = e_i (backbone j trained on (wj1, wj2)), x_j = sum_i mu_i k_i solution_i[j] on
    backbone j and x_sft = sum_i (1 - k_i) mu_i on the SFT policy. With backbones theta_sft + delta_j that is
    theta_sft + sum_j c_j delta_j with c = (B^T)^-1 diag(k) mu: computed here by hand, step by step."""
    import numpy as np

    from mobench.methods.mage import bonesoup

    w11, w21 = 0.8, 0.35  # backbone 1 trained on (0.8, 0.2), backbone 2 on (0.35, 0.65): B not symmetric
    matrix = [[w11, 1 - w11], [w21, 1 - w21]]
    monkeypatch.setattr(bonesoup, "mixing_matrix", lambda m, b: matrix)
    det = w11 * (1 - w21) - w21 * (1 - w11)  # of [[w11, w21], [w12, w22]]
    solution1 = [(1 - w21) / det, -(1 - w11) / det]  # Cramer's rule for e_1
    solution2 = [-w21 / det, w11 / det]  # and e_2
    rng = np.random.default_rng(1)
    sft = rng.normal(size=7)
    deltas = rng.normal(size=(2, 7))
    for mu, (k1, k2) in [((0.3, 0.7), (1 / 0.9, 1 / 0.5)), ((1.0, 0.0), (1 / 0.6, 1.0)), ((0.5, 0.5), (2.0, 1 / 0.7))]:
        x1 = mu[0] * solution1[0] * k1 + mu[1] * solution2[0] * k2
        x2 = mu[0] * solution1[1] * k1 + mu[1] * solution2[1] * k2
        x3 = (1 - k1) * mu[0] + (1 - k2) * mu[1]
        reference = x1 * (sft + deltas[0]) + x2 * (sft + deltas[1]) + x3 * sft
        c = bonesoup.bone_soup_coefficients(mu, 0.7, k=(k1, k2))
        assert c == pytest.approx([x1, x2], abs=1e-12)
        assert np.allclose(sft + np.asarray(c) @ deltas, reference)
        assert x1 + x2 + x3 == pytest.approx(1.0)  # the weights sum to 1: the delta form drops nothing


def test_k_grid_is_the_references():
    from mobench.methods.mage.bonesoup import k_grid, spread

    assert k_grid() == pytest.approx([1 / 0.9, 1 / 0.8, 1 / 0.7, 1 / 0.6, 2.0])
    assert min(k_grid()) == pytest.approx(1.1111, abs=1e-4) and max(k_grid()) == 2.0
    assert spread(list("abcdefgh"), 4) == ["a", "c", "e", "g"] and spread(list("ab"), 5) == ["a", "b"]


def test_choose_k_picks_each_objectives_best_merge_at_its_corner(micro_lm):
    """choose_k's mean z for every (objective, k) equals decoding that very merge and scoring it; the pick is
    the argmax per objective (ties: the smaller k)."""
    from mobench.api import Normalisation
    from mobench.decoding import generate_responses
    from mobench.merging import merge_lora_adapters
    from mobench.methods.mage.bonesoup import choose_k, k_grid

    model = _experts_and_backbones(micro_lm[0], 0.7)
    tok = micro_lm[1]

    class Chars:
        def __init__(self, name, direction, letter):
            self.name, self.direction, self.letter = name, direction, letter

        def score(self, prompts, responses):
            return [float(r.count(self.letter) + len(r) / 100) for r in responses]

    objectives = [Chars("a", 1, "e"), Chars("b", -1, " ")]
    norm = {"a": Normalisation(1.0, 2.0), "b": Normalisation(3.0, 0.5)}
    prompts = ["The cat sat on", "Once upon a time"]
    gen = {"max_new_tokens": 6, "do_sample": False, "batch_size": 3}
    found = choose_k(model, tok, ["bone0", "bone1"], objectives, norm, prompts, 0.7, gen)
    assert found["grid"] == k_grid() and found["n_prompts"] == 2
    for i, o in enumerate(objectives):
        e = [1.0 if j == i else 0.0 for j in range(2)]
        want = []
        for k in k_grid():
            ks = [k if j == i else 1.0 for j in range(2)]
            merge_lora_adapters(model, ["bone0", "bone1"], bone_soup_coefficients(e, 0.7, ks), name="probe")
            texts = generate_responses(model, tok, prompts, max_new_tokens=6, batch_size=2)
            model.set_adapter("bone0")
            model.delete_adapter("probe")
            want.append(sum(norm[o.name].apply(s, o.direction) for s in o.score(prompts, texts)) / 2)
        assert found["mean_z"][o.name] == pytest.approx(want, abs=1e-9)
        best = max(want)
        assert found["k"][i] == k_grid()[want.index(best)]


def test_backbones_train_on_the_rows_of_b(monkeypatch):
    """train_backbones hands row j of B to the RL trainer as backbone j's reward weights."""
    import mobench.training as training
    from mobench.methods.mage import bonesoup

    calls = []
    monkeypatch.setattr(training, "train_rl_policy", lambda policy, objectives, norm, row, prompts, budget, context: calls.append(list(row)) or f"/p{len(calls)}")
    paths = bonesoup.train_backbones("pol", ["a", "b", "c"], {}, 0.6, ["x"], None)
    assert calls == mixing_matrix(3, 0.6) and [str(p) for p in paths] == ["/p1", "/p2", "/p3"]


def test_backbones_get_everything_the_rl_trainer_needs(monkeypatch):
    """Each backbone is the shared RL policy artifact of (policy, objectives, normalisation, row j, prompts, budget, context)."""
    import mobench.training as training
    from mobench.methods.mage import bonesoup

    calls = []
    monkeypatch.setattr(training, "train_rl_policy", lambda *args: calls.append(args) or f"/b{len(calls)}")
    objectives, norm, prompts, budget, context = ("o1", "o2"), {"o1": 1}, ("x", "y"), object(), object()
    paths = bonesoup.train_backbones("pol", objectives, norm, 1.0, prompts, budget, context)
    assert [str(p) for p in paths] == ["/b1", "/b2"]
    assert calls == [("pol", ["o1", "o2"], norm, [1.0, 0.0], ["x", "y"], budget, context),
                     ("pol", ["o1", "o2"], norm, [0.0, 1.0], ["x", "y"], budget, context)]


def test_mixing_matrix_edges():
    assert mixing_matrix(3, 1.0) == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # b = 1 is allowed: B = I
    with pytest.raises(MobenchError, match=r"^Bone-Soup mixing b=0.3 must lie in \(1/m, 1\] = \(0.333333, 1\]$"):
        mixing_matrix(3, 0.3)
    with pytest.raises(MobenchError, match=r"^Bone-Soup mixing b=1.01 must lie in \(1/m, 1\] = \(0.5, 1\]$"):
        mixing_matrix(2, 1.01)
    with pytest.raises(MobenchError, match=r"^Bone Soup needs at least 2 objectives, got 1$"):
        mixing_matrix(1, 0.9)
    assert mixing_matrix(2, "0.75") == [[0.75, 0.25], [0.25, 0.75]]  # b from a command line
