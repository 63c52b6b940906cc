"""Plugins: entry points of a package installed during the test, loose files, and broken plugins."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TOY, mobench
from mobench.plugins import get_plugin_manager

EXAMPLE = Path(__file__).resolve().parent / "example_plugin"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """The README's example plugin package, pip-installed into a private folder."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(EXAMPLE)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


def test_entry_point_plugin_is_loaded_and_listed_with_its_version(installed_example):
    plugins = json.loads(mobench("plugins", env=installed_example, check=True).stdout)
    entry = [p for p in plugins["plugins"] if p["name"] == "prompted"]
    assert entry == [{"name": "prompted", "origin": "entry point of mobench-prompted", "version": "0.1.0",
                      "hooks": ["register_methods"]}]
    listed = mobench("list", "methods", env=installed_example, check=True).stdout
    assert re.search(r"^prompted\t.*\(plugin prompted\)$", listed, re.M)


def test_entry_point_method_runs_end_to_end_on_a_micro_model(installed_example, tmp_path, smol_tokenizer):
    from mobench.models import micro_causal_lm

    policy = tmp_path / "micro"
    micro_causal_lm(smol_tokenizer).save_pretrained(policy)
    smol_tokenizer.save_pretrained(policy)
    env = {**installed_example, "MOBENCH_TOY_POLICY": str(policy)}
    proc = mobench("--plugins-dir", str(TOY), "run", "--method", "prompted", "--task", "toy", "--results",
                   str(tmp_path / "res"), "--device", "cpu", env=env)
    assert proc.returncode == 0, proc.stderr
    [run] = list((tmp_path / "res" / "toy" / "prompted").iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["plugins"]["method"] == "prompted" and manifest["plugins"]["versions"]["prompted"] == "0.1.0"
    rows = [json.loads(x) for x in (run / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["n"] == 4 for r in rows)


def test_readme_shows_the_example_plugin_verbatim():
    text = README.read_text()
    for path in (EXAMPLE / "pyproject.toml", EXAMPLE / "mobench_prompted" / "__init__.py"):
        assert path.read_text().strip() in text, f"README's plugin example differs from {path}"


def test_broken_plugins_are_reported_one_line_each_and_the_rest_works(tmp_path):
    folder = tmp_path / "plugins"
    shutil.copytree(TOY / "broken", folder)
    shutil.copy(TOY / "toy_plugin.py", folder)
    registry = get_plugin_manager(plugins_dir=folder).registry
    errors = "\n".join(registry.errors)
    assert "raises_on_import.py' failed to import: RuntimeError: this plugin is broken on purpose" in errors
    assert "'file:malformed.py' failed in register_methods: TypeError: method 'not-callable'" in errors
    assert "'file:unknown_hook.py' (file" in errors and "broken and was skipped" in errors
    assert "method 'letters' is already registered by plugin 'file:toy_plugin.py'; kept the first" in errors
    assert len(registry.errors) == 4
    assert registry.method("letters").factory.__module__.endswith("toy_plugin")
    assert "toy" in registry.tasks
    # the command line keeps working and says each problem in one line
    proc = mobench("--plugins-dir", str(folder), "run", "--method", "letters", "--task", "toy", "--results", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 4 and "Traceback" not in proc.stderr


def test_a_plugin_that_raises_on_entry_point_load(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "mobench_broken").mkdir(parents=True)
    (pkg / "mobench_broken" / "__init__.py").write_text("import not_a_module_anywhere\n")
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "mobench-broken"\nversion = "0.0.1"\n'
        '[project.entry-points.mobench]\nbroken = "mobench_broken"\n'
    )
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(site), str(pkg)], check=True)
    env = {"PYTHONPATH": str(site)}
    plugins = json.loads(mobench("plugins", env=env, check=True).stdout)
    assert any("plugin 'broken' (mobench-broken) failed to load: ModuleNotFoundError" in e for e in plugins["errors"])
    assert mobench("--plugins-dir", str(TOY), "list", "tasks", env=env).returncode == 0


def test_each_plugin_manager_is_fresh():
    a = get_plugin_manager(plugins_dir=TOY)
    b = get_plugin_manager()
    assert "letters" in a.registry.methods and "letters" not in b.registry.methods


def test_every_hook_is_documented_and_used():
    import inspect

    from mobench import hookspecs

    hooks = [n for n, f in vars(hookspecs).items() if n.startswith("register_") and inspect.isfunction(f)]
    assert sorted(hooks) == ["register_commands", "register_methods", "register_objectives", "register_tasks"]
    for name in hooks:
        assert ":param" in getattr(hookspecs, name).__doc__
    tests_text = "\n".join(p.read_text() for p in Path(__file__).parent.rglob("*.py"))
    for name in hooks:
        assert f"def {name}(" in tests_text or name == "register_commands"
