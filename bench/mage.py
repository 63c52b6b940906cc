"""Speed and peak memory of MAGE's guided decoding vs plain generate of the base and vs the ensemble proxy; prints JSON.

Variants: ``generate`` (the Bone-Soup base merged into the weights, plain generate), ``mage`` (merged proxy, the
chunk's merges folded into the weights: every row here has one preference), ``mage-per-row`` (the same with
``chunk_merge=False``: per-row adapter scaling), ``mage-ensemble`` (per-objective proxies). Each variant runs in
its own subprocess so its peak memory (RSS on CPU, max allocated on CUDA) is its own; ratios are against
``generate`` and ``mage-per-row`` of the same run. Adapters are random LoRAs (speed does not depend on what they
learned). Example:
    python bench/mage.py --model micro
    python bench/mage.py --model smollm2-135m-instruct --batch 32 --max-new-tokens 32 --variants generate,mage,mage-per-row
    python bench/mage.py --model smollm2-135m-instruct --device cuda --batch 16 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

PROMPT = "Human: Can you give me some advice on how to sleep better at night?\n\nAssistant:"
VARIANTS = ("generate", "mage", "mage-per-row", "mage-ensemble")


def build(args):
    import torch
    from peft import LoraConfig, get_peft_model

    from mobench.models import SMOLLM2_ALIAS, load_causal_lm, load_tokenizer, micro_causal_lm

    if args.model == "micro":
        tok = load_tokenizer(SMOLLM2_ALIAS)
        model = micro_causal_lm(tok, seed=0).to(args.device)
    else:
        model, tok = load_causal_lm(args.model, device=args.device)
    torch.manual_seed(0)
    cfg = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear", init_lora_weights=False)
    names = ["bone0", "bone1", "dpo_a", "dpo_b", "value_a", "value_b"]
    model = get_peft_model(model, cfg, adapter_name=names[0])
    for n in names[1:]:
        model.add_adapter(n, cfg)
    for p in model.parameters():  # random B at init scale would swamp a real model; keep the deltas small
        if p.requires_grad:
            p.data.mul_(0.01)
    model.eval()
    heads = (torch.randn(2, model.config.hidden_size) * 0.01, torch.zeros(2))
    return model.to(args.device), tok, heads


def run_variant(args) -> dict:
    import resource

    import torch

    from mobench.api import Preference
    from mobench.methods.mage import MageOptions
    from mobench.methods.mage.bonesoup import bone_soup_coefficients
    from mobench.methods.mage.decoder import MageDecoder
    from mobench.merging import merge_lora_adapters

    model, tok, heads = build(args)
    prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True) if tok.chat_template else PROMPT
    prompts = [prompt] * args.batch
    pref = Preference((0.5, 0.5))
    gen = {"max_new_tokens": args.max_new_tokens, "do_sample": False, "batch_size": args.batch}
    if args.variant == "generate":
        merge_lora_adapters(model, ["bone0", "bone1"], bone_soup_coefficients(pref.weights, 0.7), name="base")
        model = model.merge_and_unload()  # the base alone, decoded the cheapest way: soup merged into the weights
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)

        def fn():  # every variant makes exactly max_new_tokens per row (EOS suppressed), so tokens/s compare
            with torch.no_grad():
                ids = model.generate(**enc, max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens,
                                     do_sample=False, pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
            return ids[:, enc["input_ids"].shape[1]:].tolist()
    else:
        proxy = "ensemble" if args.variant == "mage-ensemble" else "merged"
        options = MageOptions(proxy=proxy, top_k=args.top_k, chunk_merge=args.variant != "mage-per-row")
        decoder = MageDecoder(model, tok, options, ["bone0", "bone1"],
                              ["dpo_a", "dpo_b"], ["value_a", "value_b"], heads)
        fn = lambda: decoder.generate(prompts, [pref], gen, eos_token_ids=[-1])[0]
    if str(args.device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    fn()  # warm-up
    if str(args.device).startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if str(args.device).startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = args.batch * args.max_new_tokens  # fixed length: EOS is suppressed in every variant
    out = {"variant": args.variant, "seconds": round(seconds, 3), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 2),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if str(args.device).startswith("cuda"):
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="micro", help="micro, or a model alias/folder/hub id (smollm2-135m-instruct)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = []
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        sys.exit(f"bench/mage.py: unknown variant(s) {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    for variant in chosen:
        cmd = [sys.executable, __file__, "--variant", variant, "--model", args.model, "--device", args.device,
               "--batch", str(args.batch), "--max-new-tokens", str(args.max_new_tokens), "--top-k", str(args.top_k),
               "--lora-r", str(args.lora_r)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:  # say which variant failed and why, not only "exit status 1"
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            sys.exit(f"bench/mage.py: variant {variant!r} failed (exit {proc.returncode}):\n{tail}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    speed = {r["variant"]: r["tokens_per_s"] for r in results}
    ratios = {f"{v}_vs_{against}": round(speed[v] / speed[against], 3)
              for against in ("generate", "mage-per-row") if against in speed for v in speed if v != against}
    print(json.dumps({"model": args.model, "device": args.device, "batch": args.batch,
                      "max_new_tokens": args.max_new_tokens, "top_k": args.top_k, "results": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
