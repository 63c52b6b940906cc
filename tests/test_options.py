"""Methods own typed options: presets per scale, `-o KEY=VALUE` parsed against them, `mobench options`."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from typing import Literal

import pytest

from helpers import TOY, mobench
from mobench.api import MobenchError
from mobench.options import NoOptions, Options, budget, option

TOYDIR = str(TOY)


@dataclass(frozen=True)
class Inner(Options):
    steps: int = option(4, "steps")
    rate: float = option(0.5, "rate")

    PRESETS = {"paper": {"steps": 40}}

    def check(self) -> None:
        if self.steps < 1:
            raise MobenchError("steps must be at least 1")


@dataclass(frozen=True)
class Outer(Options):
    mode: Literal["a", "b"] = option("a", "mode")
    ks: tuple[float, ...] | None = option(None, "coefficients")
    flag: bool = option(False, "a switch")
    first: Inner = budget(Inner, "first budget")
    second: Inner = budget(Inner, "second budget")

    PRESETS = {"paper": {"mode": "b", "second.rate": 0.25}}


def test_presets_nest_each_budgets_own_preset_then_the_owners():
    tiny, paper = Outer.preset("tiny"), Outer.preset("paper")
    assert tiny == Outer()
    assert (paper.mode, paper.first.steps, paper.second.steps, paper.second.rate, paper.first.rate) == ("b", 40, 40, 0.25, 0.5)


def test_text_values_are_converted_to_the_field_types():
    o = Outer().replace({"mode": "b", "ks": "1.5,2", "flag": "yes", "first.steps": "7", "second.rate": "1e-3"}, parse=True)
    assert (o.mode, o.ks, o.flag, o.first.steps, o.second.rate) == ("b", (1.5, 2.0), True, 7, 0.001)
    assert Outer().replace({"ks": "[1, 2.5]"}, parse=True).ks == (1.0, 2.5)
    assert Outer().replace({"ks": "none"}, parse=True).ks is None


@pytest.mark.parametrize("values,message", [
    ({"mode": "c"}, "must be one of a, b"),
    ({"first.steps": "2.5"}, "must be an integer"),
    ({"flag": "maybe"}, "must be true or false"),
    ({"first.rate": "nan"}, "must be finite"),
    ({"first.steps": "0"}, "steps must be at least 1"),
    ({"steps": "3"}, "ambiguous; say which: first.steps, second.steps"),
    ({"stesp": "3"}, "did you mean 'steps'"),
])
def test_bad_values_and_keys_are_one_clear_error(values, message):
    with pytest.raises(MobenchError, match=message.replace(".", r"\.").replace("(", r"\(")):
        Outer().replace(values, parse=True, owner="m")


def test_describe_lists_every_leaf_with_doc_type_and_scale_value():
    rows = {r["key"]: r for r in Outer.describe("paper")}
    assert list(rows) == ["mode", "ks", "flag", "first.steps", "first.rate", "second.steps", "second.rate"]
    assert rows["second.rate"]["value"] == 0.25 and rows["second.rate"]["default"] == 0.5
    assert rows["mode"]["type"] == "a|b" and rows["first.steps"]["doc"] == "steps"
    assert NoOptions.describe("tiny") == []


def test_to_dict_is_json_ready():
    assert json.loads(json.dumps(Outer().replace({"ks": "1,2"}, parse=True).to_dict()))["ks"] == [1.0, 2.0]


def _run(tmp_path, *extra):
    return mobench("--plugins-dir", TOYDIR, "run", "--method", "letters", "--task", "toy", "--results", str(tmp_path), *extra)


def test_an_option_changes_the_output_and_the_run_id_and_nothing_else(tmp_path):
    assert _run(tmp_path).returncode == 0
    proc = _run(tmp_path, "-o", "unit=20")
    assert proc.returncode == 0, proc.stderr
    runs = sorted((tmp_path / "toy" / "letters").iterdir())
    assert len(runs) == 2
    manifests = [json.loads((r / "manifest.json").read_text()) for r in runs]
    by_unit = {m["method_options"]["unit"]: m for m in manifests}
    assert set(by_unit) == {10, 20} and by_unit[20]["config"]["options"] == {"unit": "20"}
    rows = [json.loads(x) for x in (tmp_path / "toy" / "letters" / by_unit[20]["run_id"] / "rows.jsonl").read_text().splitlines()]
    assert [r["mean"]["count-a"] for r in rows] == [0, 10, 20]


def test_unknown_option_is_refused_before_anything_is_written(tmp_path):
    for bad, message in [("nonsense=1", "letters has no option 'nonsense'; its options are unit (see `mobench options letters`)"),
                         ("unti=5", "did you mean 'unit'"), ("unit=many", "must be an integer")]:
        proc = _run(tmp_path, "-o", bad)
        assert proc.returncode == 2 and message in " ".join(proc.stderr.split()), proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "toy").exists()  # no phantom run


def test_a_method_without_options_refuses_any(tmp_path):
    plugin = tmp_path / "plugins"
    plugin.mkdir()
    (plugin / "plain.py").write_text(
        "from mobench import hookimpl\n"
        "class Plain:\n"
        "    def prepare(self, task, context): pass\n"
        "    def generate(self, prompts, preferences): return [['x'] * len(prompts) for _ in preferences]\n"
        "    def provenance(self): return {}\n"
        "@hookimpl\n"
        "def register_methods(register):\n"
        "    register.method('plain', Plain, 'no options')\n"
    )
    shutil.copy(TOY / "toy_plugin.py", plugin)
    proc = mobench("--plugins-dir", str(plugin), "options", "plain")
    assert proc.returncode == 0 and "plain takes no options" in proc.stdout
    proc = mobench("--plugins-dir", str(plugin), "run", "--method", "plain", "--task", "toy", "--results", str(tmp_path / "r"), "-o", "x=1")
    assert proc.returncode == 2 and "method 'plain' takes no options (got x)" in proc.stderr
    proc = mobench("--plugins-dir", str(plugin), "run", "--method", "plain", "--task", "toy", "--results", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr


def test_mobench_options_lists_every_knob_at_a_scale():
    tiny = json.loads(mobench("--plugins-dir", TOYDIR, "options", "letters", "--format", "json", check=True).stdout)
    paper = json.loads(mobench("--plugins-dir", TOYDIR, "options", "letters", "--scale", "paper", "--format", "json", check=True).stdout)
    assert tiny["options"] == [{"key": "unit", "type": "int", "value": 10, "default": 10, "doc": "letters written for a weight of 1"}]
    assert paper["options"][0]["value"] == 100
    table = mobench("--plugins-dir", TOYDIR, "options", "letters", check=True).stdout
    assert "unit" in table and "letters written for a weight of 1" in table


def test_the_runner_seeds_random_from_seed_before_prepare(tmp_path):
    draws = {}
    for seed, folder in [(0, "a"), (0, "b"), (1, "c")]:
        assert _run(tmp_path / folder, "--seed", str(seed)).returncode == 0
        [run] = list((tmp_path / folder / "toy" / "letters").iterdir())
        draws[folder] = json.loads((run / "manifest.json").read_text())["method_provenance"]["seeded_draw"]
    assert draws["a"] == draws["b"] != draws["c"]


def test_register_commands_adds_a_working_command():
    proc = mobench("--plugins-dir", TOYDIR, "toy-hello", "--name", "mobench")
    assert proc.returncode == 0 and proc.stdout.strip() == "hello mobench"


def test_a_mage_option_changes_only_mages_run_id():
    from mobench.api import Normalisation, TaskInstance
    from mobench.grid import simplex_grid
    from mobench.plugins import get_plugin_manager
    from mobench.runner import RunConfig, build_options, run_id

    registry = get_plugin_manager().registry
    task = TaskInstance(name="hh", scale="tiny", policy="p", objectives=[], prompts=["a"],
                        normalisation={"x": Normalisation(0.0, 1.0)}, reference_point=(0.0,))
    grid = simplex_grid(2, 3)

    def rid(method, **overrides):
        options = build_options(registry.method(method), "tiny", overrides)
        return run_id(RunConfig(method=method, task="hh", options=overrides), grid, task, options), options

    base_id, base = rid("mage")
    alpha_id, alpha = rid("mage", alpha="2")
    assert alpha.alpha == 2.0 and base.alpha == 0.5 and alpha_id != base_id
    assert alpha.replace({"alpha": 0.5}) == base  # nothing else moved
    # every other built-in's options, hence run id, is untouched by MAGE's knobs
    for method in ("rewarded-soups", "logit-ensemble", "morlhf", "modpo"):
        assert rid(method)[0] == rid(method)[0]
        with pytest.raises(MobenchError, match="no option 'alpha'"):
            rid(method, alpha="2")
    # an ablation is MAGE with a fixed switch, so its options differ only there
    assert rid("mage-implicit")[1].replace({"guidance": "both"}) == base


def test_mobench_options_mage_lists_every_knob_and_refuses_nonsense(tmp_path):
    from mobench.methods.mage import Mage

    listed = json.loads(mobench("options", "mage", "--format", "json", check=True).stdout)["options"]
    assert [row["key"] for row in listed] == Mage.Options.keys()
    assert {"alpha", "top_k", "b", "k", "implicit_weight", "explicit_weight", "experts.beta", "value.steps"} <= {r["key"] for r in listed}
    assert all(row["doc"] for row in listed)
    proc = mobench("run", "--method", "mage", "--task", "hh", "--results", str(tmp_path), "-o", "nonsense=1")
    assert proc.returncode == 2 and "mage has no option 'nonsense'; its options are guidance" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not any(tmp_path.iterdir())
    proc = mobench("run", "--method", "mage", "--task", "hh", "--results", str(tmp_path), "-o", "steps=3")
    assert proc.returncode == 2 and "ambiguous; say which: experts.steps, backbones.steps, value.steps" in proc.stderr
