"""The command line end to end on the test-only toy plugin (real subprocesses, real store)."""

import json

import pytest

from helpers import TOY, mobench

TOYDIR = str(TOY)


def run_toy(results, *extra, env=None):
    return mobench("--plugins-dir", TOYDIR, "run", "--method", "letters", "--task", "toy", "--results", str(results), *extra, env=env)


def test_run_writes_manifest_rows_and_generations(tmp_path):
    proc = run_toy(tmp_path / "res", "--grid", "3")
    assert proc.returncode == 0, proc.stderr
    # stderr is a pipe, not a terminal: each progress step logs its start and its count and seconds
    assert "grid points: started (3)" in proc.stderr and "grid points: 3/3 in " in proc.stderr
    [run] = list((tmp_path / "res" / "toy" / "letters").iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["seed"] == 0
    assert manifest["config"]["grid"] == 3 and manifest["grid"] == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    for lib in ("mobench", "torch", "transformers", "trl", "peft", "datasets", "pymoo"):
        assert lib in manifest["versions"]
    assert "cpu_count" in manifest["machine"] and manifest["started_at"] and manifest["finished_at"]
    # What makes float results host-specific is recorded: the CPU, torch's kernel level for it and its threads.
    import torch

    from mobench.provenance import cpu_model

    machine = manifest["machine"]
    assert machine["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["cpu_model"] == cpu_model() and machine["torch_threads"] >= 1
    # The method's provenance is recorded again after generation (per-point policies are known only then).
    assert manifest["method_provenance"]["generated"] == ["0.000000,1.000000", "0.500000,0.500000", "1.000000,0.000000"]
    rows = [json.loads(line) for line in (run / "rows.jsonl").read_text().splitlines()]
    assert [r["weights"] for r in rows] == manifest["grid"]
    # letters answers round(10 w_1) 'a' and round(10 w_2) 'b': the means are known by hand
    assert [(r["mean"]["count-a"], r["mean"]["count-b"]) for r in rows] == [(0, 10), (5, 5), (10, 0)]
    assert all(r["n"] == 4 and r["stderr"]["count-a"] == 0 and r["wall_seconds"] >= 0 and r["peak_rss_mb"] > 0 for r in rows)
    gens = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 12 and gens[0]["response"] == "b" * 10 and gens[0]["scores"] == {"count-a": 0.0, "count-b": 10.0}


def test_second_identical_command_computes_nothing(tmp_path):
    run_toy(tmp_path, "--grid", "3")
    proc = run_toy(tmp_path, "--grid", "3")
    assert proc.returncode == 0 and "0 grid points computed, 3 already there" in proc.stdout


def test_explicit_weights_and_leaderboard_formats(tmp_path):
    assert run_toy(tmp_path, "--weights", "0.2,0.8;0.5,0.5").returncode == 0
    md = mobench("--plugins-dir", TOYDIR, "leaderboard", "--task", "toy", "--results", str(tmp_path), "--format", "markdown")
    assert md.returncode == 0 and "| 1 | letters |" in md.stdout
    js = json.loads(mobench("--plugins-dir", TOYDIR, "leaderboard", "--task", "toy", "--results", str(tmp_path), "--format", "json").stdout)
    [entry] = js["entries"]
    # points (2, 8) and (5, 5) against (0, 0): 2*8 + (5-2)*5 = 31
    assert entry["hypervolume"] == pytest.approx(31.0) and entry["front_size"] == 2
    table = mobench("--plugins-dir", TOYDIR, "leaderboard", "--task", "toy", "--results", str(tmp_path))
    assert table.returncode == 0 and "letters" in table.stdout and "31.0000" in table.stdout


def test_plot_and_report(tmp_path):
    run_toy(tmp_path / "res")
    png = tmp_path / "p.png"
    assert mobench("--plugins-dir", TOYDIR, "plot", "--task", "toy", "--results", str(tmp_path / "res"), "--out", str(png)).returncode == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "report"
    assert mobench("--plugins-dir", TOYDIR, "report", "--task", "toy", "--results", str(tmp_path / "res"), "--out", str(out)).returncode == 0
    assert {p.name for p in out.iterdir()} == {"leaderboard.md", "leaderboard.json", "pareto.png", "report.html"}


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "--method", "leters", "--task", "toy"], "unknown method 'leters'; did you mean 'letters'"),
        (["run", "--method", "letters", "--task", "tyo"], "unknown task 'tyo'; did you mean 'toy'"),
        (["run", "--method", "letters", "--task", "toy", "--weights", "-0.5,1.5"], "negative"),
        (["run", "--method", "letters", "--task", "toy", "--weights", "0.2,0.2,0.6"], "has 3 weights but the task has 2"),
        (["run", "--method", "letters", "--task", "toy", "--weights", "0.2,0.7"], "sums to 0.9"),
        (["run", "--method", "letters", "--task", "toy", "--scale", "huge"], "unknown scale 'huge'"),
        (["run", "--method", "letters", "--task", "toy", "--grid", "1"], "--grid must be at least 2"),
        (["leaderboard", "--task", "toy", "--results", "/nonexistent/mobench"], "no results store at"),
        (["run", "--method", "letters", "--task", "toy", "--option", "novalue"], "KEY=VALUE"),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, args, message):
    proc = mobench("--plugins-dir", TOYDIR, *args, "--results", str(tmp_path)) if "--results" not in args else mobench("--plugins-dir", TOYDIR, *args)
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_unknown_objective_has_did_you_mean():
    from mobench.api import MobenchError
    from mobench.plugins import get_plugin_manager

    registry = get_plugin_manager(plugins_dir=TOY).registry
    assert registry.objective("count-a").direction == 1
    with pytest.raises(MobenchError, match="unknown objective 'count-aa'; did you mean 'count-a'"):
        registry.objective("count-aa")


def test_a_folder_that_is_not_a_store_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("my thesis")
    proc = run_toy(tmp_path)
    assert proc.returncode == 2 and "is not a mobench results store" in proc.stderr
    assert (tmp_path / "notes.txt").read_text() == "my thesis"
    lb = mobench("--plugins-dir", TOYDIR, "leaderboard", "--task", "toy", "--results", str(tmp_path))
    assert lb.returncode == 2 and "not a mobench results store" in lb.stderr


def test_corrupt_row_is_skipped_with_a_warning_naming_file_and_line(tmp_path):
    run_toy(tmp_path, "--grid", "3")
    [run] = list((tmp_path / "toy" / "letters").iterdir())
    rows = (run / "rows.jsonl").read_text().splitlines()
    (run / "rows.jsonl").write_text("\n".join([rows[0], '{"preference_key": "0.5', rows[2]]) + "\n")
    proc = mobench("--plugins-dir", TOYDIR, "leaderboard", "--task", "toy", "--results", str(tmp_path), "--format", "json")
    assert proc.returncode == 0
    assert f"{run / 'rows.jsonl'}:2: corrupt line skipped" in " ".join(proc.stderr.split())
    assert len(json.loads(proc.stdout)["entries"][0]["weights"]) == 2
    # and a resumed run fills in exactly the lost point
    again = run_toy(tmp_path, "--grid", "3")
    assert "1 grid points computed, 2 already there" in again.stdout


def test_list_and_help_answer_without_importing_torch():
    import subprocess
    import sys

    code = (
        "import sys; from mobench.cli import main; main(['list', 'methods']); main(['--help']);"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'pymoo') if m in sys.modules];"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_list_shows_the_toy_plugin_items():
    proc = mobench("--plugins-dir", TOYDIR, "list", "tasks")
    assert proc.returncode == 0 and "toy" in proc.stdout and "count-a, count-b" in proc.stdout


def test_kl_lists_the_trained_policies_of_the_boards_runs_and_refuses_too_few_prompts(tmp_path):
    assert run_toy(tmp_path / "res").returncode == 0
    out = mobench("--plugins-dir", TOYDIR, "kl", "--task", "toy", "--results", str(tmp_path / "res"), "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []  # the toy method trains nothing: no policy, no KL
    bad = mobench("--plugins-dir", TOYDIR, "kl", "--task", "toy", "--results", str(tmp_path / "res"), "--prompts", "1")
    assert bad.returncode == 2 and "--prompts must be at least 2" in bad.stderr and "Traceback" not in bad.stderr
