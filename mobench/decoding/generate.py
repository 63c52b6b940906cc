"""Plain batched generation with transformers' generate, for methods with one policy per grid point."""

from __future__ import annotations

from typing import Sequence

from mobench.api import Progress


def generate_responses(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    progress: Progress | None = None,
    description: str = "generating",
) -> list[str]:
    """One response per prompt (decoded new tokens, special tokens dropped), left-padded batches, seeded."""
    import torch

    prompts = list(prompts)
    # Decoder-only models must be left-padded so every row's next token follows its own last prompt token.
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bar = progress.step(description, total=len(prompts)) if progress is not None else None
    out: list[str] = []
    try:
        for start in range(0, len(prompts), max(1, int(batch_size))):
            chunk = prompts[start : start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            # Seed per batch so a batch's samples do not depend on how many batches came before it.
            torch.manual_seed(int(seed) + start)
            kwargs = dict(max_new_tokens=int(max_new_tokens), do_sample=bool(do_sample), pad_token_id=pad_id)
            if do_sample:
                kwargs.update(temperature=float(temperature), top_k=0, top_p=1.0)
            else:
                kwargs.update(temperature=None, top_k=None, top_p=None)
            with torch.no_grad():
                ids = model.generate(**enc, **kwargs)
            new = ids[:, enc["input_ids"].shape[1] :]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
            if bar is not None:
                bar.advance(len(chunk))
    finally:
        tokenizer.padding_side = old_side
        if bar is not None:
            bar.close()
    return out


def generate_for_task(model, tokenizer, prompts: Sequence[str], task, context, description: str) -> list[str]:
    """generate_responses with the task's decoding settings (task.generation) and the run's seed and progress."""
    gen = task.generation
    return generate_responses(
        model,
        tokenizer,
        prompts,
        max_new_tokens=gen.get("max_new_tokens", 64),
        do_sample=gen.get("do_sample", False),
        temperature=gen.get("temperature", 1.0),
        batch_size=gen.get("batch_size", 8),
        seed=context.seed,
        progress=context.progress,
        description=description,
    )


def generate_with_adapter(task, adapter_path, prompts: Sequence[str], context, description: str) -> list[str]:
    """Decode ``prompts`` with the task policy plus one LoRA adapter (merged into the weights: one policy per point)."""
    from mobench.training.common import load_policy_with_adapters, resolve_device

    model, tok = load_policy_with_adapters(task.policy, {"policy": adapter_path}, resolve_device(context))
    return generate_for_task(model.merge_and_unload(), tok, prompts, task, context, description)
