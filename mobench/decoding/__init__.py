"""Decoding for methods: plain batched generation and one guided token-by-token loop, the public API.

Importing this package imports no torch.

Plain generation (transformers' generate, left-padded, seeded per batch)
    ``generate_responses(model, tokenizer, prompts, ...)``;
    ``generate_for_task(model, tokenizer, prompts, generation, context, description)`` (a task's
    :class:`~mobench.api.Generation` and the run's seed and progress);
    ``generate_with_adapter(policy, adapter_path, prompts, generation, context, description)``.

The guided loop (several scorers, each with its own KV cache -> a combiner -> next token; rows carry weights)
    ``decode`` (texts), ``decode_tokens`` (token ids), ``ModelScorer`` (a model or one peft adapter of it),
    ``logit_ensemble`` (MOD's combiner sum_i w_i log pi_i), ``DecodeSettings`` (``from_generation(generation,
    seed)``: the one reader of generation settings), ``eos_ids``, ``Combiner`` (the combiner's type),
    ``left_padded`` (left padding and a progress step around a decoding loop); ``decode_grid`` (every prompt at
    every grid point in shared prompt-major batches, one list of responses per preference).
"""

from mobench.decoding.generate import generate_for_task, generate_responses, generate_with_adapter, left_padded
from mobench.decoding.grid import decode_grid
from mobench.decoding.loop import Combiner, DecodeSettings, ModelScorer, decode, decode_tokens, eos_ids, logit_ensemble

__all__ = [
    "generate_responses", "generate_for_task", "generate_with_adapter",
    "decode", "decode_tokens", "ModelScorer", "logit_ensemble", "DecodeSettings", "eos_ids", "Combiner", "left_padded",
    "decode_grid",
]
