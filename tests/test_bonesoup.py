"""Bone Soup: the mixing matrix, c = diag(k) (B^T)^-1 mu on a hand example, and mu = e_j recovering expert j's delta."""

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
    assert bone_soup_coefficients((0.4, 0.6), 0.7, k=(0.5, 2.0)) == pytest.approx([0.125, 1.5], abs=1e-12)
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
    assert bonesoup.bone_soup_coefficients(mu, 0.7, k=k) == pytest.approx([-0.125, 2.5], abs=1e-12)
    wrong = np.linalg.solve(np.asarray(matrix), np.asarray(mu))  # B^-1 mu, the untransposed solve
    assert not np.allclose(wrong, [-0.25, 1.25])
    # and with the real weights: the merge of backbones theta_j = sum_i B_ji tau_i at these c is sum_i mu_i tau_i
    tau = np.random.default_rng(0).normal(size=(2, 5))
    theta = np.asarray(matrix) @ tau
    c = np.asarray(bonesoup.bone_soup_coefficients(mu, 0.7))
    assert np.allclose(c @ theta, np.asarray(mu) @ tau)
    with pytest.raises(MobenchError, match="rescaling"):
        bonesoup.bone_soup_coefficients(mu, 0.7, k=(1.0,))


def test_backbones_train_on_the_rows_of_b(monkeypatch):
    """train_backbones hands row j of B to the RL trainer as backbone j's reward weights."""
    import mobench.training as training
    from mobench.methods.mage import bonesoup

    calls = []
    monkeypatch.setattr(training, "train_rl_policy", lambda policy, objectives, norm, row, prompts, budget, context: calls.append(list(row)) or f"/p{len(calls)}")
    paths = bonesoup.train_backbones("pol", ["a", "b", "c"], {}, 0.6, ["x"], None)
    assert calls == mixing_matrix(3, 0.6) and [str(p) for p in paths] == ["/p1", "/p2", "/p3"]
