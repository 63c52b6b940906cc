"""A method built from the core's shared pieces in one file, importing public names only, runs end to end."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from helpers import mobench

PLUGIN_DIR = Path(__file__).resolve().parent / "shared_pieces"
PUBLIC = {"mobench", "mobench.api", "mobench.options", "mobench.training", "mobench.decoding", "mobench.merging",
          "mobench.models", "mobench.toolkit", "mobench.artifacts"}


def test_the_plugin_file_imports_only_public_names():
    tree = ast.parse((PLUGIN_DIR / "expert_switch.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("mobench")}
    assert modules and modules <= PUBLIC, modules - PUBLIC


def test_a_method_from_shared_pieces_trains_experts_and_switches_between_them(tmp_path, smol_tokenizer):
    from mobench.models import micro_causal_lm

    policy = tmp_path / "micro"
    micro_causal_lm(smol_tokenizer, seed=0).save_pretrained(policy)
    smol_tokenizer.save_pretrained(policy)
    env = {"MOBENCH_MICRO_POLICY": str(policy), "MOBENCH_CACHE": str(tmp_path / "cache")}
    common = ("--plugins-dir", str(PLUGIN_DIR))
    listed = mobench(*common, "options", "expert-switch", "--format", "json", env=env, check=True)
    keys = {row["key"]: row["value"] for row in json.loads(listed.stdout)["options"]}
    assert keys["experts.steps"] == 2 and keys["prefer_last"] is False
    proc = mobench(*common, "run", "--method", "expert-switch", "--task", "micro-pairs", "--results", str(tmp_path / "res"),
                   "--device", "cpu", "-o", "prefer_last=true", env=env)
    assert proc.returncode == 0, proc.stderr
    [run] = list((tmp_path / "res" / "micro-pairs" / "expert-switch").iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["method_options"]["prefer_last"] is True and manifest["method_options"]["experts"]["steps"] == 2
    experts = manifest["method_provenance"]["experts"]
    assert set(experts) == {"brevity", "sentiment"} and all(e["train"]["steps"] == 2 for e in experts.values())
    gens = [json.loads(x) for x in (run / "generations.jsonl").read_text().splitlines()]
    by_point = {}
    for g in gens:
        by_point.setdefault(g["preference_key"], []).append(g["response"])
    assert len(by_point) == 3 and all(len(v) == 3 for v in by_point.values())
    # each point decoded with the expert of its largest weight; the tie goes to the last with prefer_last
    chosen = manifest["method_provenance"]["chosen"]
    assert chosen == {"0.000000,1.000000": "sentiment", "0.500000,0.500000": "sentiment", "1.000000,0.000000": "brevity"}
    assert by_point["0.500000,0.500000"] == by_point["0.000000,1.000000"]
