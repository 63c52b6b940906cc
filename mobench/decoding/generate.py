"""Plain batched generation with transformers' generate, for methods with one policy per grid point."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from mobench.api import Generation, Progress, RunContext


@contextmanager
def left_padded(tokenizer, progress: Progress | None, description: str, total: int) -> Iterator[object]:
    """Left padding on ``tokenizer`` and a progress step of ``total`` rows (None without progress) inside the block.

    Decoder-only models must be left-padded so every row's next token follows its own last prompt token;
    the tokenizer's padding side is restored and the step closed afterwards.
    """
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    bar = progress.step(description, total=total) if progress is not None else None
    try:
        yield bar
    finally:
        tokenizer.padding_side = old_side
        if bar is not None:
            bar.close()


def generate_responses(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = Generation.max_new_tokens,
    do_sample: bool = Generation.do_sample,
    temperature: float = Generation.temperature,
    batch_size: int = Generation.batch_size,
    seed: int = 0,
    progress: Progress | None = None,
    description: str = "generating",
    top_p: float = Generation.top_p,
) -> list[str]:
    """One response per prompt (decoded new tokens, special tokens dropped), left-padded batches, seeded."""
    import torch

    prompts = list(prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    with left_padded(tokenizer, progress, description, len(prompts)) as bar:
        for start in range(0, len(prompts), max(1, int(batch_size))):
            chunk = prompts[start : start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            # Seed per batch so a batch's samples do not depend on how many batches came before it.
            torch.manual_seed(int(seed) + start)
            kwargs = dict(max_new_tokens=int(max_new_tokens), do_sample=bool(do_sample), pad_token_id=pad_id)
            if do_sample:
                kwargs.update(temperature=float(temperature), top_k=0, top_p=float(top_p))
            else:
                kwargs.update(temperature=None, top_k=None, top_p=None)
            with torch.no_grad():
                ids = model.generate(**enc, **kwargs)
            new = ids[:, enc["input_ids"].shape[1] :]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
            if bar is not None:
                bar.advance(len(chunk))
    return out


def generate_for_task(model, tokenizer, prompts: Sequence[str], generation: Generation, context: RunContext,
                      description: str) -> list[str]:
    """generate_responses with a task's decoding settings (``task.generation``) and the run's seed and progress."""
    from mobench.decoding.loop import DecodeSettings

    s = DecodeSettings.from_generation(generation, context.seed)
    return generate_responses(
        model,
        tokenizer,
        prompts,
        max_new_tokens=s.max_new_tokens,
        do_sample=s.do_sample,
        temperature=s.temperature,
        batch_size=s.batch_size,
        seed=s.seed,
        progress=context.progress,
        description=description,
        top_p=s.top_p,
    )


def generate_with_adapter(policy: str, adapter_path, prompts: Sequence[str], generation: Generation, context: RunContext,
                          description: str) -> list[str]:
    """Decode ``prompts`` with ``policy`` plus one saved LoRA adapter (merged into the weights: one policy per point)."""
    from mobench.training.common import context_dtype, load_policy_with_adapters, resolve_device

    model, tok = load_policy_with_adapters(policy, {"policy": adapter_path}, resolve_device(context), dtype=context_dtype(context))
    return generate_for_task(model.merge_and_unload(), tok, prompts, generation, context, description)
