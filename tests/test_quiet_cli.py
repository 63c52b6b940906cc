"""A quiet command line: library noise goes to the run's log file; --dtype and --gen reach the run.

The plugin below makes the libraries speak as a real run does: datasets reads a JSON file ("Generating
train split" bar), transformers loads a saved micro model ("Loading weights" bar) and a deprecated
property of it raises transformers' own FutureWarning; decoding uses mobench's generate_for_task.
"""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import TOY, mobench

NOISY = '''
import os

from mobench import hookimpl
from mobench.api import Method, Normalisation, TaskInstance


class Length:
    direction = 1
    name = "chars"

    def score(self, prompts, responses):
        return [float(len(r)) for r in responses]

    def provenance(self):
        return {"kind": "characters"}


class Vowels(Length):
    name = "vowels"

    def score(self, prompts, responses):
        return [float(sum(c in "aeiou" for c in r)) for r in responses]


def load(scale, context):
    import datasets

    folder = os.environ["MOBENCH_NOISY_DATA"]
    rows = datasets.load_dataset("json", data_files=os.path.join(folder, "prompts.jsonl"), split="train",
                                 cache_dir=os.path.join(folder, "hf-cache"))
    return TaskInstance(
        name="noisy", scale=scale, policy=os.environ["MOBENCH_TOY_POLICY"], objectives=[Length(), Vowels()],
        prompts=[r["prompt"] for r in rows],
        normalisation={"chars": Normalisation(0.0, 10.0), "vowels": Normalisation(0.0, 3.0)},
        reference_point=(-1.0, -1.0), grid_points=2,
        generation={"max_new_tokens": 6, "do_sample": False, "batch_size": 2},
    )


class MicroGreedy(Method):
    def prepare(self, task, context):
        from mobench.models import load_causal_lm

        super().prepare(task, context)
        self.model, self.tokenizer = load_causal_lm(task.policy, device=context.device, dtype=context.torch_dtype())
        self.model.is_gradient_checkpointing  # transformers 5 deprecates it with a FutureWarning

    def generate(self, prompts, preferences):
        from mobench.decoding import generate_for_task

        task, context = self.prepared()
        return [generate_for_task(self.model, self.tokenizer, prompts, task.generation, context, "micro") for _ in preferences]

    def provenance(self):
        found = {"dtype": str(self.model.dtype), "new_tokens": getattr(self, "new_tokens", None)}
        if os.environ.get("MOBENCH_NOISY_ADAPTER"):  # a saved LoRA policy for `mobench kl` to read
            found["trained_policies"] = {"zero": os.environ["MOBENCH_NOISY_ADAPTER"]}
        return found


@hookimpl
def register_tasks(register):
    register.task("noisy", load, objectives=("chars", "vowels"), description="test-only: a task that makes the libraries speak")


@hookimpl
def register_methods(register):
    register.method("micro-greedy", MicroGreedy, "test-only: greedy decoding of the task's policy")
'''
NOISE = ("Generating train split", "Loading weights", "FutureWarning")


@pytest.fixture(scope="module")
def noisy(tmp_path_factory, smol_tokenizer):
    """The plugin folder, its data, a saved micro policy and the environment the CLI needs for them."""
    from mobench.models import micro_causal_lm

    root = tmp_path_factory.mktemp("noisy")
    (root / "plugins").mkdir()
    (root / "plugins" / "noisy_plugin.py").write_text(NOISY)
    data = root / "data"
    data.mkdir()
    (data / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Tell me about {t}."}) + "\n"
                                                for t in ("rivers", "bread", "owls")))
    policy = root / "policy"
    micro_causal_lm(smol_tokenizer, seed=0).save_pretrained(policy)
    smol_tokenizer.save_pretrained(policy)
    env = {"MOBENCH_NOISY_DATA": str(data), "MOBENCH_TOY_POLICY": str(policy), "MOBENCH_DEBUG": "1"}
    return root, env


def _run(noisy, results, *extra):
    root, env = noisy
    proc = mobench("--plugins-dir", str(root / "plugins"), "run", "-m", "micro-greedy", "-t", "noisy", "--device", "cpu",
                   "--results", str(results), *extra, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next(p for p in (results / "noisy" / "micro-greedy").iterdir() if p.name in proc.stdout)
    return proc, run


def test_library_noise_goes_to_the_run_log_not_the_console(noisy, tmp_path):
    proc, run = _run(noisy, tmp_path / "results")
    console = proc.stdout + proc.stderr
    for noise in NOISE:
        assert noise not in console, f"{noise!r} on the console:\n{console[-2000:]}"
    log = (run / "run.log").read_text()
    for noise in NOISE:
        assert noise in log, f"{noise!r} missing from {run / 'run.log'}"
    assert "is_gradient_checkpointing" in log
    # mobench's own progress stays on the console (a piped stderr gets one line per step start and end)
    assert "loading task noisy" in proc.stderr and "grid points: 2/2" in proc.stderr


def test_verbose_also_shows_library_output_on_the_console(noisy, tmp_path):
    root, env = noisy
    proc = mobench("--plugins-dir", str(root / "plugins"), "--verbose", "run", "-m", "micro-greedy", "-t", "noisy",
                   "--device", "cpu", "--results", str(tmp_path / "results"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Loading weights" in proc.stderr and "FutureWarning" in proc.stderr


def test_gen_overrides_change_the_run_id_and_the_decoding_and_dtype_reaches_the_model(noisy, tmp_path):
    results = tmp_path / "results"
    _, plain = _run(noisy, results)
    _, again = _run(noisy, results)
    assert again == plain  # no --gen: the same id, the run is found complete
    _, short = _run(noisy, results, "--gen", "max_new_tokens=2")
    _, nucleus = _run(noisy, results, "--gen", "do_sample=true,top_p=0.5")
    _, half = _run(noisy, results, "--dtype", "bfloat16")
    assert len({plain.name, short.name, nucleus.name, half.name}) == 4
    manifest = {p: json.loads((p / "manifest.json").read_text()) for p in (plain, short, nucleus, half)}
    assert manifest[plain]["generation"]["max_new_tokens"] == 6 and "top_p" not in manifest[plain]["generation"]
    assert manifest[short]["generation"]["max_new_tokens"] == 2 and manifest[short]["config"]["gen"] == {"max_new_tokens": "2"}
    assert manifest[nucleus]["generation"]["top_p"] == 0.5 and manifest[nucleus]["generation"]["do_sample"] is True
    assert manifest[plain]["method_provenance"]["dtype"] == "torch.float32"
    assert manifest[half]["method_provenance"]["dtype"] == "torch.bfloat16" and manifest[half]["config"]["dtype"] == "bfloat16"
    # the decoding itself used the override: greedy, so each 2-token response starts the 6-token one
    def responses(run):
        return {(g["preference_key"], g["prompt_index"]): g["response"]
                for g in map(json.loads, (run / "generations.jsonl").read_text().splitlines())}

    full, cut = responses(plain), responses(short)
    assert cut.keys() == full.keys() and all(full[k].startswith(cut[k]) for k in cut)
    assert any(len(full[k]) > len(cut[k]) for k in cut)


def test_kl_is_quiet_and_takes_dtype(noisy, tmp_path, smol_tokenizer):
    """`mobench kl` loads models: the loading bars go to its log file, and --dtype reaches the loaded policy
    (an untrained LoRA adapter is the reference policy: its KL is exactly 0 at any precision)."""
    from peft import LoraConfig, get_peft_model

    from mobench.models import micro_causal_lm

    root, env = noisy
    adapter = tmp_path / "zero-adapter"
    get_peft_model(micro_causal_lm(smol_tokenizer, seed=0),
                   LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM")).save_pretrained(adapter)
    env = {**env, "MOBENCH_NOISY_ADAPTER": str(adapter), "MOBENCH_CACHE": str(tmp_path / "cache")}
    results = tmp_path / "results"
    assert mobench("--plugins-dir", str(root / "plugins"), "run", "-m", "micro-greedy", "-t", "noisy", "--device", "cpu",
                   "--results", str(results), env=env).returncode == 0
    proc = mobench("--plugins-dir", str(root / "plugins"), "kl", "-t", "noisy", "--results", str(results), "--prompts", "2",
                   "--device", "cpu", "--dtype", "bfloat16", "--format", "json", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    assert [(r["policy"], r["kl"], r["n"]) for r in rows] == [("zero", 0.0, 2)]
    assert not any(noise in proc.stderr for noise in NOISE), proc.stderr[-2000:]
    log = tmp_path / "cache" / "logs" / "kl-noisy-tiny.log"
    assert "Loading weights" in log.read_text() and f"library output: {log}" in proc.stderr
    keys = [json.loads(p.read_text())["key"] for p in (tmp_path / "cache" / "policy-kl").glob("*/mobench-artifact.json")]
    assert [k["precision"] for k in keys] == ["bfloat16"]


def test_bad_gen_and_dtype_are_one_line_user_errors(noisy, tmp_path):
    root, env = noisy
    base = ("--plugins-dir", str(root / "plugins"), "run", "-m", "micro-greedy", "-t", "noisy", "--results", str(tmp_path))
    for extra, message in ((("--gen", "top_k=3"), "--gen: unknown setting 'top_k'"),
                           (("--gen", "max_new_tokens=lots"), "--gen: max_new_tokens='lots' is not a int"),
                           (("--gen", "top_p"), "--gen 'top_p' must look like KEY=VALUE"),
                           (("--dtype", "float8"), "Invalid value for '--dtype'")):
        proc = mobench(*base, *extra, env=env)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "noisy").exists()


def test_a_gen_override_equal_to_the_task_setting_keeps_the_run_id(tmp_path):
    shutil.copy(TOY / "toy_plugin.py", tmp_path)
    base = ("--plugins-dir", str(tmp_path), "run", "-m", "letters", "-t", "toy", "--results", str(tmp_path / "r"))
    first = mobench(*base, check=True).stdout
    same = mobench(*base, "--gen", "max_new_tokens=4,top_p=1", check=True).stdout  # the toy task's own settings
    assert "3 grid points computed" in first and "0 grid points computed, 3 already there" in same
    [run] = list((tmp_path / "r" / "toy" / "letters").iterdir())
    assert run.name in first and run.name in same
    assert (run / "run.log").read_text().startswith("--- ")


def test_top_p_is_a_nucleus_in_the_guided_loop_and_in_generate(micro_lm, data_dir):
    """A tiny top_p keeps only the most likely token: sampling then equals greedy, whatever the seed; top_p=1 does not."""
    from test_merging import real_text, two_adapters

    from mobench.api import Generation, RunContext
    from mobench.decoding import DecodeSettings, ModelScorer, decode, generate_for_task, logit_ensemble

    model, tok = micro_lm
    model = two_adapters(model)
    prompts = [t[:120] + "\n\nAssistant:" for t in real_text(data_dir, 3)]
    scorers = [ModelScorer(model, a) for a in ("harmless", "helpful")]
    rows = [[0.5, 0.5]] * len(prompts)
    greedy = decode(scorers, logit_ensemble, tok, prompts, rows, DecodeSettings(max_new_tokens=8), [-1])
    nucleus = Generation(max_new_tokens=8, do_sample=True, temperature=1.0, batch_size=3, top_p=1e-6)
    for seed in (0, 1, 2):
        assert decode(scorers, logit_ensemble, tok, prompts, rows, DecodeSettings.from_generation(nucleus, seed), [-1]) == greedy
    assert decode(scorers, logit_ensemble, tok, prompts, rows, DecodeSettings(8, True, 1.0, 3, 1), [-1]) != greedy
    # transformers' generate through generate_for_task: the same rule
    model.set_adapter("harmless")
    plain = generate_for_task(model, tok, prompts, Generation(max_new_tokens=8, batch_size=3), RunContext(seed=0), "greedy")
    for seed in (0, 1):
        assert generate_for_task(model, tok, prompts, nucleus, RunContext(seed=seed), "nucleus") == plain
