"""The leaderboard from the store: paired bootstrap over prompts, seeds, scales, per-point view.

Every test writes synthetic per-prompt scores into a real Store (rows and generations through
RunDir.append_point, as the runner does) and reads them back through mobench.leaderboard.
"""

import itertools
import os
import json
import re

import numpy as np
import pytest

from helpers import TOY
from mobench.api import MobenchError
from mobench.leaderboard import build, leaderboard
from mobench.store import Store

NAMES = ("count-a", "count-b")  # the toy task's objectives, so the CLI accepts --task toy


def write_run(store, method, raw, weights, *, names=NAMES, directions=None, normalisation=None, reference_point=None,
              seed=0, scale="tiny", prompts="p" * 64, stamp="2026-01-01T00:00:00+00:00", status="complete",
              options=None, generations=True, task="toy", run_id=None, grid=None, responses=None):
    """A run whose grid point p has per-prompt raw scores raw[p] (shape N x m) and, given, responses[p][j]; returns its RunDir."""
    raw = np.asarray(raw, dtype=float)
    names = list(names)
    directions = directions or {n: 1 for n in names}
    normalisation = normalisation or {n: {"mean": 0.0, "std": 1.0} for n in names}
    reference_point = reference_point or [0.0] * len(names)
    run_id = run_id or f"{scale}-s{seed}-{method}-{stamp[:19].replace(':', '')}-{options or ''}"
    run = store.run(task, method, run_id)
    n = raw.shape[1]
    run.write_manifest({
        "run_id": run_id, "task": task, "method": method, "scale": scale, "seed": seed,
        "config": {"method": method, "task": task, "scale": scale, "grid": None, "weights": None, "limit": None,
                   "seed": seed, "options": options or {}},
        "objectives": names, "directions": directions, "normalisation": normalisation,
        "reference_point": reference_point, "grid": [list(x) for x in (grid or weights)], "n_prompts": n,
        "prompts_sha256": prompts, "generation": {}, "method_options": None, "policy": "none",
        "started_at": stamp, "finished_at": stamp, "status": status,
    })
    for p, w in enumerate(weights):
        key = ",".join(f"{x:.6f}" for x in w)
        attempt = f"a{p}"
        means = {name: float(raw[p, :, i].mean()) for i, name in enumerate(names)}
        z = {name: directions[name] * (means[name] - normalisation[name]["mean"]) / normalisation[name]["std"] for name in names}
        row = {"preference_key": key, "weights": list(w), "objectives": names, "mean": means, "stderr": {},
               "normalised": z, "n": n, "wall_seconds": 1.0, "attempt": attempt}
        gens = [{"preference_key": key, "attempt": attempt, "prompt_index": j,
                 "scores": {name: float(raw[p, j, i]) for i, name in enumerate(names)},
                 **({} if responses is None else {"response": responses[p][j]})} for j in range(n)]
        if generations:
            # an abandoned attempt's generations (no row) must be ignored
            run.append_point(row, [{**g, "attempt": "dead", "scores": {k: 1e6 for k in names}} for g in gens] + gens)
        else:
            run.append_point(row, [])
    return run


def grid2(k):
    return [(i / (k - 1), 1 - i / (k - 1)) for i in range(k)]


def front_scores(weights, n, rng, shift=0.0, noise=0.3):
    """Per-prompt scores around a concave front (w_1 -> objective 1), plus a shift on every objective."""
    centre = np.array([[1 + 2 * w[0], 1 + 2 * w[1]] for w in weights]) + shift
    return centre[:, None, :] + rng.normal(0.0, noise, size=(len(weights), n, 2))


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "res")
    s.ensure()
    return s


def hv2_sweep(points, ref):
    """Exact 2-D hypervolume (maximisation) by a sweep over the first objective, descending."""
    pts = sorted((p for p in points if p[0] > ref[0] and p[1] > ref[1]), key=lambda p: -p[0])
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


def hv_inclusion_exclusion(points, ref):
    """Exact hypervolume in any dimension: the union of boxes [ref, p] by inclusion-exclusion."""
    pts = [p for p in points if all(a > r for a, r in zip(p, ref))]
    total = 0.0
    for k in range(1, len(pts) + 1):
        for subset in itertools.combinations(pts, k):
            corner = np.min(np.array(subset), axis=0)
            total += (-1) ** (k + 1) * float(np.prod(corner - np.asarray(ref)))
    return total


def z_from_rows(run, manifest):
    """Each stored row's z from its raw mean and the manifest's normalisation, independently of mobench."""
    out = []
    for row in run.rows():
        out.append([manifest["directions"][n] * (row["mean"][n] - manifest["normalisation"][n]["mean"])
                    / manifest["normalisation"][n]["std"] for n in manifest["objectives"]])
    return out


def test_identical_methods_are_not_separable_and_a_shifted_front_is(store):
    rng = np.random.default_rng(1)
    w = grid2(5)
    base = front_scores(w, 32, rng)
    write_run(store, "a", base, w)
    write_run(store, "b", base, w)  # the same per-prompt scores: a copy of a
    write_run(store, "c", base + 1.0, w)  # the same prompts, the front moved out by one z on both objectives
    board = build(store, "toy", resamples=400)
    by = {(c.a, c.b): c for c in board.comparisons}
    assert [e.method for e in board.entries] == ["c", "a", "b"]
    same = by[("a", "b")]
    assert same.difference == pytest.approx(0.0) and same.ci[0] <= 0.0 <= same.ci[1] and same.separable is False
    for other in ("a", "b"):
        shifted = by[("c", other)]
        assert shifted.ci[0] > 0 and shifted.separable is True
    ranks = {e.method: e for e in board.entries}
    assert ranks["a"].not_separable_from == [3] and ranks["b"].not_separable_from == [2]
    assert ranks["c"].not_separable_from == []
    # point estimates lie inside their intervals
    for e in board.entries:
        assert e.hypervolume_ci[0] <= e.hypervolume <= e.hypervolume_ci[1]
        assert e.spearman_ci[0] - 1e-9 <= e.spearman <= e.spearman_ci[1] + 1e-9


def test_the_bootstrap_is_deterministic_and_the_resamples_a_parameter(store):
    rng = np.random.default_rng(2)
    w = grid2(3)
    write_run(store, "a", front_scores(w, 16, rng), w)
    write_run(store, "b", front_scores(w, 16, rng), w)
    one, two = build(store, "toy", resamples=200), build(store, "toy", resamples=200)
    assert one.entries[0].hypervolume_ci == two.entries[0].hypervolume_ci
    assert one.resamples == 200 and build(store, "toy", resamples=50, seed=3).entries[0].hypervolume_ci != one.entries[0].hypervolume_ci


def test_two_objective_hypervolume_equals_an_exact_sweep_of_the_stored_rows(store):
    rng = np.random.default_rng(3)
    w = grid2(7)
    raw = rng.normal(0.0, 1.0, size=(7, 12, 2)) + rng.normal(0.0, 1.5, size=(7, 1, 2))
    norm = {"count-a": {"mean": 0.3, "std": 0.7}, "count-b": {"mean": -0.2, "std": 1.3}}
    run = write_run(store, "m", raw, w, normalisation=norm, reference_point=[-1.0, -1.0])
    [entry] = leaderboard(store, "toy", resamples=20)
    z = z_from_rows(run, run.read_manifest())
    assert entry.hypervolume > 0
    assert entry.hypervolume == pytest.approx(hv2_sweep(z, [-1.0, -1.0]), abs=1e-9)
    assert entry.hypervolume == pytest.approx(hv_inclusion_exclusion(z, [-1.0, -1.0]), abs=1e-9)


def test_three_objective_hypervolume_equals_inclusion_exclusion_of_the_stored_rows(store):
    from mobench.grid import simplex_grid

    rng = np.random.default_rng(4)
    names = ("x", "y", "z")
    w = [p.weights for p in simplex_grid(3, 4)]
    raw = np.array(w)[:, None, :] * 3 + rng.normal(0.0, 1.0, size=(len(w), 10, 3))
    norm = {"x": {"mean": 0.5, "std": 1.0}, "y": {"mean": 0.0, "std": 2.0}, "z": {"mean": -3.0, "std": 0.5}}
    directions = {"x": 1, "y": 1, "z": -1}
    run = write_run(store, "m", raw, w, names=names, normalisation=norm, directions=directions,
                    reference_point=[-1.0, -1.0, -12.0], task="tri")
    [entry] = leaderboard(store, "tri", resamples=20)
    z = z_from_rows(run, run.read_manifest())
    assert entry.hypervolume > 0
    assert entry.hypervolume == pytest.approx(hv_inclusion_exclusion(z, [-1.0, -1.0, -12.0]), abs=1e-9)


def test_direction_minus_one_is_applied_to_every_prompt_in_the_bootstrap(store):
    # A brevity-like objective: 30 words is the reference (std 5); fewer words is better.
    rng = np.random.default_rng(5)
    names = ("quality", "brevity")
    w = grid2(3)
    words = np.array([[20.0], [30.0], [40.0]]) + rng.normal(0, 2.0, size=(3, 24))  # w = (0, 1), (.5, .5), (1, 0)
    quality = np.array([[-0.5], [0.0], [1.0]]) + rng.normal(0, 0.2, size=(3, 24))
    raw = np.stack([quality, words], axis=2)
    norm = {"quality": {"mean": 0.0, "std": 1.0}, "brevity": {"mean": 30.0, "std": 5.0}}
    write_run(store, "m", raw, w, names=names, directions={"quality": 1, "brevity": -1}, normalisation=norm,
              reference_point=[-1.0, -1.0], task="summ")
    board = build(store, "summ", resamples=300)
    [entry] = board.entries
    by_w = {tuple(p.weights): p for p in entry.per_point}
    short = by_w[(0.0, 1.0)]  # w = brevity: ~20 words, z ~ +2
    expected = float(-(words[0].mean() - 30.0) / 5.0)
    assert short.z["brevity"] == pytest.approx(expected)
    lo, hi = short.z_ci["brevity"]
    assert 1.0 < lo < expected < hi < 3.0  # a sign error would put the whole interval near -2
    assert short.inside_box and not by_w[(1.0, 0.0)].inside_box  # 40 words: z ~ -2, outside the box
    assert board.directions == {"quality": 1, "brevity": -1}
    assert entry.hypervolume_ci[0] > 0


def test_runs_of_several_scales_are_refused_with_one_line_naming_them(store):
    rng = np.random.default_rng(6)
    w = grid2(3)
    write_run(store, "a", front_scores(w, 8, rng), w, scale="tiny")
    write_run(store, "b", front_scores(w, 8, rng), w, scale="paper")
    with pytest.raises(MobenchError, match=r"several scales: paper \(1 runs\), tiny \(1 runs\); pass --scale") as err:
        build(store, "toy", resamples=10)
    assert "\n" not in str(err.value)
    assert [e.method for e in build(store, "toy", scale="paper", resamples=10).entries] == ["b"]
    assert [e.method for e in build(store, "toy", scale="tiny", resamples=10).entries] == ["a"]


def test_another_calibration_is_left_out_with_a_note_and_selectable(store):
    rng = np.random.default_rng(7)
    w = grid2(3)
    old = {n: {"mean": 0.0, "std": 1.0} for n in NAMES}
    new = {n: {"mean": 0.5, "std": 2.0} for n in NAMES}
    write_run(store, "a", front_scores(w, 8, rng), w, normalisation=old, stamp="2026-01-01T00:00:00+00:00")
    write_run(store, "b", front_scores(w, 8, rng), w, normalisation=new, stamp="2026-01-02T00:00:00+00:00")
    board = build(store, "toy", resamples=10)
    assert [e.method for e in board.entries] == ["b"] and board.normalisation == new
    [note] = board.notes
    other = re.search(r"calibration \((\w+)\)", note).group(1)
    assert f"--calibration {other}" in note
    assert [e.method for e in build(store, "toy", calibration=other[:4], resamples=10).entries] == ["a"]
    with pytest.raises(MobenchError, match="matches 0"):
        build(store, "toy", calibration="zzzz", resamples=10)


def test_runs_on_different_prompts_cannot_be_paired(store):
    rng = np.random.default_rng(8)
    w = grid2(3)
    write_run(store, "a", front_scores(w, 8, rng), w, prompts="x" * 64)
    write_run(store, "b", front_scores(w, 6, rng), w, prompts="y" * 64)
    with pytest.raises(MobenchError, match="different prompts and cannot be paired: 8 prompts .*a/.*6 prompts .*b/"):
        build(store, "toy", resamples=10)


def test_seeds_of_one_setting_aggregate(store):
    rng = np.random.default_rng(9)
    w = grid2(5)
    hvs = []
    for seed, shift in ((0, 0.0), (1, 0.4), (2, 0.8)):
        run = write_run(store, "m", front_scores(w, 16, rng, shift=shift), w, seed=seed,
                        stamp=f"2026-01-0{seed + 2}T00:00:00+00:00")
        hvs.append(hv2_sweep(z_from_rows(run, run.read_manifest()), [0.0, 0.0]))
    # an option variant (its own line, labelled) and a newer partial rerun of seed 1 (the complete one is kept)
    write_run(store, "m", front_scores(w, 16, rng, shift=5.0), w, options={"steps": "9"}, stamp="2026-01-01T00:00:00+00:00")
    write_run(store, "m", front_scores(w[:2], 16, rng, shift=5.0), w[:2], grid=w, seed=1, status="partial",
              stamp="2026-01-09T00:00:00+00:00", run_id="partial-rerun")
    board = build(store, "toy", resamples=300)
    variant, entry = sorted(board.entries, key=lambda e: e.label != "m[steps=9]")
    assert variant.label == "m[steps=9]" and variant.n_seeds == 1 and entry.label == "m"
    assert any("newer run partial-rerun is partial" in note for note in board.notes)
    assert entry.n_seeds == 3 and sorted(entry.seeds) == [0, 1, 2] and "partial-rerun" not in entry.run_ids
    assert entry.hypervolume == pytest.approx(np.mean(hvs), abs=1e-9)
    assert sorted(entry.hypervolume_per_seed) == pytest.approx(sorted(hvs))
    assert entry.status == "complete" and entry.points == 5
    # the interval holds the seed-to-seed spread, not only the prompts'
    lo, hi = entry.hypervolume_ci
    assert lo < entry.hypervolume < hi and hi - lo > 0.5 * (max(hvs) - min(hvs))


def test_a_run_without_per_prompt_scores_is_ranked_without_intervals(store):
    rng = np.random.default_rng(10)
    w = grid2(3)
    write_run(store, "a", front_scores(w, 8, rng), w)
    write_run(store, "old", front_scores(w, 8, rng, shift=1.0), w, generations=False)
    board = build(store, "toy", resamples=50)
    e = {x.method: x for x in board.entries}
    assert e["old"].rank == 1 and e["old"].hypervolume_ci is None and e["a"].hypervolume_ci is not None
    assert board.comparisons[0].ci is None and board.comparisons[0].separable is None
    assert any("old" in note for note in board.notes)


def test_json_is_strict_and_markdown_shows_intervals_and_the_per_point_view(store):
    from mobench import report

    rng = np.random.default_rng(11)
    write_run(store, "flat", np.ones((1, 8, 2)) + rng.normal(0, 0.1, (1, 8, 2)), [(0.5, 0.5)])  # one point: no spearman
    write_run(store, "b", front_scores(grid2(3), 8, rng), grid2(3))
    board = build(store, "toy", resamples=50)
    text = report.to_json(board)

    def refuse(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")

    data = json.loads(text, parse_constant=refuse)
    flat = next(e for e in data["entries"] if e["method"] == "flat")
    assert flat["spearman"] is None and flat["spearman_ci"] is None
    assert flat["per_point"][0]["inside_box"] is True and len(data["comparisons"]) == 1
    md = report.to_markdown(board)
    entry = board.entries[0]
    lo, hi = entry.hypervolume_ci
    assert f"| 1 | {entry.method} | {entry.hypervolume:.4f} [{lo:.3f}, {hi:.3f}] |" in md
    assert "#### Per grid point" in md and "inside box" in md and "#### Pairwise hypervolume differences" in md


def test_compare_command_prints_the_pairwise_table(store, capsys):
    from mobench.cli import main

    rng = np.random.default_rng(12)
    w = grid2(3)
    base = front_scores(w, 16, rng)
    write_run(store, "a", base, w)
    write_run(store, "c", base + 1.0, w)
    args = ["--plugins-dir", str(TOY), "compare", "--task", "toy", "--results", str(store.root), "--resamples", "100"]
    assert main([*args, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    [pair] = data["comparisons"]
    assert (pair["a"], pair["b"], pair["separable"]) == ("c", "a", True) and pair["ci"][0] > 0
    assert main([*args, "--format", "markdown"]) == 0
    assert "| 1 | c | 2 | a |" in capsys.readouterr().out
    write_run(store, "p", base, w, scale="paper")
    assert main(args) == 2
    assert "several scales: paper (1 runs), tiny (2 runs)" in " ".join(capsys.readouterr().err.split())


def test_a_newer_failed_run_without_rows_never_hides_a_complete_run(store):
    rng = np.random.default_rng(20)
    w = grid2(3)
    write_run(store, "m", front_scores(w, 8, rng), w, stamp="2026-01-02T00:00:00+00:00", run_id="good")
    failed = store.run("toy", "m", "failed-later")
    manifest = json.loads((store.root / "toy" / "m" / "good" / "manifest.json").read_text())
    failed.write_manifest({**manifest, "run_id": "failed-later", "status": "failed", "reason": "CUDA out of memory",
                           "started_at": "2026-01-05T00:00:00+00:00", "finished_at": "2026-01-05T00:00:00+00:00",
                           "seed": 7})
    board = build(store, "toy", resamples=20)
    [entry] = board.entries
    assert entry.run_id == "good" and entry.status == "complete"
    assert any("failed-later has no grid point: failed (CUDA out of memory)" in n for n in board.notes)


def test_a_newer_partial_run_never_replaces_a_complete_one(store):
    rng = np.random.default_rng(21)
    w = grid2(5)
    scores = front_scores(w, 8, rng)
    write_run(store, "m", scores, w, stamp="2026-01-02T00:00:00+00:00", run_id="complete")
    write_run(store, "m", scores[:1] - 50, w[:1], grid=w, stamp="2026-01-06T00:00:00+00:00", run_id="partial",
              status="partial")
    board = build(store, "toy", resamples=20)
    [entry] = board.entries
    assert entry.run_id == "complete" and entry.points == 5 and entry.hypervolume > 0
    assert any("newer run partial is partial" in n for n in board.notes)


def test_only_partial_runs_are_ranked_with_a_note_saying_so(store):
    from mobench import report

    rng = np.random.default_rng(22)
    w = grid2(5)
    write_run(store, "m", front_scores(w[:2], 8, rng), w[:2], grid=w, status="interrupted", run_id="half")
    board = build(store, "toy", resamples=20)
    [entry] = board.entries
    assert entry.status == "interrupted" and entry.points == 2 and entry.grid_size == 5
    assert any("m has no complete run: ranked on its newest run half, interrupted, with 2 of 5 grid points" in n
               for n in board.notes)
    assert "| 2/5 (interrupted) |" in report.to_markdown(board)


def test_option_variants_are_ranked_side_by_side_under_labels(store):
    from mobench import report

    rng = np.random.default_rng(23)
    w = grid2(3)
    base = front_scores(w, 16, rng)
    write_run(store, "mage", base, w)
    write_run(store, "mage", base + 1.0, w, options={"alpha": "2"})
    write_run(store, "mage", base + 2.0, w, options={"alpha": "3", "beta": "0.5"})
    board = build(store, "toy", resamples=50)
    assert [e.label for e in board.entries] == ["mage[alpha=3,beta=0.5]", "mage[alpha=2]", "mage"]
    assert [(c.a, c.b) for c in board.comparisons][0] == ("mage[alpha=3,beta=0.5]", "mage[alpha=2]")
    assert "| 2 | mage[alpha=2] |" in report.to_markdown(board)
    assert board.entries[1].options == {"alpha": "2"}


def test_runs_whose_defaults_changed_get_lines_named_by_the_options_they_differ_in(store):
    rng = np.random.default_rng(26)
    w = grid2(3)
    base = front_scores(w, 16, rng)
    old = {"fitness": "margin", "fitness_prompts": 8, "experts": {"steps": 32}}
    new = {"fitness": "scored", "fitness_prompts": 16, "experts": {"steps": 32}}
    for options, shift, stamp in ((old, 0.0, "2026-01-01T00:00:00+00:00"), (new, 1.0, "2026-01-02T00:00:00+00:00")):
        run = write_run(store, "map", base + shift, w, stamp=stamp, run_id=f"r-{options['fitness']}")
        manifest = run.read_manifest()
        run.write_manifest({**manifest, "method_options": options})
    write_run(store, "other", base, w)  # a method with one line keeps its plain name
    board = build(store, "toy", resamples=20)
    assert sorted(e.label for e in board.entries) == ["map[fitness=margin,fitness_prompts=8]",
                                                      "map[fitness=scored,fitness_prompts=16]", "other"]


def test_a_note_names_a_line_as_the_leaderboard_does(store):
    """Two lines of one method (a default changed): the note of the line without a complete run names that line."""
    rng = np.random.default_rng(27)
    w = grid2(5)
    base = front_scores(w, 8, rng)
    for fitness, rows, status, stamp in (("margin", 5, "complete", "2026-01-01T00:00:00+00:00"),
                                         ("scored", 2, "interrupted", "2026-01-02T00:00:00+00:00")):
        run = write_run(store, "map", base[:rows], w[:rows], grid=w, status=status, stamp=stamp, run_id=f"r-{fitness}")
        run.write_manifest({**run.read_manifest(), "method_options": {"fitness": fitness}})
    board = build(store, "toy", resamples=20)
    assert sorted(e.label for e in board.entries) == ["map[fitness=margin]", "map[fitness=scored]"]
    [note] = [n for n in board.notes if "no complete run" in n]
    assert note.startswith("map[fitness=scored] has no complete run: ranked on its newest run r-scored, interrupted")


def test_three_objectives_show_every_corner_and_plot_a_scatter_matrix(store, tmp_path):
    from mobench import report

    rng = np.random.default_rng(24)
    names = ("x", "y", "z")
    w = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1 / 3, 1 / 3, 1 / 3)]
    raw = np.array(w)[:, None, :] * 2 + 1 + rng.normal(0, 0.1, (4, 8, 3))
    write_run(store, "m", raw, w, names=names, task="tri")
    board = build(store, "tri", resamples=20)
    md = report.to_markdown(board)
    for n in names:
        assert f"x/y/z at w={n}" in md
    out = report.plot(board, tmp_path / "tri.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_markdown_and_plots_show_hostile_text_as_text(store, tmp_path):
    from mobench import report

    rng = np.random.default_rng(25)
    w = grid2(3)
    names = ("a|<b>x</b>", "c$d")  # the store may hold anything: a damaged or hand-edited run
    write_run(store, "m|<i>", front_scores(w, 8, rng), w, names=names)
    board = build(store, "toy", resamples=20)
    md = report.to_markdown(board)
    assert "<b>" not in md and "<i>" not in md and "a\\|&lt;b&gt;x&lt;/b&gt;" in md and "m\\|&lt;i&gt;" in md
    assert all(line.count("|") - line.count("\\|") == md.splitlines()[2].count("|") - md.splitlines()[2].count("\\|")
               for line in md.splitlines()[2:4])
    assert report.plot(board, tmp_path / "p.png").exists()  # '$' is not read as mathtext


def test_no_runtime_warning_leaks_and_json_stays_strict(store, recwarn):
    from mobench import report

    write_run(store, "flat", np.ones((3, 8, 2)), grid2(3))  # constant scores: Spearman undefined everywhere
    board = build(store, "toy", resamples=20)
    json.loads(report.to_json(board), parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(c)))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_randomly_damaged_manifests_and_rows_never_raise_anything_but_a_one_line_error(store):
    """Seeded fuzzing: any field of a manifest, a row or a generation replaced by a value of another type."""
    import random
    import warnings

    from mobench import report

    rng = np.random.default_rng(30)
    w = grid2(3)
    write_run(store, "good", front_scores(w, 6, rng), w)
    victim = write_run(store, "victim", front_scores(w, 6, rng), w)
    manifest0 = victim.manifest_path.read_text()
    rows0 = victim.rows_path.read_text()
    gens0 = victim.generations_path.read_text()
    junk = [None, "x", "", [], [1, 2], {}, {"a": 1}, -1, 0, 1e308, True, "NaN", [[0.5, "a"]], {"count-a": "1"}]
    fuzz = random.Random(int(os.environ.get("MOBENCH_FUZZ_SEED", "15")))
    for _ in range(120):
        victim.manifest_path.write_text(manifest0)
        victim.rows_path.write_text(rows0)
        victim.generations_path.write_text(gens0)
        target = fuzz.choice(["manifest", "row", "generation"])
        if target == "manifest":
            data = json.loads(manifest0)
            key = fuzz.choice(sorted(data))
            data[key] = fuzz.choice(junk)
            victim.manifest_path.write_text(json.dumps(data))
        else:
            path = victim.rows_path if target == "row" else victim.generations_path
            lines = [json.loads(x) for x in path.read_text().splitlines()]
            i = fuzz.randrange(len(lines))
            key = fuzz.choice(sorted(lines[i]))
            if isinstance(lines[i][key], dict) and lines[i][key] and fuzz.random() < 0.5:
                lines[i][key][fuzz.choice(sorted(lines[i][key]))] = fuzz.choice(junk)
            else:
                lines[i][key] = fuzz.choice(junk)
            path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                board = build(store, "toy", resamples=5)
            except MobenchError as err:
                assert "\n" not in str(err)
                continue
            json.loads(report.to_json(board))
            report.to_markdown(board)


def test_the_per_point_view_counts_empty_replies_exactly_and_averages_them_over_seeds(store):
    from mobench import report

    rng = np.random.default_rng(21)
    w = grid2(3)
    # seed 0: the w = (0, 1) corner answers 3 of 8 prompts with nothing (one of them whitespace), seed 1 with 5
    said = [["a reply"] * 8 for _ in w]
    silent0 = [list(x) for x in said]
    silent0[0][:3] = ["", "  \n", ""]
    silent1 = [list(x) for x in said]
    silent1[0][:5] = [""] * 5
    write_run(store, "m", front_scores(w, 8, rng), w, seed=0, responses=silent0)
    write_run(store, "m", front_scores(w, 8, rng), w, seed=1, responses=silent1)
    write_run(store, "old", front_scores(w, 8, rng), w)  # no responses stored
    board = build(store, "toy", resamples=50)
    e = {x.method: x for x in board.entries}
    by_w = {tuple(p.weights): p for p in e["m"].per_point}
    assert by_w[(0.0, 1.0)].empty == pytest.approx((3 / 8 + 5 / 8) / 2)
    assert by_w[(0.5, 0.5)].empty == 0.0 and by_w[(1.0, 0.0)].empty == 0.0
    assert all(p.empty is None for p in e["old"].per_point)
    md = report.to_markdown(board)
    assert "empty replies" in md
    row = next(line for line in md.splitlines() if line.startswith("| m | 0.00, 1.00 |"))
    assert row.rstrip().endswith("| 50% |")
    assert next(line for line in md.splitlines() if line.startswith("| old | 0.00, 1.00 |")).rstrip().endswith("| n/a |")
