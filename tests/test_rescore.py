"""Re-scoring a store with the task's current objectives, and the empty-reply floor that motivated it.

The store is made by the real command line on the toy task (tests/toy: its `letters` method writes
round(unit * w_i) letters; its objectives count them), so every score is known by hand.
"""

import json
import shutil

import numpy as np
import pytest

from helpers import TOY, mobench
from mobench.api import MobenchError, Normalisation, TaskInstance
from mobench.leaderboard import build, calibration_id
from mobench.provenance import scoring_rule_of
from mobench.rescore import rescore
from mobench.runner import RunConfig, run_id
from mobench.scorers import ScoredObjective, floor_empty, training_floor
from mobench.store import Store

TOYDIR = str(TOY)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Two toy runs: unit 10 (no empty reply) and unit 0 (every reply empty)."""
    root = tmp_path_factory.mktemp("rescore") / "store"
    for unit in ("10", "0"):
        proc = mobench("--plugins-dir", TOYDIR, "run", "-m", "letters", "-t", "toy", "-o", f"unit={unit}",
                       "--results", str(root))
        assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture
def store(template, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(template, root)
    return root


def runs_by_unit(root):
    out = {}
    for run in Store(root).runs("toy"):
        out[run.read_manifest()["config"]["options"]["unit"]] = run
    return out


def toy_task(objectives):
    return TaskInstance(name="toy", scale="tiny", policy="none", objectives=objectives,
                        prompts=[f"prompt {i}" for i in range(4)],
                        normalisation={"count-a": Normalisation(1.0, 2.0), "count-b": Normalisation(0.0, 4.0)},
                        reference_point=(-3.0, -3.0), grid_points=3)


def counter(letter, factor=1.0, empty_value=None):
    def fn(prompts, responses):
        return [empty_value if (empty_value is not None and not r.strip()) else factor * r.count(letter) for r in responses]
    return fn


# --- the floor itself -------------------------------------------------------------------------------


def test_floor_caps_only_empty_replies_from_the_objectives_side():
    responses = ["", "  \n\t", "text", ""]
    assert floor_empty([5.0, -9.0, 5.0, 0.5], responses, floor=1.0) == [1.0, -9.0, 5.0, 0.5]
    # lower is better: the floor is a ceiling from below (an empty reply scores no better than it)
    assert floor_empty([5.0, -9.0, -9.0, 0.5], responses, floor=1.0, direction=-1) == [5.0, 1.0, -9.0, 1.0]


def test_a_scored_objective_applies_its_floor_and_nothing_else():
    fn = counter("a", empty_value=7.0)
    floored = ScoredObjective("count-a", 1, fn, empty_floor=-2.0)
    plain = ScoredObjective("count-a", 1, fn)
    responses = ["aa", "", " ", "ba"]
    assert floored.score(["p"] * 4, responses) == [2.0, -2.0, -2.0, 1.0]
    assert plain.score(["p"] * 4, responses) == [2.0, 7.0, 7.0, 1.0]


def test_training_floor_is_the_5th_percentile_of_the_training_sides_scores_by_hand():
    rng = np.random.default_rng(3)
    n = 40
    pairs = [("c", f"chosen {i}", "" if i % 7 == 0 else f"rejected {i}") for i in range(n)]
    chosen, rejected = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    w = [0.5, -1.0, 2.0]
    from mobench.scorers import heldout_split

    _, train = heldout_split(n, seed=0)
    by_hand = [float(chosen[i] @ w) for i in train] + [float(rejected[i] @ w) for i in train if i % 7]
    assert training_floor(pairs, chosen, rejected, w, seed=0) == pytest.approx(np.quantile(by_hand, 0.05), abs=1e-5)


# --- rescore ----------------------------------------------------------------------------------------


def test_rescore_with_unchanged_objectives_changes_no_score_and_keeps_the_files_it_replaced(store):
    before = {u: (r.rows_path.read_bytes(), r.generations_path.read_bytes(), r.read_manifest()) for u, r in runs_by_unit(store).items()}
    proc = mobench("--plugins-dir", TOYDIR, "rescore", "-t", "toy", "--results", str(store))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("3 points rescored, largest change of a point's z 0.000") == 2
    for unit, run in runs_by_unit(store).items():
        rows, gens, manifest = before[unit]
        strip = lambda rs: [{k: v for k, v in r.items() if k != "scoring_seconds"} for r in rs]
        assert strip(run.rows()) == strip([json.loads(x) for x in rows.splitlines()])
        assert [g["scores"] for g in run.generations()] == [json.loads(x)["scores"] for x in gens.splitlines()]
        [entry] = run.read_manifest()["rescores"]
        backup = run.path / entry["backup"]
        assert (backup / "rows.jsonl").read_bytes() == rows and (backup / "generations.jsonl").read_bytes() == gens
        assert json.loads((backup / "manifest.json").read_text()) == manifest
        assert entry["calibration_before"] == calibration_id(manifest) == calibration_id(run.read_manifest())


def test_rescore_under_a_new_rule_recomputes_every_point_exactly_and_splits_the_board(store):
    runs = runs_by_unit(store)
    old_manifest = runs["0"].read_manifest()
    # the new rule: count-a doubled, and an empty reply (unit 0: all of them) would get 5 but is floored at -1
    task = toy_task([
        ScoredObjective("count-a", 1, counter("a", 2.0, empty_value=5.0), {"kind": "double count", "letter": "a"}, empty_floor=-1.0),
        ScoredObjective("count-b", 1, counter("b"), {"kind": "letter count", "letter": "b"}),
    ])
    done = rescore(Store(store), task, methods=["letters"])
    assert sorted(d.points for d in done) == [3, 3] and not any(d.skipped for d in done)
    rows10 = {r["preference_key"]: r for r in runs["10"].rows()}
    # unit 10: w = (0.5, 0.5) writes "aaaaabbbbb": count-a 2 * 5 = 10, z (10 - 1) / 2; count-b 5, z 5 / 4
    mid = rows10["0.500000,0.500000"]
    assert mid["mean"] == {"count-a": 10.0, "count-b": 5.0}
    assert mid["normalised"] == pytest.approx({"count-a": 4.5, "count-b": 1.25})
    for row in runs["0"].rows():  # every reply empty: count-a is the floor, -1, at every prompt
        assert row["mean"]["count-a"] == -1.0 and row["normalised"]["count-a"] == pytest.approx(-1.0)
    assert {g["scores"]["count-a"] for g in runs["0"].generations()} == {-1.0}
    new_manifest = runs["0"].read_manifest()
    assert new_manifest["normalisation"]["count-a"] == {"mean": 1.0, "std": 2.0}
    assert new_manifest["objective_provenance"]["count-a"]["kind"] == "double count"
    assert new_manifest["rescores"][0]["scoring_before"] == scoring_rule_of(old_manifest["objective_provenance"])
    assert calibration_id(new_manifest) != calibration_id(old_manifest)
    # a run scored under the old rule is not ranked beside the rescored ones: it is left out with a note
    old = Store(store).run("toy", "letters", "tiny-s0-old")
    old.path.mkdir(parents=True)
    for name in ("manifest.json", "rows.jsonl", "generations.jsonl"):
        shutil.copy2(runs["0"].path / new_manifest["rescores"][0]["backup"] / name, old.path / name)
    board = build(Store(store), "toy", resamples=50)
    assert any("under another calibration" in n for n in board.notes)
    assert {e.run_id for e in board.entries} == {runs["0"].run_id, runs["10"].run_id}


def test_a_running_run_and_a_damaged_run_are_skipped_untouched(store):
    runs = runs_by_unit(store)
    runs["10"].update_manifest(status="running")
    lines = runs["0"].generations_path.read_bytes().splitlines(keepends=True)
    runs["0"].generations_path.write_bytes(b"".join(lines[1:]))  # one stored response lost
    snapshot = {u: (r.rows_path.read_bytes(), r.generations_path.read_bytes()) for u, r in runs.items()}
    task = toy_task([ScoredObjective("count-a", 1, counter("a")), ScoredObjective("count-b", 1, counter("b"))])
    done = {d.run_id: d for d in rescore(Store(store), task)}
    assert "running" in done[runs["10"].run_id].skipped
    assert "stored responses" in done[runs["0"].run_id].skipped
    for u, r in runs.items():
        assert (r.rows_path.read_bytes(), r.generations_path.read_bytes()) == snapshot[u]
        assert not (r.path / "rescored").exists()


def test_rescore_of_a_missing_store_or_one_without_the_task_is_one_line_and_exit_2(tmp_path):
    empty = Store(tmp_path / "empty")
    empty.ensure()
    for root, fragment in ((tmp_path / "none", "no results store"), (empty.root, "no run of 'toy'")):
        proc = mobench("--plugins-dir", TOYDIR, "rescore", "-t", "toy", "--results", str(root))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and fragment in proc.stderr


def test_rescore_in_process_refuses_an_empty_selection(store):
    task = toy_task([ScoredObjective("count-a", 1, counter("a")), ScoredObjective("count-b", 1, counter("b"))])
    with pytest.raises(MobenchError, match="no run of"):
        rescore(Store(store), task, methods=["nonexistent"])


# --- the scoring rule in run ids ----------------------------------------------------------------------


def test_the_scoring_rule_is_in_the_run_id_but_paths_and_held_out_statistics_are_not():
    from mobench.grid import simplex_grid

    def rid(**info):
        objective = ScoredObjective("count-a", 1, counter("a"), {"scorer": "head", **info})
        task = toy_task([objective, ScoredObjective("count-b", 1, counter("b"))])
        return run_id(RunConfig(method="letters", task="toy"), simplex_grid(2, 3), task)

    base = rid(empty_reply_floor=-1.0)
    assert rid(empty_reply_floor=-1.0, artifact="/elsewhere", heldout_accuracy=0.7, data=[{"file": "/x"}]) == base
    assert rid(empty_reply_floor=-1.0 + 1e-9) == base  # float noise below 6 significant digits
    assert rid(empty_reply_floor=-1.5) != base and rid() != base
