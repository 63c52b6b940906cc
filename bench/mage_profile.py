"""Where a MAGE guided decoding step spends its time: per-scorer wall time and the top operators; prints JSON.

Same setup as bench/mage.py (random LoRA adapters on the given model, preference (0.5, 0.5), EOS suppressed).
It times, in one process and at one batch size, per decoding step:
  - ``plain_forward_ms``: one forward of the model with every adapter off (the floor for one scorer's forward);
  - ``lora2_forward_ms``: the same forward with the base's two backbone LoRAs merged per row (rowmerge.py);
  - ``lora2_folded_forward_ms``: the same merge folded into the weights (every row has one preference;
    ``chunk_merge``, MAGE's default), the weights built before the timing as the decoder does once per chunk;
  - each MAGE scorer's forward inside the guided loop (merged proxy, MAGE's defaults: merges folded), and the combiner;
then runs torch.profiler over one guided generate and reports the operators with the most self time (CUDA time
on a GPU, CPU time otherwise) and the number of kernel launches per step. Example:
    python bench/mage_profile.py --model micro --batch 4 --max-new-tokens 8
    python bench/mage_profile.py --model /tmp/rand --device cuda --batch 8 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def step_seconds(fn, device, steps: int) -> float:
    """Mean seconds of fn() over ``steps`` calls after one warm-up call."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from mage import PROMPT, build  # bench/mage.py

    from mobench.api import Preference
    from mobench.methods.mage import MageOptions
    from mobench.methods.mage.decoder import MageDecoder
    from mobench.methods.mage.rowmerge import MergedWeights, row_merged

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="micro")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--rows", type=int, default=25, help="operator rows to print")
    parser.add_argument("--repeat", type=int, default=20, help="calls averaged for the single-forward timings")
    args = parser.parse_args()
    cuda = str(args.device).startswith("cuda")

    model, tok, heads = build(args)
    prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True) if tok.chat_template else PROMPT
    prompts = [prompt] * args.batch
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    coef = torch.full((args.batch, 2), 0.5, device=model.device)

    # One decode step of a single scorer: one new token against a prompt-long KV cache.
    def one_step_fn(adapters, merged=None):
        with row_merged(model, adapters, coef if adapters else None, merged):
            out = model(**enc, use_cache=True, logits_to_keep=1)
        cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([enc["attention_mask"], torch.ones_like(nxt)], dim=1)

        def fn():
            with row_merged(model, adapters, coef if adapters else None, merged):
                model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.crop(-1)  # drop the new token again: every call is the same step

        return fn

    with torch.no_grad():
        plain = step_seconds(one_step_fn([]), args.device, args.repeat)
        lora = step_seconds(one_step_fn(["bone0", "bone1"]), args.device, args.repeat)
        folded = step_seconds(one_step_fn(["bone0", "bone1"], MergedWeights()), args.device, args.repeat)

    decoder = MageDecoder(model, tok, MageOptions(proxy="merged", top_k=args.top_k), ["bone0", "bone1"],
                          ["dpo_a", "dpo_b"], ["value_a", "value_b"], heads)
    live: dict[str, float] = {}

    def timed(name, fn):
        def call(*a, **kw):
            key = f"{name} prefill" if a and hasattr(a[0], "shape") and a[0].dim() == 2 and a[0].shape[1] > 1 else name
            sync(args.device)
            start = time.perf_counter()
            with record_function(f"mage:{name}"):
                out = fn(*a, **kw)
            sync(args.device)
            live[key] = live.get(key, 0.0) + time.perf_counter() - start
            return out
        return call

    decoder.scorers = [_Proxy(s, timed(s.name, s.__class__.__call__.__get__(s))) for s in decoder.scorers]
    decoder.combiner = timed("combiner", decoder.combiner)
    gen = {"max_new_tokens": args.max_new_tokens, "do_sample": False, "batch_size": args.batch}
    run = lambda: decoder.generate(prompts, [Preference((0.5, 0.5))], gen, eos_token_ids=[-1])
    run()  # warm-up
    live.clear()
    sync(args.device)
    start = time.perf_counter()
    run()
    sync(args.device)
    total = time.perf_counter() - start
    spent = dict(live)  # the timed run's figures (the profiled run below adds to the live dict)
    steps = args.max_new_tokens  # per-step figures: the run's time over its steps (prefills listed apart, per run)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run()
        sync(args.device)
    events = prof.key_averages()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = events.table(sort_by=sort, row_limit=args.rows)
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    print(table, file=sys.stderr)
    print(json.dumps({
        "model": args.model, "device": args.device, "batch": args.batch, "max_new_tokens": args.max_new_tokens,
        "torch": torch.__version__,
        "plain_forward_ms": round(1000 * plain, 2),
        "lora2_forward_ms": round(1000 * lora, 2),
        "lora2_over_plain": round(lora / plain, 2),
        "lora2_folded_forward_ms": round(1000 * folded, 2),
        "lora2_folded_over_plain": round(folded / plain, 2),
        "guided_ms_per_new_token": round(1000 * total / steps, 2),  # the whole generate (prefills included) per step
        "guided_per_token_over_plain_forward": round(total / steps / plain, 2),
        "per_step_ms": {k: round(1000 * v / steps, 2) for k, v in spent.items() if "prefill" not in k},
        "prefill_ms": {k: round(1000 * v, 2) for k, v in spent.items() if "prefill" in k},
        "kernel_launches_per_step": round(launches / steps, 1) if cuda else None,
    }, indent=2))


class _Proxy:
    """A scorer whose calls go through ``call`` (timing); every other attribute is the scorer's."""

    def __init__(self, scorer, call):
        object.__setattr__(self, "_scorer", scorer)
        object.__setattr__(self, "_call", call)

    def __call__(self, *a, **kw):
        return self._call(*a, **kw)

    def __getattr__(self, name):
        return getattr(self._scorer, name)

    def __setattr__(self, name, value):
        setattr(self._scorer, name, value)


if __name__ == "__main__":
    main()
