"""How far a trained LoRA policy moved from the reference policy: a Monte Carlo estimate of KL(pi || pi_ref).

KL(pi || pi_ref) over whole responses is E_{x, y ~ pi(.|x)} [log pi(y|x) - log pi_ref(y|x)], the quantity the
RLHF objectives penalise (beta KL) and that the DPO papers report beside reward. It is estimated here the
standard way: sample responses from the trained policy (temperature 1, no top-k/top-p truncation, so the
samples come from pi itself), then teacher-force them through the policy with its adapter on and off (the
reference is the base model with the adapter disabled, as in trl's LoRA trainers) and average the summed
per-token log-ratio up to and including the first EOS. The mean and its standard error over prompts are
returned; each value is an unbiased estimate of the sequence-level KL, which is >= 0 in expectation (a
single sample can be negative).

No library computes this for a saved adapter (trl's trainers log a KL only during their own training, on
their own rollouts), hence the short routine. Results are cached per adapter, prompts and length.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

from mobench.api import MobenchError, prompts_sha256

KL_KIND = "policy-kl"
KL_FILE = "kl.json"


def sequence_log_ratio(model, input_ids, attention_mask, prompt_len: int, eos_ids: Sequence[int]):
    """Per row: (sum over response tokens of log pi - log pi_ref, number of response tokens counted).

    ``input_ids`` is prompt (left-padded to ``prompt_len``) + sampled response; counted tokens run from the
    first response token to the first EOS included; padding after it is not counted.
    """
    import torch

    response = input_ids[:, prompt_len:]
    is_eos = torch.zeros_like(response, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= response == int(e)
    # Tokens after the first EOS are padding: a position counts while no EOS came strictly before it.
    before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    counted = before == 0
    mask = attention_mask.clone()
    mask[:, prompt_len:] = counted.long()

    def logps(disable: bool):
        ctx = model.disable_adapter() if disable else nullcontext()
        with torch.no_grad(), ctx:
            # Positions as generate gave them to left-padded rows (counted from each row's first real token).
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
        logits = logits[:, prompt_len - 1 : -1].float()
        return torch.log_softmax(logits, dim=-1).gather(-1, response.unsqueeze(-1)).squeeze(-1)

    ratio = (logps(False) - logps(True)) * counted
    return ratio.sum(dim=1), counted.sum(dim=1)


def estimate_kl(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, seed: int = 0,
                batch_size: int = 8) -> dict[str, Any]:
    """KL(pi || pi_ref) of a PeftModel (its active adapter) against itself with the adapter disabled."""
    import torch

    from mobench.decoding.loop import eos_ids

    eos = eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    per_prompt: list[float] = []
    tokens: list[int] = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(prompts), max(1, int(batch_size))):
            chunk = list(prompts[start : start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            torch.manual_seed(int(seed) + start)
            with torch.no_grad():
                ids = model.generate(**enc, max_new_tokens=int(max_new_tokens), do_sample=True, temperature=1.0,
                                     top_k=0, top_p=1.0, pad_token_id=pad_id)
            prompt_len = enc["input_ids"].shape[1]
            attention = torch.cat([enc["attention_mask"], torch.ones_like(ids[:, prompt_len:])], dim=1)
            ratio, count = sequence_log_ratio(model, ids, attention, prompt_len, eos)
            per_prompt.extend(float(r) for r in ratio)
            tokens.extend(int(c) for c in count)
    finally:
        tokenizer.padding_side = old_side
    n = len(per_prompt)
    mean = sum(per_prompt) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in per_prompt) / (n - 1)) if n > 1 else float("nan")
    return {"kl": mean, "stderr": sd / math.sqrt(n) if n > 1 else float("nan"), "n": n,
            "mean_tokens": sum(tokens) / n, "per_prompt": per_prompt}


def policy_kl(policy: str, adapter: str | Path, prompts: Sequence[str], max_new_tokens: int,
              device: str | None = None, seed: int = 0, dtype: str | None = None) -> dict[str, Any]:
    """KL(pi || pi_ref) of the saved LoRA ``adapter`` on ``policy``, over ``prompts`` (cached per adapter and prompts).

    ``dtype``: the precision the policy is loaded at (float32, bfloat16, float16; None: the device's default).
    """
    from mobench.artifacts import get_or_build, library_versions
    from mobench.models import resolve_dtype
    from mobench.training.common import load_policy_with_adapters, policy_fingerprint

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").exists():
        raise MobenchError(f"{adapter} holds no saved LoRA adapter (adapter_config.json missing)")
    if not prompts:
        raise MobenchError("no prompts to estimate the KL on")
    weights = sorted(p.name for p in adapter.iterdir() if p.suffix in (".safetensors", ".bin"))
    key = {
        "base": policy_fingerprint(policy),
        # An artifact folder's name is the digest of its key, so the path identifies the adapter's content.
        "adapter": {"path": str(adapter.resolve()), "files": weights},
        "prompts": {"sha256": prompts_sha256(list(prompts)), "n": len(prompts)},
        "max_new_tokens": int(max_new_tokens),
        "seed": int(seed),
        "precision": dtype or "default",
        "versions": library_versions("torch", "transformers", "peft"),
    }

    def build(out: Path) -> None:
        model, tok = load_policy_with_adapters(policy, {"policy": adapter}, device, dtype=resolve_dtype(dtype))
        result = estimate_kl(model, tok, list(prompts), int(max_new_tokens), seed)
        (out / KL_FILE).write_text(json.dumps(result, indent=2))

    return json.loads((Path(get_or_build(KL_KIND, key, build)) / KL_FILE).read_text())


def trained_policies(provenance: dict[str, Any]) -> dict[str, str]:
    """The trained LoRA policies a method's provenance names: label -> adapter folder.

    Read from ``trained_policies`` when the method gives it, else from the shared bases' fields: ``experts``
    (objective -> {path}) of :class:`mobench.training.ExpertsMethod` and ``policies`` (preference key ->
    folder) of :class:`mobench.training.PolicyPerPreference`.
    """
    found: dict[str, str] = {}
    if isinstance(provenance.get("trained_policies"), dict):
        found.update({str(k): str(v) for k, v in provenance["trained_policies"].items()})
    experts = provenance.get("experts")
    if isinstance(experts, dict):
        for name, value in experts.items():
            if isinstance(value, dict) and isinstance(value.get("path"), str):
                found.setdefault(f"expert {name}", value["path"])
    policies = provenance.get("policies")
    if isinstance(policies, dict):
        for key, value in policies.items():
            if isinstance(value, str):
                found.setdefault(f"w=({key})", value)
    return found
