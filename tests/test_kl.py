"""KL(pi || pi_ref) of a saved LoRA policy: the masked log-ratio sum, an untrained adapter's exact zero, the cache."""

from __future__ import annotations

import json

import pytest
from helpers import TEST_DEVICE

PROMPTS = ["<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nWhat is two plus two, and why?<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"]


def _adapter(model, tmp_path, name, random_b: bool, alpha: int = 8):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=alpha, target_modules="all-linear", init_lora_weights=not random_b, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    if random_b:
        import torch

        with torch.no_grad():  # a strong, seeded move away from the reference, so its KL stands far above the noise
            gen = torch.Generator().manual_seed(1)
            for pname, param in peft_model.named_parameters():
                if "lora_B" in pname:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    folder = tmp_path / name
    peft_model.save_pretrained(folder)
    return peft_model, folder


def test_the_log_ratio_is_the_sum_over_response_tokens_up_to_the_first_eos(micro_lm, tmp_path):
    import torch

    from mobench.kl import sequence_log_ratio

    model, tok = micro_lm
    peft_model, _ = _adapter(model, tmp_path, "a", random_b=True)
    peft_model.eval()
    eos = tok.eos_token_id
    prompt = tok(PROMPTS[0], add_special_tokens=False)["input_ids"]
    response = [tok.encode(" hello", add_special_tokens=False)[0], 42, eos, 7, 9]  # tokens 7, 9 follow EOS: not counted
    ids = torch.tensor([prompt + response])
    mask = torch.ones_like(ids)
    ratio, count = sequence_log_ratio(peft_model, ids, mask, len(prompt), [eos])
    assert count.tolist() == [3]
    want = 0.0
    with torch.no_grad():
        for j in range(3):  # one position at a time, plainly: log pi(y_j | x, y_<j) - log pi_ref(y_j | x, y_<j)
            ctx = torch.tensor([prompt + response[:j]])
            lp = torch.log_softmax(peft_model(input_ids=ctx).logits[0, -1].float(), -1)[response[j]]
            with peft_model.disable_adapter():
                lr = torch.log_softmax(peft_model(input_ids=ctx).logits[0, -1].float(), -1)[response[j]]
            want += float(lp - lr)
    assert float(ratio[0]) == pytest.approx(want, abs=1e-4)
    assert abs(want) > 1e-3  # the random adapter really changes the policy, so the check has teeth


def test_an_untrained_adapter_is_the_reference_kl_exactly_zero_and_a_trained_one_is_positive(micro_lm, tmp_path, monkeypatch):
    from mobench.kl import KL_FILE, policy_kl

    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
    model, tok = micro_lm
    policy = tmp_path / "policy"
    model.save_pretrained(policy)
    tok.save_pretrained(policy)
    _, zero = _adapter(model, tmp_path, "zero", random_b=False)  # LoRA's own init: B = 0, the policy is pi_ref
    result = policy_kl(str(policy), zero, PROMPTS, max_new_tokens=6, device=TEST_DEVICE)
    assert result["n"] == 3 and result["per_prompt"] == [0.0, 0.0, 0.0] and result["kl"] == 0.0

    from mobench.models import micro_causal_lm
    import torch

    moved, folder = _adapter(micro_causal_lm(tok, seed=0), tmp_path, "moved", random_b=True)
    moved.eval()
    many = PROMPTS * 16
    # One-token responses: the exact KL is a sum over the vocabulary, which the Monte Carlo mean must agree with.
    result = policy_kl(str(policy), folder, many, max_new_tokens=1, device=TEST_DEVICE)
    exact = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
            lp = torch.log_softmax(moved(input_ids=ids).logits[0, -1].double(), -1)
            with moved.disable_adapter():
                lr = torch.log_softmax(moved(input_ids=ids).logits[0, -1].double(), -1)
            exact.append(float((lp.exp() * (lp - lr)).sum()))
    want = sum(exact) / len(exact)
    assert result["n"] == 48 and want > 0.01
    assert abs(result["kl"] - want) < 4 * result["stderr"]
    # Cached: the second call reads the artifact (no new folder, the stored file untouched).
    stored = sorted((tmp_path / "cache" / "policy-kl").glob(f"*/{KL_FILE}"))
    assert len(stored) == 2 and sorted(json.loads(f.read_text())["n"] for f in stored) == [3, 48]
    stamps = [f.stat().st_mtime_ns for f in stored]
    assert policy_kl(str(policy), folder, many, max_new_tokens=1, device=TEST_DEVICE) == result
    assert sorted((tmp_path / "cache" / "policy-kl").glob(f"*/{KL_FILE}")) == stored
    assert [f.stat().st_mtime_ns for f in stored] == stamps


def test_trained_policies_reads_the_shared_bases_provenance():
    from mobench.kl import trained_policies

    prov = {"experts": {"helpful": {"path": "/c/e1", "train": {}}, "harmless": {"path": "/c/e2"}},
            "policies": {"1.000000,0.000000": "/c/p1"}, "trained_policies": {"bone0": "/c/b0"}}
    assert trained_policies(prov) == {"bone0": "/c/b0", "expert helpful": "/c/e1", "expert harmless": "/c/e2",
                                      "w=(1.000000,0.000000)": "/c/p1"}
    assert trained_policies({"method": "logit-ensemble"}) == {}
