"""MAGE's scorers and combiner for the shared decoding loop (mobench.decoding).

Scorers keep their own KV caches on one shared PeftModel; each row runs its own weight-space merge
(rowmerge.py). The value scorer evaluates V on the base's top-k candidates of the step with one
forward of [previous token, k candidates] under a tree mask (candidates see the prefix and themselves, not
each other), then crops the candidates out of its cache.
"""

from __future__ import annotations

from typing import Sequence

from mobench.api import MobenchError

from .rowmerge import row_merged


class MergedScorer:
    """Next-token log-probs of the policy with per-row LoRA merge sum_a coefficients[r, a] delta_a (none: the base)."""

    def __init__(self, model, adapters: Sequence[str] = (), name: str = "policy"):
        self.model, self.adapters, self.name = model, list(adapters), name
        self.coefficients = None  # [rows, len(adapters)], set per chunk of rows
        self.cache = None
        self.last = None

    def reset(self) -> None:
        self.cache = None
        self.last = None

    def __call__(self, input_ids, attention_mask, position_ids):
        import torch

        with row_merged(self.model, self.adapters, self.coefficients):
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=self.cache, use_cache=True, logits_to_keep=1,
            )
        self.cache = out.past_key_values
        self.last = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        return self.last


def tree_mask(prefix_mask, new: int, k: int, dtype):
    """Additive mask [rows, 1, new + k, kv] for ``new`` causal prefix tokens then ``k`` sibling candidates.

    ``prefix_mask`` [rows, kv - k] is the 2D padding mask of past + new tokens. Every query also sees
    itself, so a padded query row is never fully masked (that would make NaNs).
    """
    import torch

    rows, kv_prefix = prefix_mask.shape
    past = kv_prefix - new
    kv = kv_prefix + k
    q = torch.arange(new + k, device=prefix_mask.device)
    col = torch.arange(kv, device=prefix_mask.device)
    query_pos = torch.where(q < new, past + q, kv_prefix - 1)  # candidates sit after the whole prefix
    causal = (col[None, :] <= query_pos[:, None]) & (col[None, :] < kv_prefix)  # [new + k, kv]
    key_ok = torch.cat([prefix_mask.bool(), torch.zeros(rows, k, dtype=torch.bool, device=prefix_mask.device)], dim=1)
    own = torch.zeros(new + k, kv, dtype=torch.bool, device=prefix_mask.device)
    own[q, torch.where(q < new, past + q, kv_prefix + q - new)] = True
    allowed = (causal[None] & key_ok[:, None, :]) | own[None]  # [rows, new + k, kv]
    out = torch.zeros(rows, 1, new + k, kv, dtype=dtype, device=prefix_mask.device)
    return out.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


class ValueScorer:
    """V_mu(x, y_<t v) for the base's top-k candidates v; returns [rows, vocab] with values at those k ids.

    Row r's value model is the merge sum_i mu[r, i] (LoRA_i, head_i): LoRA deltas merged per row, heads
    merged per row (exact, the head is linear). ``heads`` is (weight [m, H], bias [m]).
    """

    def __init__(self, model, adapters: Sequence[str], heads, base: MergedScorer, top_k: int, name: str = "value"):
        self.model, self.adapters, self.name = model, list(adapters), name
        self.head_weight, self.head_bias = heads
        self.base, self.top_k = base, int(top_k)
        self.coefficients = None
        self.cache = None

    def reset(self) -> None:
        self.cache = None

    def __call__(self, input_ids, attention_mask, position_ids):
        import torch

        from .value import hidden_states

        if self.base.last is None:
            raise MobenchError("the value scorer must come after the base scorer")
        candidates = self.base.last.topk(self.top_k, dim=-1).indices  # [rows, k]
        new, k = input_ids.shape[1], candidates.shape[1]
        ids = torch.cat([input_ids, candidates], dim=1)
        positions = torch.cat([position_ids, (position_ids[:, -1:] + 1).expand(-1, k)], dim=1)
        dtype = next(self.model.parameters()).dtype
        mask = tree_mask(attention_mask, new, k, dtype)
        with row_merged(self.model, self.adapters, self.coefficients):
            out = hidden_states(self.model, ids, mask, position_ids=positions, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        self.cache.crop(-k)  # keep the prefix, drop the k candidates
        h = out.last_hidden_state[:, new:, :].float()  # [rows, k, H]
        coef = self.coefficients.float()
        w = coef @ self.head_weight.float().to(h.device)  # [rows, H]: the per-row merged head
        b = coef @ self.head_bias.float().to(h.device)  # [rows]
        values = torch.einsum("rkh,rh->rk", h, w) + b[:, None]
        full = torch.zeros_like(self.base.last)
        return full.scatter(1, candidates, values)


def mage_combiner(layout: dict, top_k: int, alpha: float, implicit_weight: float, explicit_weight: float, beta: float):
    """s(v) = log pi_base(v) + alpha g(v) on the base's top-k (others -inf); g as in the package docstring (plugins/mage/__init__.py).

    ``layout`` names scorer indices: base, ref (None: the base is the reference), implicit (merged: one index;
    ensemble: one per objective), explicit (likewise), and ``ensemble`` (bool).
    """
    import torch

    def combine(logprobs: list, weights):
        base = logprobs[layout["base"]]
        ref = base if layout.get("ref") is None else logprobs[layout["ref"]]
        mu = weights.to(base.dtype)
        g = torch.zeros_like(base)
        if implicit_weight and layout.get("implicit"):
            if layout["ensemble"]:
                for i, idx in enumerate(layout["implicit"]):
                    g = g + implicit_weight * beta * mu[:, i : i + 1] * (logprobs[idx] - ref)
            else:
                g = g + implicit_weight * beta * (logprobs[layout["implicit"][0]] - ref)
        if explicit_weight and layout.get("explicit"):
            if layout["ensemble"]:
                for i, idx in enumerate(layout["explicit"]):
                    g = g + explicit_weight * mu[:, i : i + 1] * logprobs[idx]
            else:
                g = g + explicit_weight * logprobs[layout["explicit"][0]]
        top = base.topk(top_k, dim=-1).indices
        scores = torch.full_like(base, float("-inf"))
        picked = base.gather(1, top) + alpha * g.gather(1, top)
        return scores.scatter(1, top, picked)

    return combine
