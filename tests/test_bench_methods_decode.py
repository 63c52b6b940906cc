"""bench/methods_decode.py on the micro-pairs task (tests/shared_pieces): two built-in methods against plain generate.

Rewarded Soups and the logit ensemble share one pair of micro DPO experts: the first method's run trains them
(the bench marks it and names what it built), the second trains nothing. Every figure the bench reports is
checked against the runs' stores: decoding seconds are the rows' generation_seconds, tokens are the stored
responses re-encoded with the policy's tokenizer, and each ratio is the reported tokens/s over the baseline's.
No timing is asserted.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from mobench.store import Store

ROOT = Path(__file__).resolve().parents[1]
MICRO_EXPERTS = ["experts.steps=2", "experts.batch_size=2", "experts.max_length=64", "experts.lora_r=4", "experts.n_pairs=4"]


def test_bench_reports_each_methods_tokens_per_second_against_plain_generate(smol_tokenizer, tmp_path):
    from mobench.models import micro_causal_lm

    policy = tmp_path / "policy"
    micro_causal_lm(smol_tokenizer, seed=0).save_pretrained(policy)
    smol_tokenizer.save_pretrained(policy)
    results = tmp_path / "res"
    results.mkdir()  # an empty folder that is not a store yet (as the default temporary one): the first run makes it one
    args = ["--plugins-dir", str(ROOT / "tests" / "shared_pieces"), "--task", "micro-pairs", "--methods",
            "rewarded-soups,logit-ensemble", "--prompts", "2", "--points", "2", "--device", "cpu", "--results", str(results)]
    for item in MICRO_EXPERTS:
        args += ["-o", item]
    # a fresh cache: the experts are built by this run, so which method trained them is known
    env = {**os.environ, "MOBENCH_MICRO_POLICY": str(policy), "MOBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "methods_decode.py"), *args], capture_output=True,
                          text=True, env=env, timeout=3600)  # a hang guard, not a speed limit
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)

    command = shlex.split(out["command"])
    assert command[1].endswith("bench/methods_decode.py") and command[2:] == args
    assert out["machine"]["device"] == "cpu" and out["machine"]["torch_threads"] >= 1 and out["machine"]["cpu_count"] >= 1
    base = out["baseline"]
    # the task's decoding settings (micro-pairs: batch 3, 4 new tokens), the same 2 prompts, once per grid point
    assert (base["policy"], base["batch_size"], base["max_new_tokens"], base["prompts"], base["passes"]) == (str(policy), 3, 4, 2, 2)
    assert base["tokens"] > 0 and base["tokens_per_s"] == base["tokens"] / base["seconds"]
    assert set(out["methods"]) == set(out["ratio"]) == {"rewarded-soups", "logit-ensemble"}

    for name, figures in out["methods"].items():
        assert "error" not in figures, figures
        [run] = [r for r in Store(results).runs("micro-pairs") if r.read_manifest()["method"] == name]
        manifest, rows, generations = run.read_manifest(), run.rows(), run.generations()
        assert figures["run_id"] == run.run_id and manifest["prompts_sha256"] == base["prompts_sha256"]  # the same prompts
        assert f"--method {name} " in figures["command"] and all(f"-o {item}" in figures["command"] for item in MICRO_EXPERTS)
        assert len(rows) == figures["points"] == 2 and len(generations) == figures["responses"] == 2 * 2
        assert (figures["batch_size"], figures["max_new_tokens"]) == (base["batch_size"], base["max_new_tokens"])
        assert figures["seconds"] == sum(r["generation_seconds"] for r in rows)
        assert figures["prepare_seconds"] == manifest["prepare_seconds"]
        assert figures["offline_seconds"] == sum(r["offline_seconds"] for r in rows) == 0
        stored = [len(smol_tokenizer(g["response"], add_special_tokens=False)["input_ids"]) for g in generations]
        assert figures["tokens"] == sum(stored)
        assert figures["tokens_per_s"] == figures["tokens"] / figures["seconds"]
        assert figures["ratio"] == out["ratio"][name] == figures["tokens_per_s"] / base["tokens_per_s"]

    # the first run trained the two experts (one per objective); the second found them in the cache
    soups, ensemble = out["methods"]["rewarded-soups"], out["methods"]["logit-ensemble"]
    assert soups["trained"] and [b["kind"] for b in soups["builds"]] == ["dpo-experts", "dpo-experts"]
    assert not ensemble["trained"] and ensemble["builds"] == []
    assert out["methods"]["logit-ensemble"]["batched_points"] == 2 and soups["batched_points"] == 1
