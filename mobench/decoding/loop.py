"""One token-by-token decoding loop: several scorers (each with its own KV cache) -> a combiner -> next token.

A *scorer* gives next-token log-probs per row from one model (a peft adapter on a shared base, the base
with adapters disabled, or any other causal LM over the same vocabulary) and keeps its own cache. A
*combiner* turns the scorers' [rows, vocab] outputs and each row's weights into next-token scores
(-inf excludes a token). The logit ensemble is one combiner; MAGE's top-k re-scoring is another.
Rows are (prompt, preference) pairs, so prompts and grid points batch together: a row's weights
travel with the row. transformers' generate takes one model, hence this loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from mobench.api import Generation, MobenchError, Progress
from mobench.decoding.generate import left_padded

Combiner = Callable[[list, "object"], "object"]  # (logprobs per scorer [rows, V], weights [rows, K]) -> scores [rows, V]


class ModelScorer:
    """Next-token log-probs of ``model`` (with peft ``adapter`` active, or adapters disabled if None) and its KV cache.

    Several scorers may share one PeftModel: each call activates its own adapter first, and each keeps
    its own cache, so K experts cost one base in memory plus K small adapters.
    """

    def __init__(self, model, adapter: str | None = None, name: str | None = None):
        self.model = model
        self.adapter = adapter
        self.name = name or adapter or "base"
        self.cache = None
        self._peft = hasattr(model, "peft_config")
        if adapter is not None and (not self._peft or adapter not in model.peft_config):
            raise MobenchError(f"scorer {self.name!r}: adapter {adapter!r} is not loaded on the model")

    def reset(self) -> None:
        """Drop the cache (a new batch of rows starts)."""
        self.cache = None

    def select_rows(self, index) -> None:
        """Keep (and repeat) cache rows by ``index``: a prompt prefilled once serves every row that shares it.

        Only scorers whose output depends on the tokens alone may have this method; one with per-row
        state (e.g. per-row merged weights) must not, and the loop then prefills every row itself.
        """
        if self.cache is not None:
            self.cache.batch_select_indices(index)

    def __call__(self, input_ids, attention_mask, position_ids):
        """Feed the new tokens (the prompt first, then one token per row) and return log-probs [rows, V]."""
        import contextlib

        import torch

        if self.adapter is not None:
            if self.model.active_adapter != self.adapter:
                self.model.set_adapter(self.adapter)
            context = contextlib.nullcontext()
        else:
            context = self.model.disable_adapter() if self._peft else contextlib.nullcontext()
        with context, torch.no_grad():
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=1,  # only the last position's logits: prefill would otherwise build [rows, L, V]
            )
        self.cache = out.past_key_values
        return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)


def logit_ensemble(logprobs: list, weights):
    """MOD's combiner: sum_i w_i log pi_i per row (a zero weight drops its expert, even at -inf)."""
    import torch

    total = torch.zeros_like(logprobs[0])
    for i, lp in enumerate(logprobs):
        w = weights[:, i : i + 1].to(lp.dtype)
        total = total + torch.where(w == 0, torch.zeros_like(lp), w * lp)
    return total


@dataclass
class DecodeSettings:
    """Decoding settings of the loop: a task's :class:`~mobench.api.Generation` plus the run's seed."""

    max_new_tokens: int = Generation.max_new_tokens
    do_sample: bool = Generation.do_sample
    temperature: float = Generation.temperature
    batch_size: int = Generation.batch_size
    seed: int = 0
    top_p: float = Generation.top_p  # after seed: callers that build settings positionally keep their meaning

    @classmethod
    def from_generation(cls, generation: Generation, seed: int = 0) -> "DecodeSettings":
        """The settings of ``generation`` (a Generation, or a dict of its fields) with ``seed``: the one reader."""
        g = Generation.of(generation)
        return cls(int(g.max_new_tokens), bool(g.do_sample), float(g.temperature), int(g.batch_size), int(seed),
                   float(g.top_p))


def eos_ids(model, tokenizer) -> list[int]:
    """The ids that end a response: the model's generation_config EOS (what generate uses), else the tokenizer's."""
    gen = getattr(model, "generation_config", None)
    ids = getattr(gen, "eos_token_id", None) if gen is not None else None
    if ids is None:
        ids = tokenizer.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return [int(i) for i in ids]


def decode_tokens(
    scorers: Sequence[ModelScorer],
    combiner: Combiner,
    tokenizer,
    prompts: Sequence[str],
    weights: Sequence[Sequence[float]],
    settings: DecodeSettings,
    eos_token_ids: Sequence[int] | None = None,
    progress: Progress | None = None,
    description: str = "decoding",
) -> list[list[int]]:
    """New token ids per row (EOS included when emitted); row r decodes prompts[r] under weights[r].

    ``eos_token_ids`` None: :func:`eos_ids` of the first scorer's model.
    """
    import torch

    if len(prompts) != len(weights):
        raise MobenchError(f"{len(prompts)} prompts but {len(weights)} weight rows")
    if not scorers:
        raise MobenchError("the decoding loop needs at least one scorer")
    if eos_token_ids is None:
        eos_token_ids = eos_ids(scorers[0].model, tokenizer)
    device = scorers[0].model.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(eos_token_ids[0])
    eos = torch.tensor(list(eos_token_ids), device=device, dtype=torch.long)
    eos_set = {int(i) for i in eos_token_ids}
    out: list[list[int]] = []
    step_size = max(1, int(settings.batch_size))
    with left_padded(tokenizer, progress, description, len(prompts)) as bar:
        for start in range(0, len(prompts), step_size):
            chunk = list(prompts[start : start + step_size])
            w = torch.tensor([list(x) for x in weights[start : start + step_size]], dtype=torch.float32, device=device)
            # Rows that share a prompt (one prompt at several grid points) share its prefill, when every
            # scorer can copy cache rows: the prompt costs one forward per scorer, not one per grid point.
            unique = list(dict.fromkeys(chunk))
            share = len(unique) < len(chunk) and all(hasattr(s, "select_rows") for s in scorers)
            enc = tokenizer(unique if share else chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            mask = enc["attention_mask"]
            # Positions count real tokens only (as generate does), so left padding does not shift them.
            position = (mask.long().cumsum(-1) - 1).clamp(min=0)
            # Seeded per chunk: a chunk's samples do not depend on the chunks before it.
            generator = torch.Generator(device=device).manual_seed(int(settings.seed) + start)
            for s in scorers:
                s.reset()
            logprobs = [s(enc["input_ids"], mask, position) for s in scorers]
            if share:
                where = {p: i for i, p in enumerate(unique)}
                index = torch.tensor([where[p] for p in chunk], device=device)
                for s in scorers:
                    s.select_rows(index)
                logprobs = [lp[index] for lp in logprobs]
                mask, position = mask[index], position[index]
            finished = torch.zeros(len(chunk), dtype=torch.bool, device=device)
            tokens = []
            for t in range(int(settings.max_new_tokens)):
                scores = combiner(logprobs, w)
                if settings.do_sample:
                    if float(settings.top_p) < 1.0:  # transformers' own nucleus filter, as generate applies it
                        from transformers import TopPLogitsWarper

                        scores = TopPLogitsWarper(float(settings.top_p))(None, scores)
                    probs = torch.softmax(scores / float(settings.temperature), dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                else:
                    nxt = scores.argmax(dim=-1)
                nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
                tokens.append(nxt)
                finished = finished | torch.isin(nxt, eos)
                if bool(finished.all()) or t == int(settings.max_new_tokens) - 1:
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                position = position[:, -1:] + 1
                logprobs = [s(nxt[:, None], mask, position) for s in scorers]
            for s in scorers:
                s.reset()  # free the caches before the next chunk
            ids = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in chunk]
            for row in ids:
                cut = next((i + 1 for i, tok in enumerate(row) if tok in eos_set), len(row))
                out.append(row[:cut])
            if bar is not None:
                bar.advance(len(chunk))
    return out


def decode(scorers: Sequence[ModelScorer], combiner: Combiner, tokenizer, prompts: Sequence[str],
           weights: Sequence[Sequence[float]], settings: DecodeSettings, eos_token_ids: Sequence[int] | None = None,
           **kwargs) -> list[str]:
    """:func:`decode_tokens` (the same arguments) decoded to text per row, special tokens dropped."""
    ids = decode_tokens(scorers, combiner, tokenizer, prompts, weights, settings, eos_token_ids, **kwargs)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)
