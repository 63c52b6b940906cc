"""bench/mage_sweep.py on a micro policy: two decoding settings over the cached pieces, on validation prompts only.

The Bone-Soup k search and every sweep decode see only the task's validation prompts; each row's HV is the
hypervolume of its own grid points; the default is the row of highest HV; the table marks it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mobench.api import RunContext, TaskInstance
from helpers import TEST_DEVICE, TEST_DTYPE


def _script():
    path = Path(__file__).resolve().parents[1] / "bench" / "mage_sweep.py"
    spec = importlib.util.spec_from_file_location("mage_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_decodes_validation_prompts_only_and_picks_the_best_hv(smol_tokenizer, data_dir, tmp_path, monkeypatch):
    from test_mage import MICRO_BUDGETS, micro_mage_task

    from mobench.api import MobenchError
    from mobench.methods.mage import Mage, MageOptions, bonesoup
    from mobench.methods.mage.decoder import MageDecoder
    from mobench.metrics import hypervolume

    sweep = _script()
    task = micro_mage_task(smol_tokenizer, data_dir, tmp_path, monkeypatch, validation=2, grid_points=3)
    options = MageOptions.preset("tiny").replace({**MICRO_BUDGETS, "k_prompts": 2, "k_rule": "search"})
    seen: list[list[str]] = []
    search = bonesoup.choose_k
    monkeypatch.setattr(bonesoup, "choose_k", lambda model, tok, bones, objs, norm, prompts, *a, **kw:
                        seen.append(list(prompts)) or search(model, tok, bones, objs, norm, prompts, *a, **kw))
    decode = MageDecoder.generate
    ks: list[tuple] = []  # the Bone-Soup k each sweep decode ran with
    monkeypatch.setattr(MageDecoder, "generate", lambda self, prompts, *a, **kw: seen.append(list(prompts)) or
                        ks.append(tuple(self.k)) or decode(self, prompts, *a, **kw))

    context = RunContext(seed=0, device=TEST_DEVICE, dtype=TEST_DTYPE)
    method = Mage(options)
    method.name = "mage"
    method.prepare(task, context)
    settings = [{"alpha": 0.5, "candidates": "top-k"}, {"alpha": 2.0, "candidates": "top-p"},
                {"alpha": 0.5, "candidates": "top-k", "k": [1.0, 1.0]}]
    streamed: list[dict] = []
    result = sweep.sweep(method, task, context, settings, on_row=streamed.append)
    assert streamed == result["rows"]  # each row handed out as it was scored (the same dicts, in order)

    assert seen and all(set(p) <= set(task.validation_prompts) for p in seen)  # never an evaluation prompt
    assert len(seen) == 1 + 3  # the k search, then one decode per setting
    k = method.provenance()["bone_soup_k"]
    # a setting's k is the decoder's Bone-Soup rescaling alone; without one the prepared (searched) k decodes
    assert ks == [tuple(k["k"]), tuple(k["k"]), (1.0, 1.0)] and method.decoder.k == tuple(k["k"])
    assert set(k["k"]) <= set(bonesoup.k_grid()) and k["n_prompts"] == 2 and "validation" in k["rule"]
    assert [r["setting"] for r in result["rows"]] == settings and result["n_validation_prompts"] == 2
    for row in result["rows"]:
        points = list(row["points"].values())
        assert len(points) == 3 and row["hv"] == pytest.approx(hypervolume([list(p.values()) for p in points], (-3.0, -3.0)))
    best = max(result["rows"], key=lambda r: r["hv"])
    assert result["default"] == best["setting"]
    table = sweep.markdown(result)
    assert table.count("\n| ") == 3 and table.count("(default)") == 1  # the three rows (the header starts the table)
    assert "| Bone-Soup k |" in table and "| 1, 1 |" in table and table.count("| rule (") == 2
    assert sweep.settings_grid([0.25, 1], ["top-k", "top-p"]) == [
        {"alpha": 0.25, "candidates": "top-k"}, {"alpha": 1.0, "candidates": "top-k"},
        {"alpha": 0.25, "candidates": "top-p"}, {"alpha": 1.0, "candidates": "top-p"}]
    assert sweep.parse_ks("rule; 1,1") == [None, [1.0, 1.0]]
    assert sweep.settings_grid([1], ["top-k"], [None, [1.0, 1.0]]) == [
        {"alpha": 1.0, "candidates": "top-k", "k": None}, {"alpha": 1.0, "candidates": "top-k", "k": [1.0, 1.0]}]
    with pytest.raises(MobenchError, match="positive"):
        sweep.parse_ks("rule;0,1")
    with pytest.raises(MobenchError, match="2 positive factors needed"):
        sweep.sweep(method, task, context, [{"alpha": 1.0, "candidates": "top-k", "k": [1.0]}])
    # the decoder a setting gets shares the prepared pieces; a non-decoding option would need a new prepare
    with pytest.raises(MobenchError, match="only decoding constants"):
        method.decoder_for(method.options.replace({"b": 0.8}))
    with pytest.raises(MobenchError, match="no validation prompts"):
        sweep.sweep(method, TaskInstance(**{**task.__dict__, "validation_prompts": []}), context, settings)
