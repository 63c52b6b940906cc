"""Decoding bench: logit ensemble (K experts) vs plain generate of one expert; grid points batched vs looped.

Prints one JSON object. Each measurement runs in its own subprocess so that its peak memory (RSS on
CPU, torch.cuda.max_memory_allocated on CUDA) is its own. Every row generates exactly max_new_tokens
tokens (EOS suppressed) so tokens/s compare equal work. The experts are random rank-r LoRA adapters:
the bench measures speed and memory, not quality.

    python bench/decoding.py --model micro
    python bench/decoding.py --model smollm2-135m-instruct --device cuda --prompts 32 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

MEASUREMENTS = ("generate-one-expert", "loop-one-expert", "ensemble", "grid-looped", "grid-batched")


def _prompts(tokenizer, n: int) -> list[str]:
    """The first n real HH-RLHF harmless-base user turns, chat-templated for the policy."""
    import gzip
    from pathlib import Path

    data = Path(os.environ.get("MOBENCH_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
    out = []
    with gzip.open(data / "hh-rlhf/harmless-base/test.jsonl.gz", "rt") as fh:
        for line in fh:
            text = json.loads(line)["chosen"]
            turn = text.split("\n\nHuman: ", 1)[1].split("\n\nAssistant:", 1)[0].strip()
            messages = [{"role": "user", "content": turn[:300]}]
            if tokenizer.chat_template:
                out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            else:
                out.append(f"\n\nHuman: {turn[:300]}\n\nAssistant:")
            if len(out) == n:
                break
    return out


def _setup(args):
    import torch
    from peft import LoraConfig, get_peft_model

    from mobench.models import SMOLLM2_ALIAS, default_device, load_causal_lm, load_tokenizer, micro_causal_lm

    device = args.device or default_device()
    if args.model == "micro":
        tok = load_tokenizer(SMOLLM2_ALIAS)
        model = micro_causal_lm(tok, seed=args.seed, hidden=args.micro_hidden, layers=args.micro_layers).to(device)
    else:
        model, tok = load_causal_lm(args.model, device=device)
    torch.manual_seed(args.seed)
    names = [f"expert{i}" for i in range(args.experts)]
    config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(model, config, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config)
    model.eval()
    return model, tok, names, device


def _grid(points: int) -> list[list[float]]:
    return [[i / (points - 1), 1 - i / (points - 1)] for i in range(points)] if points > 1 else [[0.5, 0.5]]


def _measure(args) -> dict:
    """Run one measurement in this process; return its figures."""
    import psutil
    import torch

    from mobench.decoding.loop import DecodeSettings, ModelScorer, decode_tokens, logit_ensemble

    torch.set_num_threads(args.threads or torch.get_num_threads())
    model, tok, names, device = _setup(args)
    prompts = _prompts(tok, args.prompts)
    n_new, bs = args.max_new_tokens, args.batch_size
    no_eos = [-1]

    def hf_generate(rows):
        model.set_adapter(names[0])
        tok.padding_side = "left"
        for start in range(0, len(rows), bs):
            enc = tok(rows[start : start + bs], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                model.generate(**enc, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
        return len(rows) * n_new

    def loop(scorer_names, rows, weights, batch):
        scorers = [ModelScorer(model, n) for n in scorer_names]
        s = DecodeSettings(max_new_tokens=n_new, batch_size=batch, seed=args.seed)
        ids = decode_tokens(scorers, logit_ensemble, tok, rows, weights, s, no_eos)
        return sum(len(r) for r in ids)

    grid = _grid(args.grid)
    what = args.only
    if what == "generate-one-expert":
        run = lambda: hf_generate(prompts)  # noqa: E731
    elif what == "loop-one-expert":
        run = lambda: loop(names[:1], prompts, [[1.0]] * len(prompts), bs)  # noqa: E731
    elif what == "ensemble":
        w = [1.0 / len(names)] * len(names)
        run = lambda: loop(names, prompts, [w] * len(prompts), bs)  # noqa: E731
    elif what == "grid-looped":
        run = lambda: sum(loop(names, prompts, [w] * len(prompts), bs) for w in grid)  # noqa: E731
    elif what == "grid-batched":
        # as the logit-ensemble plugin does: prompt-major rows, batch_size prompts at every grid point
        rows = [p for p in prompts for _ in grid]
        weights = [w for _ in prompts for w in grid]
        run = lambda: loop(names, rows, weights, min(args.max_rows, bs * len(grid)))  # noqa: E731
    else:
        raise SystemExit(f"unknown measurement {what!r}")

    # warm-up on a slice (first-call allocations, kernel selection), then the timed run
    loop(names[:1], prompts[:1], [[1.0]], 1)
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    tokens = run()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    # ru_maxrss is the process-lifetime peak (KiB on Linux): this subprocess only ran this measurement
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {
        "seconds": round(seconds, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 2),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "rss_before_mb": round(rss_before / 2**20, 1),
    }
    if str(device).startswith("cuda"):
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="micro", help="'micro' (random 2-layer Llama) or a model alias / hub id / folder")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when visible)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--grid", type=int, default=6, help="grid points on the 2-objective simplex")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-rows", type=int, default=64, help="row cap of a batched-grid decoding batch")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--experts", type=int, default=2)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--micro-hidden", type=int, default=64)
    p.add_argument("--micro-layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=MEASUREMENTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.only:
        print(json.dumps(_measure(args)))
        return

    results = {}
    for what in MEASUREMENTS:
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--only", what]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
        results[what] = json.loads(proc.stdout.strip().splitlines()[-1])
    tps = {k: v["tokens_per_s"] for k, v in results.items()}
    print(
        json.dumps(
            {
                "bench": "decoding",
                "config": {k: v for k, v in vars(args).items() if k != "only"},
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
                "results": results,
                "ensemble_vs_generate_tokens_per_s_ratio": round(tps["ensemble"] / tps["generate-one-expert"], 3),
                "ensemble_vs_loop_one_expert_ratio": round(tps["ensemble"] / tps["loop-one-expert"], 3),
                "grid_batching_speedup": round(results["grid-looped"]["seconds"] / results["grid-batched"]["seconds"], 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
