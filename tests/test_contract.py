"""The plugin contract is documented and tested: every hook, every member of the contract classes.

Walks the plugin manager and the contract classes (as datasette's tests/test_docs.py does), so a new
hook or contract member without a docstring or a test fails here, not in a plugin author's hands.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from mobench import api, options, plugins, toolkit
from mobench.plugins import get_plugin_manager

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _tests_text() -> str:
    return "\n".join(p.read_text() for p in TESTS.rglob("*.py"))


def test_every_hook_has_a_documented_spec_and_an_implementation_in_the_tests():
    pm = get_plugin_manager()
    hooks = [name for name in dir(pm.hook) if not name.startswith("_")]
    assert hooks, "no hooks found"
    text = _tests_text()
    for name in hooks:
        caller = getattr(pm.hook, name)
        spec = caller.spec
        doc = inspect.getdoc(spec.function) or ""
        assert len(doc) > 80, f"hook {name} has no real docstring"
        for arg in spec.argnames:
            assert f":param {arg}:" in doc, f"hook {name} does not document its argument {arg!r}"
        # a test plugin implements it, so the hook is exercised end to end
        assert re.search(rf"^def {name}\(", text, re.M), f"no test implements the hook {name}"


def _public_members(cls) -> list[str]:
    names = []
    for name, value in vars(cls).items():
        if name.startswith("_") and name not in ("__init__",):
            continue
        if callable(value) or isinstance(value, (property, classmethod, staticmethod)):
            names.append(name)
    return names


CONTRACT = [api.Method, api.TaskInstance, api.RunContext, api.Generation, api.Preference, api.Normalisation,
            api.PreferencePair, api.MethodSpec, api.TaskSpec, api.ObjectiveSpec, plugins.Register, plugins.Registry,
            options.Options]


@pytest.mark.parametrize("cls", CONTRACT, ids=lambda c: c.__name__)
def test_every_contract_class_and_member_has_a_docstring(cls):
    assert (cls.__doc__ or "").strip(), f"{cls.__name__} has no docstring"
    for name in _public_members(cls):
        member = inspect.getattr_static(cls, name)
        fn = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
        if name == "__init__" and cls.__init__ is object.__init__:
            continue
        if name == "__init__":
            continue  # documented by the class docstring
        assert (getattr(fn, "__doc__", None) or "").strip(), f"{cls.__name__}.{name} has no docstring"


@pytest.mark.parametrize("cls", [api.TaskInstance, api.RunContext, api.MethodSpec, api.TaskSpec], ids=lambda c: c.__name__)
def test_every_field_of_the_data_contracts_is_named_in_the_docstring(cls):
    doc = cls.__doc__ or ""
    for f in dataclasses.fields(cls):
        assert f"``{f.name}``" in doc or f.name in ("name", "scale", "policy", "objectives", "load", "factory", "description"), \
            f"{cls.__name__}.{f.name} is not documented in the class docstring"


def test_the_objective_protocol_members_are_documented():
    for name in ("score", "provenance"):
        assert (getattr(api.Objective, name).__doc__ or "").strip()
    source = inspect.getsource(api.Objective)
    assert "#: +1 when a higher score" in source and "#: The registered name" in source


def test_the_task_authors_toolkit_is_documented():
    for name in ("chat_prompts", "policy_aliases", "seed_everything"):
        assert (getattr(toolkit, name).__doc__ or "").strip()
    assert "smollm2-135m-instruct" in toolkit.policy_aliases()


PUBLIC = {"mobench", "mobench.api", "mobench.options", "mobench.training", "mobench.decoding", "mobench.merging",
          "mobench.models", "mobench.artifacts", "mobench.toolkit", "mobench.data", "mobench.scorers",
          "mobench.calibration", "mobench.metrics"}


def _mobench_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("mobench"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("mobench"))
    return out


@pytest.mark.parametrize("path", sorted((ROOT / "plugins").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_built_in_methods_import_only_the_public_api(path):
    package = "mobench.methods." + path.relative_to(ROOT / "plugins").parts[0].removesuffix(".py")
    for module in _mobench_imports(path):
        own = module == package or module.startswith(package + ".")
        assert module in PUBLIC or own, f"{path.name} imports {module}, which is not public API"


def test_the_core_has_no_module_named_after_a_method_or_a_task():
    core = {p.stem for p in (ROOT / "mobench").rglob("*.py")} | {p.name for p in (ROOT / "mobench").iterdir() if p.is_dir()}
    registry = get_plugin_manager().registry
    names = {n.replace("-", "_") for n in [*registry.methods, *registry.tasks]} | {"mage", "modpo", "morlhf", "bonesoup"}
    assert not core & names, f"core modules named after a method or task: {sorted(core & names)}"
