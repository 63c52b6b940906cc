"""bench/response_words.py: words a response per grid point, from a store's committed responses, by hand."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

from mobench.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("response_words", ROOT / "bench" / "response_words.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(store: Store, method: str, run_id: str, started: str, points: dict[str, list[str]]) -> None:
    run = store.run("t", method, run_id)
    run.path.mkdir(parents=True)
    run.write_manifest({"method": method, "task": "t", "started_at": started})
    for key, responses in points.items():
        run.append_point({"preference_key": key, "attempt": 0},
                         [{"preference_key": key, "attempt": 0, "prompt": f"p{i}", "response": r} for i, r in enumerate(responses)])


def test_mean_and_standard_error_per_point_match_hand_values(tmp_path, capsys):
    store = Store(tmp_path / "res")
    store.ensure()
    # (0, 1): 3 and 1 words -> mean 2, sd sqrt(2), se 1; (1, 0): one empty reply and "a  b\nc" (3 words) -> 1.5, se 1.5
    _run(store, "m", "old", "2026-01-01", {"0,1": ["x", "x"]})
    _run(store, "m", "new", "2026-01-02", {"0,1": ["a b c", "a"], "1,0": ["", "a  b\nc"]})
    _run(store, "other", "r", "2026-01-01", {"0,1": ["one two"]})
    bench = _bench()
    table = bench.collect(store.root, "t")
    assert table["m"]["run"] == "new"  # the newest run of a method
    assert table["m"]["points"]["0,1"] == {"n": 2, "mean": 2.0, "se": 1.0}
    assert table["m"]["points"]["1,0"]["mean"] == 1.5 and math.isclose(table["m"]["points"]["1,0"]["se"], 1.5)
    assert table["other"]["points"]["0,1"] == {"n": 1, "mean": 2.0, "se": 0.0}
    assert list(bench.collect(store.root, "t", ["other"])) == ["other"]
    assert bench.main(["--task", "t", "--results", str(store.root), "--methods", "m"]) == 0
    assert json.loads(capsys.readouterr().out)["m"]["points"]["0,1"]["mean"] == 2.0
    assert bench.main(["--task", "t", "--results", str(store.root), "--markdown"]) == 0
    assert "| m | new | 2.0 ± 1.0 | 1.5 ± 1.5 |" in capsys.readouterr().out
    assert bench.main(["--task", "nothing", "--results", str(store.root)]) == 2
