"""MAGE's scorers and combiner for the shared decoding loop (mobench.decoding).

Candidates (:func:`candidate_ids`, the option ``candidates``): the base's top-k next tokens ("top-k"), the
part of them inside the base's nucleus of mass top_p ("top-p", at most top_k tokens), or the whole
vocabulary ("vocabulary", implicit guidance only: the value heads would need one forward position per token).
The end-of-sequence ids are always added (after short answers the base ranks EOS 12th or lower, so a top-8
rule alone could never stop where guidance wants to). Scorers keep their own KV caches on one shared PeftModel; each row runs its own weight-space merge
(rowmerge.py), folded into a copy of the weights once per chunk when the chunk's rows share one preference
(``fold=True``, MAGE's ``chunk_merge``). The value scorer evaluates V on the step's candidates of the step with one
forward of [previous token, k candidates] under a tree mask (candidates see the prefix and themselves, not
each other), then crops the candidates out of its cache.
"""

from __future__ import annotations

from typing import Sequence

from mobench.api import MobenchError

from .rowmerge import MergedWeights, row_merged


CANDIDATE_RULES = ("top-k", "top-p", "vocabulary")


def candidate_ids(base, rule: str, top_k: int, top_p: float = 1.0, eos: Sequence[int] = ()):
    """The step's candidates from the base's next-token log-probs [rows, V]: (ids [rows, n], allowed [rows, n]).

    top-k and top-p: the base's top_k ids then the ``eos`` ids (n = top_k + len(eos); an EOS already in the
    top-k appears twice, with the same score); top-p allows a top-k token only while the base mass of the
    tokens ranked above it is below top_p (the first always). ``vocabulary``: (None, None), every token.
    """
    import torch

    if rule == "vocabulary":
        return None, None
    if rule not in CANDIDATE_RULES:
        raise MobenchError(f"unknown candidate rule {rule!r} (known: {', '.join(CANDIDATE_RULES)})")
    top = base.topk(int(top_k), dim=-1)
    allowed = torch.ones_like(top.indices, dtype=torch.bool)
    if rule == "top-p":
        above = torch.cumsum(top.values.exp(), dim=-1) - top.values.exp()  # mass ranked strictly above each token
        allowed = above < float(top_p)
        allowed[:, 0] = True
    ids, extra = top.indices, [int(e) for e in eos if 0 <= int(e) < base.shape[-1]]
    if extra:
        forced = torch.tensor(extra, device=ids.device, dtype=ids.dtype).expand(ids.shape[0], -1)
        ids = torch.cat([ids, forced], dim=1)
        allowed = torch.cat([allowed, torch.ones_like(forced, dtype=torch.bool)], dim=1)
    return ids, allowed


class MergedScorer:
    """Next-token log-probs of the policy with per-row LoRA merge sum_a coefficients[r, a] delta_a (none: the base)."""

    def __init__(self, model, adapters: Sequence[str] = (), name: str = "policy", fold: bool = False):
        """``fold``: fold the merge into the weights when every row has the same coefficients (rowmerge.py)."""
        self.model, self.adapters, self.name = model, list(adapters), name
        self.coefficients = None  # [rows, len(adapters)], set per chunk of rows
        self.merged = MergedWeights() if fold and self.adapters else None
        self.cache = None
        self.last = None

    def reset(self) -> None:
        self.cache = None
        self.last = None

    def __call__(self, input_ids, attention_mask, position_ids):
        import torch

        with row_merged(self.model, self.adapters, self.coefficients, self.merged):
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
    """V_mu(x, y_<t v) for the step's candidates v (:func:`candidate_ids`); returns [rows, vocab], values at those ids.

    Row r's value model is the merge sum_i mu[r, i] (LoRA_i, head_i): LoRA deltas merged per row, heads
    merged per row (exact, the head is linear). ``heads`` is (weight [m, H], bias [m]).
    """

    def __init__(self, model, adapters: Sequence[str], heads, base: MergedScorer, top_k: int, name: str = "value",
                 rule: str = "top-k", eos: Sequence[int] = (), fold: bool = False):
        if rule == "vocabulary":
            raise MobenchError("explicit value guidance needs a top-k or top-p candidate rule, not the whole vocabulary")
        self.model, self.adapters, self.name = model, list(adapters), name
        self.head_weight, self.head_bias = heads
        self.base, self.top_k, self.rule, self.eos = base, int(top_k), rule, list(eos)
        self.coefficients = None
        self.merged = MergedWeights() if fold else None
        self.cache = None

    def reset(self) -> None:
        self.cache = None

    def __call__(self, input_ids, attention_mask, position_ids):
        import torch

        from .value import hidden_states

        if self.base.last is None:
            raise MobenchError("the value scorer must come after the base scorer")
        candidates, _ = candidate_ids(self.base.last, self.rule, self.top_k, 1.0, self.eos)  # [rows, k]
        new, k = input_ids.shape[1], candidates.shape[1]
        ids = torch.cat([input_ids, candidates], dim=1)
        positions = torch.cat([position_ids, (position_ids[:, -1:] + 1).expand(-1, k)], dim=1)
        dtype = next(self.model.parameters()).dtype
        mask = tree_mask(attention_mask, new, k, dtype)
        with row_merged(self.model, self.adapters, self.coefficients, self.merged):
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


def mage_combiner(layout: dict, top_k: int, alpha: float, implicit_weight: float, explicit_weight: float, beta: float,
                  rule: str = "top-k", top_p: float = 1.0, eos: Sequence[int] = ()):
    """s(v) = log pi_base(v) + alpha g(v) on the step's candidates (others -inf); g as in the package docstring.

    Candidates: :func:`candidate_ids` (``rule``, ``top_k``, ``top_p``, the forced ``eos`` ids). ``layout`` names
    scorer indices: base, ref (None: the base is the reference), implicit (merged: one index; ensemble: one
    per objective), explicit (likewise), and ``ensemble`` (bool).
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
        ids, allowed = candidate_ids(base, rule, top_k, top_p, eos)
        if ids is None:
            return base + alpha * g
        picked = base.gather(1, ids) + alpha * g.gather(1, ids)
        picked = picked.masked_fill(~allowed, float("-inf"))
        # amax: an id listed twice (EOS inside the top-k) keeps its allowed score, whatever the order
        return torch.full_like(base, float("-inf")).scatter_reduce(1, ids, picked, reduce="amax", include_self=True)

    return combine
